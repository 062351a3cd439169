"""Evaluation harness: synthetic RULER-style tasks, LongBench/RULER loaders, side-by-side runners
(ours and, optionally, kvpress's), reports and plots.

>>> from judgeq_cache.eval import make_samples, evaluate
>>> samples = make_samples("needle_single", 20, 2048, tokenizer)
>>> records = list(evaluate(model, tokenizer, samples, settings=["query-aware"],
...                         methods=["full", "snapkv"], budgets=[0.25]))

The names below load on first use: ``judgeq eval``'s parser reads the light registries
(:mod:`.methods`, :mod:`.records`, :mod:`.tasks`) without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "METHODS": ".methods",
    "METRICS": ".metrics",
    "SETTINGS": ".layouts",
    "SYNTHETIC_TASKS": ".tasks",
    "PromptLayout": ".layouts",
    "Record": ".records",
    "Sample": ".tasks",
    "budget_label": ".records",
    "build_prompt": ".layouts",
    "evaluate": ".runner",
    "make_samples": ".tasks",
    "parse_budget": ".records",
    "read_records": ".records",
    "score": ".metrics",
}

__all__ = [
    "METHODS",
    "METRICS",
    "PromptLayout",
    "Record",
    "SETTINGS",
    "SYNTHETIC_TASKS",
    "Sample",
    "budget_label",
    "build_prompt",
    "evaluate",
    "make_samples",
    "parse_budget",
    "read_records",
    "score",
]

if TYPE_CHECKING:
    from .layouts import SETTINGS, PromptLayout, build_prompt
    from .methods import METHODS
    from .metrics import METRICS, score
    from .records import Record, budget_label, parse_budget, read_records
    from .runner import evaluate
    from .tasks import SYNTHETIC_TASKS, Sample, make_samples


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
