"""Scorers that need no queries: StreamingLLM (sinks + recent) and random."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import LayerInputs, QuerySource, Scorer


@dataclass(kw_only=True)
class StreamingLLMScorer(Scorer):
    """StreamingLLM: keep ``sink_tokens`` attention sinks and the most recent tokens."""

    sink_tokens: int = 4
    name: ClassVar[str] = "streamingllm"
    query_source: ClassVar[QuerySource] = "none"

    def score(self, inputs: LayerInputs) -> torch.Tensor:
        bsz, heads, n, _ = inputs.keys.shape
        recency = torch.arange(n, device=inputs.keys.device, dtype=torch.float32)
        return recency.expand(bsz, heads, n)


@dataclass(kw_only=True)
class RandomScorer(Scorer):
    """Uniformly random entries (a floor every method must beat)."""

    seed: int = 0
    name: ClassVar[str] = "random"
    query_source: ClassVar[QuerySource] = "none"

    def score(self, inputs: LayerInputs) -> torch.Tensor:
        bsz, heads, n, _ = inputs.keys.shape
        generator = torch.Generator().manual_seed(self.seed + inputs.layer_idx)
        return torch.rand((bsz, heads, n), generator=generator).to(inputs.keys.device)
