"""PyramidKV: SnapKV scores with budgets that shrink from lower to upper layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..cache.budget import Budget
from .attention import SnapKVScorer


@dataclass(kw_only=True)
class PyramidKVScorer(SnapKVScorer):
    """Layer budgets fall linearly from ``2 * budget - budget / beta`` to ``budget / beta`` (PyramidKV's
    schedule), so the mean stays ``budget``; budgets are clipped to the prompt length."""

    beta: float = 20.0
    name: ClassVar[str] = "pyramidkv"

    def layer_budgets(self, budget: Budget, prompt_length: int, num_layers: int) -> list[int]:
        mean = budget.entries(prompt_length)
        if num_layers == 1 or mean >= prompt_length:
            return [mean] * num_layers
        low = mean / self.beta
        high = 2 * mean - low
        step = (high - low) / (num_layers - 1)
        return [max(1, min(prompt_length, round(high - i * step))) for i in range(num_layers)]
