"""Scorers that rank entries by the attention their queries pay to them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..devices import input_device
from .base import LayerInputs, QueryNeeds, QuerySource, Scorer


@dataclass(kw_only=True)
class AttentionScorer(Scorer):
    """Score = mean attention of the scorer's queries (whatever their source) over the prompt."""

    query_source: ClassVar[QuerySource] = "window"

    def queries(self) -> QueryNeeds:
        return QueryNeeds(prompt=True, last=self.window_size)

    def score(self, inputs: LayerInputs) -> torch.Tensor:
        if inputs.attention is None:
            raise RuntimeError(
                f"{self.name}: no attention was captured for layer {inputs.layer_idx}; the model's attention "
                "does not go through transformers' AttentionInterface"
            )
        return inputs.attention


@dataclass(kw_only=True)
class SnapKVScorer(AttentionScorer):
    """SnapKV: attention of the last ``window_size`` prompt queries, max-pooled, window always kept."""

    window_size: int = 32
    pooling_kernel: int = 7
    recent_tokens: int = 32
    name: ClassVar[str] = "snapkv"
    query_source: ClassVar[QuerySource] = "window"


@dataclass(kw_only=True)
class TOVAScorer(AttentionScorer):
    """TOVA at prefill, as kvpress's ``TOVAPress``: attention of the last prompt query, averaged over
    all heads (the same positions kept in every KV head), the last token always kept."""

    window_size: int = 1
    shared_heads: bool = True
    recent_tokens: int = 1
    name: ClassVar[str] = "tova"
    query_source: ClassVar[QuerySource] = "window"


@dataclass(kw_only=True)
class H2OScorer(AttentionScorer):
    """H2O (prefill form): attention accumulated over every prompt query, plus a recent window.

    ``recent_ratio`` of each layer's budget goes to the most recent tokens, the rest to heavy hitters.
    """

    recent_ratio: float = 0.5
    name: ClassVar[str] = "h2o"
    query_source: ClassVar[QuerySource] = "all"

    def queries(self) -> QueryNeeds:
        return QueryNeeds(prompt=True, every_query=True)

    def protected_counts(self, budget: int) -> tuple[int, int]:
        # ``recent_tokens`` (0 by default; ``decode_recent_tokens`` at decode steps) can only add to the ratio.
        return self.sink_tokens, max(self.recent_count(budget), int(budget * self.recent_ratio))


@dataclass(kw_only=True)
class OracleScorer(AttentionScorer):
    """Attention of the real future tokens (e.g. the response) over the prompt. Analysis only:
    it needs the answer before generating it. ``future_ids`` is ``[B, T]`` or ``[T]``."""

    future_ids: torch.Tensor | None = None
    name: ClassVar[str] = "oracle"
    query_source: ClassVar[QuerySource] = "appended"

    def queries(self) -> QueryNeeds:
        return QueryNeeds(appended=True)

    def appended_length(self) -> int:
        return 0 if self.future_ids is None else self.future_ids.shape[-1]

    def appended_inputs(self, batch_size: int, model: nn.Module) -> dict[str, torch.Tensor]:
        if self.future_ids is None or self.future_ids.numel() == 0:
            raise ValueError(
                "OracleScorer needs future_ids: the token ids whose attention defines importance"
            )
        ids = self.future_ids if self.future_ids.ndim == 2 else self.future_ids[None]
        return {"input_ids": ids.expand(batch_size, -1).to(input_device(model))}
