"""Pluggable scorers. ``make_scorer("snapkv", window_size=16)`` or pass a :class:`Scorer` instance."""

from __future__ import annotations

from typing import Any

from .attention import AttentionScorer, H2OScorer, OracleScorer, SnapKVScorer, TOVAScorer
from .base import LayerInputs, QueryNeeds, QuerySource, Scorer
from .judgeq import JudgeQScorer
from .positional import RandomScorer, StreamingLLMScorer
from .pyramidkv import PyramidKVScorer

SCORERS: dict[str, type[Scorer]] = {
    cls.name: cls
    for cls in (
        JudgeQScorer,
        SnapKVScorer,
        TOVAScorer,
        StreamingLLMScorer,
        H2OScorer,
        PyramidKVScorer,
        RandomScorer,
        OracleScorer,
    )
}


def make_scorer(scorer: str | Scorer, **kwargs: Any) -> Scorer:
    """A scorer instance from a name in :data:`SCORERS` (``kwargs`` are its options) or an instance."""
    if isinstance(scorer, Scorer):
        if kwargs:
            raise TypeError("options go to the scorer's constructor when you pass an instance")
        return scorer
    if not isinstance(scorer, str) or scorer not in SCORERS:
        raise ValueError(
            f"unknown scorer {scorer!r}; choose one of {sorted(SCORERS)} or pass a Scorer instance"
        )
    return SCORERS[scorer](**kwargs)


__all__ = [
    "SCORERS",
    "AttentionScorer",
    "H2OScorer",
    "JudgeQScorer",
    "LayerInputs",
    "OracleScorer",
    "PyramidKVScorer",
    "QueryNeeds",
    "QuerySource",
    "RandomScorer",
    "Scorer",
    "SnapKVScorer",
    "StreamingLLMScorer",
    "TOVAScorer",
    "make_scorer",
]
