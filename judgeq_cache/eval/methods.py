"""The method registry the command line, the report and the plot read their lists from.

* our methods: :data:`judgeq_cache.eval.runner.METHODS` (a base method, e.g. ``snapkv``, and its
  variants, e.g. ``snapkv-shared``, whose ``"scorer"`` option names the base);
* kvpress's presses: :data:`PRESS_METHODS` (their factories are ``kvpress_runner.PRESSES``, which
  needs kvpress installed; the names are kept here so that listing them never imports kvpress).
"""

from __future__ import annotations

from collections.abc import Iterable

from .records import label_for
from .runner import METHODS, scorer_of

__all__ = ["PRESS_METHODS", "default_methods", "default_presses", "method_order", "variants"]

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
