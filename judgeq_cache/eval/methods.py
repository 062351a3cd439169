"""The method registry the command line, the report and the plot read their lists from.

* our methods: :data:`METHODS` (a base method, e.g. ``snapkv``, and its
  variants, e.g. ``snapkv-shared``, whose ``"scorer"`` option names the base);
* kvpress's presses: :data:`PRESS_METHODS` (their factories are ``kvpress_runner.PRESSES``, which
  needs kvpress installed; the names are kept here so that listing them never imports kvpress).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .records import label_for

__all__ = [
    "METHODS",
    "PRESS_METHODS",
    "default_methods",
    "default_presses",
    "method_order",
    "scorer_of",
    "variants",
]

#: Our methods and the scorer options the harness uses for them ("full" = no eviction; ``scorer``
#: names the scorer of a variant, otherwise the method name is the scorer name).
METHODS: dict[str, dict[str, Any]] = {
    "full": {},
    "judgeq": {},
    "snapkv": {"window_size": 32},
    "pyramidkv": {"window_size": 32},
    "h2o": {},
    "streamingllm": {},
    "random": {},
    # The same positions kept in every KV head of a layer (see Scorer.shared_heads).
    # "judgeq" is JudgeQCache's default selection (shared heads, the soft tokens alone, chosen on a
    # dev split); "judgeq-shared" names the same selection explicitly; per head is the paper's:
    "judgeq-shared": {"scorer": "judgeq", "shared_heads": True, "window_weight": 0.0},
    "judgeq-perhead": {"scorer": "judgeq", "shared_heads": False, "window_weight": 0.0},
    # The hybrid: a quarter of the score from the last prompt query's attention (TOVA's signal).
    "judgeq-hybrid": {"scorer": "judgeq", "shared_heads": True, "window_weight": 0.25, "window_size": 1},
    "snapkv-shared": {"scorer": "snapkv", "window_size": 32, "shared_heads": True},
    # Span-aware selection (scorers/spans.py): half the budget in whole spans of 2r+1 tokens.
    "judgeq-span3": {"scorer": "judgeq", "span_tokens": 3},
    "judgeq-span5": {"scorer": "judgeq", "span_tokens": 5},
    # TOVA at prefill (kvpress's TOVAPress): last prompt query, heads averaged.
    "tova": {},
    # The ceiling: what the full cache's own continuation (appended question + its greedy answer)
    # attends to most, i.e. Judge Q's training target. Analysis only (it needs the answer first).
    "oracle": {},
    "oracle-shared": {"scorer": "oracle", "shared_heads": True},
}


def scorer_of(method: str) -> str:
    """The scorer a harness method runs (``"judgeq-shared"`` runs ``"judgeq"``)."""
    return METHODS.get(method, {}).get("scorer", method)


#: kvpress presses compared with ours, as methods named ``kvpress-<press>``.
PRESS_METHODS = (
    "kvpress-snapkv",
    "kvpress-streamingllm",
    "kvpress-expected_attention",
    "kvpress-tova",
    "kvpress-knorm",
    "kvpress-random",
    "kvpress-kvzip",
    "kvpress-adakv-snapkv",
    "kvpress-adakv-expected_attention",
)
#: Run only when asked: the oracle reads the answer it is scored on (an analysis tool, not a method).
_OPT_IN_METHODS = ("oracle",)
#: Run only when asked: KVzip re-reads the whole context (5-13x the time per answer here).
_OPT_IN_PRESSES = ("kvpress-kvzip",)
#: Rows of an untrained adapter are reported under this label (see :func:`.records.label_for`).
_UNTRAINED = "untrained"


def variants(method: str) -> list[str]:
    """The registered variants of base method ``method`` (``judgeq`` -> ``["judgeq-shared"]``)."""
    return [m for m in METHODS if m != method and scorer_of(m) == method]


def default_methods() -> list[str]:
    """What ``judgeq eval run`` runs by default: every base method (no variants), in registry order."""
    return [m for m in METHODS if scorer_of(m) == m and m not in _OPT_IN_METHODS]


def default_presses() -> list[str]:
    """What ``judgeq eval kvpress`` runs by default."""
    return [p for p in PRESS_METHODS if p not in _OPT_IN_PRESSES]


def _report_order() -> list[str]:
    order = []
    for base in METHODS:
        if scorer_of(base) != base:
            continue
        group = [base, *variants(base)]
        untrained = [label_for(m, _UNTRAINED) for m in group]
        order += group + [u for u, m in zip(untrained, group) if u != m]
    return order


def method_order(methods: Iterable[str]) -> list[str]:
    """``methods`` in report order: ours in registry order, each base method followed by its variants
    and then its untrained-adapter labels; then everything else (kvpress's presses, unknown names)
    sorted by name."""
    methods = set(methods)
    ours = _report_order()
    return [m for m in ours if m in methods] + sorted(m for m in methods if m not in ours)
