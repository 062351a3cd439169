"""What a finished training run writes: the adapter with its recipe and metrics, the history, the
loss curve and the report."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..adapter import JudgeQAdapter
from .config import TrainConfig

logger = logging.getLogger(__name__)


def plot_loss(history: list[dict[str, float]], path: str | Path, title: str = "") -> Path | None:
    """Loss curve PNG (training loss per step, held-out loss where measured)."""
    try:
        # A bare Figure draws without pyplot, so the caller's backend (e.g. a notebook's) is left alone.
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: no loss plot")
        return None
    steps = [h["step"] for h in history if "loss" in h]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(steps, [h["loss"] for h in history if "loss" in h], lw=0.8, alpha=0.5, label="train (per step)")
    if len(steps) >= 10:
        w = max(2, len(steps) // 20)
        losses = [h["loss"] for h in history if "loss" in h]
        smooth = [
            sum(losses[max(0, i - w + 1) : i + 1]) / len(losses[max(0, i - w + 1) : i + 1])
            for i in range(len(losses))
        ]
        ax.plot(steps, smooth, lw=1.5, label=f"train (mean of {w})")
    held = [(h["step"], h["heldout_loss"]) for h in history if "heldout_loss" in h]
    if held:
        ax.plot(*zip(*held), "o-", label="held-out")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("alignment loss")
    ax.set_title(title or "Judge Q soft-token training")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def record_run(adapter: JudgeQAdapter, config: TrainConfig, report: dict[str, Any], world: int) -> None:
    """Store the run's settings and held-out metrics in the adapter's config."""
    adapter.config.training = {
        **config.to_dict(),
        "targets": report.get("targets", config.targets),  # the route that ran ("auto" resolved)
        "train_prompts": report["train_prompts"],
        "world_size": world,
    }
    adapter.config.metrics = {
        **{k: round(v, 4) for k, v in report.get("final", {}).items() if isinstance(v, float)},
        **{f"initial/{k}": round(v, 4) for k, v in report.get("initial", {}).items() if isinstance(v, float)},
        "train_loop_seconds": report["train_loop_seconds"],
    }


def write_outputs(
    output_dir: Path, adapter: JudgeQAdapter, history: list[dict], report: dict[str, Any]
) -> None:
    """The adapter, ``history.jsonl``, ``loss_curve.png`` and ``report.json`` in ``output_dir``."""
    adapter.save_pretrained(output_dir)
    with (output_dir / "history.jsonl").open("w") as f:
        for h in history:
            f.write(json.dumps(h) + "\n")
    plot_loss(history, output_dir / "loss_curve.png", title=f"Judge Q: {adapter.config.base_model}")
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
