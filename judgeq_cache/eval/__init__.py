"""Evaluation harness: synthetic RULER-style tasks, LongBench/RULER loaders, side-by-side runners
(ours and, optionally, kvpress's), reports and plots.

>>> from judgeq_cache.eval import make_samples, evaluate
>>> samples = make_samples("needle_single", 20, 2048, tokenizer)
>>> records = list(evaluate(model, tokenizer, samples, settings=["query-aware"],
...                         methods=["full", "snapkv"], budgets=[0.25]))
"""

from .layouts import SETTINGS, PromptLayout, build_prompt
from .metrics import METRICS, score
from .records import Record, budget_label, parse_budget, read_records
from .runner import METHODS, evaluate
from .tasks import SYNTHETIC_TASKS, Sample, make_samples

__all__ = [
    "METHODS",
    "METRICS",
    "SETTINGS",
    "SYNTHETIC_TASKS",
    "PromptLayout",
    "Record",
    "Sample",
    "budget_label",
    "build_prompt",
    "evaluate",
    "make_samples",
    "parse_budget",
    "read_records",
    "score",
]
