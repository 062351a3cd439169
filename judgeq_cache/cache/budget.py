"""Budget: how many prompt entries each KV head of each layer keeps."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """An absolute count (``int``: entries kept per KV head per layer) or a kept fraction of the prompt
    (``float`` in ``(0, 1)``)."""

    value: int | float

    @classmethod
    def parse(cls, budget: int | float | Budget) -> Budget:
        if isinstance(budget, Budget):
            return budget
        # Integer-like and float-like numbers (numpy's int64, float32, ...) count as int and float.
        if isinstance(budget, numbers.Integral) and not isinstance(budget, bool):
            budget = int(budget)
        elif isinstance(budget, numbers.Real) and not isinstance(budget, (bool, int)):
            budget = float(budget)
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise TypeError(
                f"budget must be an int (entries kept per head) or a float in (0, 1) (kept fraction), "
                f"got {type(budget).__name__}"
            )
        if isinstance(budget, float):
            if math.isnan(budget) or not 0.0 < budget < 1.0:
                raise ValueError(
                    f"a float budget is a kept fraction and must lie in (0, 1), got {budget}; "
                    "pass an int for an absolute number of entries (e.g. budget=512)"
                )
        elif budget <= 0:
            raise ValueError(f"budget must be positive, got {budget}; e.g. budget=512 or budget=0.25")
        return cls(budget)

    def entries(self, prompt_length: int) -> int:
        """Entries kept per head for a prompt of ``prompt_length`` tokens (never more than the prompt)."""
        if isinstance(self.value, float):
            return max(1, min(prompt_length, round(self.value * prompt_length)))
        return min(self.value, prompt_length)

    def fraction(self, prompt_length: int) -> float:
        """The kept fraction of a prompt of ``prompt_length`` tokens: the fraction itself, or the
        entry count over the length (at most 1)."""
        if isinstance(self.value, float):
            return self.value
        return min(1.0, self.value / prompt_length)

    def __str__(self) -> str:
        """``"25%"``, ``"12.5%"`` for fractions, ``"256"`` for entry counts (the records' budget label)."""
        return f"{self.value * 100:g}%" if isinstance(self.value, float) else str(self.value)
