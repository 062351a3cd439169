"""Training configuration and errors."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)


TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, nothing to train on...)."""


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (stored in the adapter's config)."""

    num_soft_tokens: int = 32
    init: str = "vocab"
    loss: str = "mse"  # "mse" (paper) or "kl"
    ignore_first: int = 4  # first real prompt tokens left out of the loss (attention sinks)
    lr: float = 5e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    max_steps: int = 200
    batch_size: int = 4
    grad_accum: int = 1
    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 0.7
    max_prompt_tokens: int | None = None  # default: the model's context minus max_new_tokens + soft tokens
    seed: int = 0
    eval_budgets: tuple[float, ...] = (0.1, 0.25)
    eval_every: int = 0  # steps between held-out evaluations (0: only at the start and end)
    save_every: int = 50
    keep_prefill: bool = True
    max_grad_norm: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eval_budgets"] = list(self.eval_budgets)
        return d


# --------------------------------------------------------------------------- response cache
