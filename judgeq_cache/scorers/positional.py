"""Scorers that need no queries: StreamingLLM (sinks + recent) and random."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import LayerInputs, Scorer


@dataclass(kw_only=True)
class StreamingLLMScorer(Scorer):
    """StreamingLLM: keep ``sink_tokens`` attention sinks and the most recent tokens."""

    sink_tokens: int = 4
    name: ClassVar[str] = "streamingllm"

    def score(self, inputs: LayerInputs) -> torch.Tensor:
        keys = inputs.keys
        return torch.arange(keys.shape[-2], device=keys.device, dtype=torch.float32).expand(keys.shape[:-1])


@dataclass(kw_only=True)
class RandomScorer(Scorer):
    """Uniformly random entries (a floor every method must beat)."""

    seed: int = 0
    name: ClassVar[str] = "random"

    def score(self, inputs: LayerInputs) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + inputs.layer_idx)
        return torch.rand(inputs.keys.shape[:-1], generator=generator).to(inputs.keys.device)
