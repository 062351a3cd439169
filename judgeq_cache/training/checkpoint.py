"""Training checkpoints: the adapter, the optimizer and scheduler state, and the trainer state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..adapter import JudgeQAdapter
from .config import OPTIMIZER_STATE, TRAINER_STATE


def has_checkpoint(directory: Path) -> bool:
    """Whether ``directory`` holds a checkpoint to resume from (its trainer state)."""
    return (directory / TRAINER_STATE).is_file()


def save_checkpoint(
    directory: Path, adapter: JudgeQAdapter, optimizer: Any, scheduler: Any, state: dict[str, Any]
) -> None:
    """Write the adapter, ``optimizer.pt`` and ``trainer_state.json`` (atomically) to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    adapter.save_pretrained(directory)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        directory / OPTIMIZER_STATE,
    )
    tmp = directory / f".{TRAINER_STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(directory / TRAINER_STATE)


def load_checkpoint(directory: Path, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore ``optimizer`` and ``scheduler`` from ``directory``; returns its trainer state."""
    saved = torch.load(directory / OPTIMIZER_STATE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return json.loads((directory / TRAINER_STATE).read_text())
