"""Why single-answer needle questions fail under eviction: the needle was found but copied wrong
(*garbled*: the answer starts the right number, then drops or repeats digits — typically some KV
heads kept a digit token that others evicted), or it was not found at all (*lost*)."""

from __future__ import annotations

import os.path
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

from .records import Record, method_label

__all__ = ["FAILURE_MODES", "NEEDLE_TASKS", "classify_answer", "failure_modes"]

#: Tasks with one numeric answer, where the failure mode can be read off the answer.
NEEDLE_TASKS = ("needle_single", "needle_multikey")
FAILURE_MODES = ("right", "garbled", "lost")
#: Leading digits of the needle an answer must reproduce to count as found-but-garbled.
MIN_PREFIX = 3


def classify_answer(answer: str, reference: str, score: float) -> str:
    """``"right"`` (scored 1), ``"garbled"`` (a number in the answer starts with at least
    :data:`MIN_PREFIX` leading digits of ``reference``) or ``"lost"``."""
    if score >= 1.0:
        return "right"
    numbers = re.findall(r"\d+", answer)
    best = max((len(os.path.commonprefix([n, reference])) for n in numbers), default=0)
    return "garbled" if best >= min(MIN_PREFIX, len(reference)) else "lost"


def failure_modes(records: Iterable[Record]) -> dict[tuple[str, str], Counter]:
    """``{(method, budget): Counter(right=, garbled=, lost=)}`` over :data:`NEEDLE_TASKS` records
    of every setting (the full cache under budget ``"full"``)."""
    out: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for r in records:
        if r.task in NEEDLE_TASKS and r.references:
            out[(method_label(r), r.budget)][classify_answer(r.answer, r.references[0], r.score)] += 1
    return dict(out)
