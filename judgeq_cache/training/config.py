"""Training configuration and errors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cli.args import non_negative_float, non_negative_int, positive_float, positive_int, unit_interval

if TYPE_CHECKING:
    from ..prompts import Prompt
    from .data import Example

logger = logging.getLogger(__name__)


TRAINER_STATE = "trainer_state.json"
OPTIMIZER_STATE = "optimizer.pt"


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, nothing to train on...)."""


#: Training losses: the paper's MSE, KL, their head-averaged ("-shared") forms, and "topk" (KL to the
#: target cut to its top 10 %); see :func:`judgeq_cache.training.objective.alignment_loss`.
LOSSES = ("mse", "kl", "mse-shared", "kl-shared", "topk")

#: Where the attention targets come from; see :mod:`judgeq_cache.training.onthefly`.
TARGETS = ("auto", "prepared", "on-the-fly")


def _opt(default: Any, help: str, **cli: Any) -> Any:
    """A field shown on ``judgeq train``'s command line (``cli``: argparse ``type`` / ``choices``)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (stored in the adapter's config).

    Fields with a help text are also ``judgeq train`` flags (``--max-steps`` for ``max_steps``, ...).
    """

    num_soft_tokens: int = _opt(32, "soft tokens (embedding rows) to train", type=positive_int)
    init: str = _opt("vocab", "row initialisation", choices=("vocab", "mean"))
    loss: str = _opt("mse", "alignment loss (mse is the paper's)", choices=LOSSES)
    ignore_first: int = _opt(4, "first prompt tokens left out of the loss (sinks)", type=non_negative_int)
    lr: float = _opt(5e-3, "AdamW learning rate", type=positive_float)
    weight_decay: float = _opt(0.0, "AdamW weight decay", type=non_negative_float)
    warmup_ratio: float = _opt(0.1, "share of the steps spent warming up, in [0, 1]", type=unit_interval)
    max_steps: int = _opt(200, "optimiser steps", type=positive_int)
    batch_size: int = _opt(4, "prompts per micro-batch", type=positive_int)
    grad_accum: int = _opt(1, "micro-batches per optimiser step", type=positive_int)
    max_new_tokens: int = _opt(
        64, "length of the model's own response (the target's future)", type=positive_int
    )
    do_sample: bool = _opt(False, "sample the responses (default: greedy)")
    temperature: float = _opt(0.7, "sampling temperature", type=positive_float)
    # default: the model's context minus max_new_tokens + soft tokens
    max_prompt_tokens: int | None = _opt(None, "middle-truncate longer prompts", type=positive_int)
    seed: int = _opt(0, "seed of the rows, shuffling and bundled-text prompts", type=int)
    eval_budgets: tuple[float, ...] = (0.1, 0.25)
    eval_every: int = _opt(0, "steps between held-out evaluations (0: start and end)", type=non_negative_int)
    save_every: int = _opt(50, "steps between checkpoints (0: end only)", type=non_negative_int)
    keep_prefill: bool = _opt(True, "keep each prompt's prefill in memory (--no-keep-prefill saves memory)")
    max_grad_norm: float = _opt(1.0, "gradient clipping norm", type=positive_float)
    targets: str = _opt(
        "auto",
        "attention targets: 'prepared' (each prompt prefilled once, its targets (and KV with "
        "--keep-prefill) kept for the run), 'on-the-fly' (only the responses are kept; every step "
        "prefills its prompts again) or 'auto' (prepared while that store takes <= 50%% of the memory "
        "left after the weights)",
        choices=TARGETS,
    )
    gpu_memory_gb: float | None = _opt(
        None,
        "memory of one device in GB, for --targets auto and --dry-run (default: the device's own; "
        "--dry-run: 80)",
        type=positive_float,
    )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["eval_budgets"] = list(self.eval_budgets)
        return d


@dataclass(frozen=True)
class TrainData:
    """What :func:`~judgeq_cache.training.train` trains and evaluates on.

    Prompts are answered and prefilled by ``train``; examples prepared beforehand
    (:func:`~judgeq_cache.training.prepare_examples`) are used as they are, in place of the prompts.
    ``responses_path`` caches the responses (default ``output_dir/responses.jsonl``).
    """

    train_prompts: Sequence[Prompt] | None = None
    heldout_prompts: Sequence[Prompt] | None = None
    train_examples: list[Example] | None = None
    heldout_examples: list[Example] | None = None
    responses_path: str | Path | None = None

    @classmethod
    def resolve(cls, data: TrainData | None, **keywords: Any) -> TrainData:
        """``data``, or :func:`~judgeq_cache.training.train`'s data ``keywords`` as one
        :class:`TrainData`; a ``TypeError`` when ``data`` comes with any of them (not ``None``)."""
        if data is None:
            return cls(**keywords)
        passed = [f"{name}=" for name, value in keywords.items() if value is not None]
        if passed:
            raise TypeError(
                f"train() got data= and {', '.join(passed)}: pass the data either as data=TrainData(...) "
                "or as keywords, not both"
            )
        return data


# --------------------------------------------------------------------------- response cache
