"""The training loop: AdamW on the soft rows, warm-up + cosine, accumulation, checkpoints, resume."""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..adapter import JudgeQAdapter
from ..prompts import Prompt
from .config import OPTIMIZER_STATE, TRAINER_STATE, TrainConfig, TrainingError
from .data import Example, ResponseStore, encode_prompts, prepare_examples
from .objective import alignment_loss, evaluate_hit_rates
from .onthefly import attention_pair, prepare_lazy_examples, resolve_targets

logger = logging.getLogger(__name__)


def _save_checkpoint(directory: Path, adapter, optimizer, scheduler, state: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    adapter.save_pretrained(directory)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        directory / OPTIMIZER_STATE,
    )
    tmp = directory / f".{TRAINER_STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(directory / TRAINER_STATE)


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


def train(
    model: nn.Module,
    tokenizer: Any,
    train_prompts: Sequence[Prompt] | None,
    output_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    heldout_prompts: Sequence[Prompt] | None = None,
    adapter: JudgeQAdapter | None = None,
    responses_path: str | Path | None = None,
    resume: bool = False,
    train_examples: list[Example] | None = None,
    heldout_examples: list[Example] | None = None,
    accelerator: Any = None,
    progress: bool = True,
) -> tuple[JudgeQAdapter, dict[str, Any]]:
    """Train soft tokens for ``model`` (frozen) and save the adapter to ``output_dir``.

    Writes ``output_dir/{adapter_config.json, adapter_model.safetensors, loss_curve.png,
    history.jsonl}`` and checkpoints under ``output_dir/checkpoint/`` (adapter + optimizer +
    trainer state; ``resume=True`` continues from it). Responses are cached in ``responses_path``
    (default ``output_dir/responses.jsonl``). Prepared examples can be passed in to share prefills
    between runs (e.g. comparing initialisations). ``config.targets`` picks prepared targets or
    targets computed on the fly at every step (:mod:`~.onthefly`; ``"auto"`` decides by memory);
    ``report["targets"]`` says which ran. Returns the adapter and the final report.

    Side effects: seeds torch's and Python's global RNGs with ``config.seed`` (reproducible
    initialisation and shuffling), and builds an ``accelerate.Accelerator`` when none is passed
    (logged; pass ``accelerator=`` to control devices and processes yourself).
    """
    config = config or TrainConfig()
    output_dir = Path(output_dir)
    ckpt_dir = output_dir / "checkpoint"
    dist = _Distributed.of(accelerator, model)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model.eval()  # dropout off; and transformers' gradient checkpointing is never switched on here
    for p in model.parameters():
        p.requires_grad_(False)

    resuming = resume and (ckpt_dir / TRAINER_STATE).is_file()
    if resume and not resuming:
        logger.warning("--resume: no checkpoint in %s, starting from scratch", ckpt_dir)
    if resuming:  # continue from the checkpoint's rows, also when a fresh adapter is passed
        adapter = JudgeQAdapter.from_pretrained(ckpt_dir)
    elif adapter is None:
        adapter = JudgeQAdapter.init_for(model, config.num_soft_tokens, seed=config.seed, init=config.init)
    adapter.check_compatible(model)
    adapter.to(model.get_input_embeddings().weight.device)
    adapter.rows.requires_grad_(True)

    store = ResponseStore(responses_path if responses_path is not None else output_dir / "responses.jsonl")
    targets = "prepared"
    if train_examples is not None and config.targets == "on-the-fly":
        logger.warning("train(): prepared train_examples were passed in; they are used as they are")
    if train_examples is None:
        train_examples, targets = _prepare_shard(
            model, tokenizer, train_prompts, adapter, config, store, dist, progress
        )
    if heldout_examples is None and heldout_prompts and dist.is_main:
        heldout_examples = prepare_examples(
            model,
            tokenizer,
            heldout_prompts,
            adapter,
            # on the fly, the held-out prompts keep their targets but not their KV
            config if targets == "prepared" else replace(config, keep_prefill=False),
            store,
            window_size=32,
            progress=progress,
            desc="held-out prefill",
        )
    heldout = heldout_examples if dist.is_main else None

    optimizer = torch.optim.AdamW([adapter.rows], lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * config.max_steps), config.max_steps
    )
    state: dict[str, Any] = {"step": 0, "history": [], "wall_seconds": 0.0}
    if resuming:
        saved = torch.load(ckpt_dir / OPTIMIZER_STATE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = json.loads((ckpt_dir / TRAINER_STATE).read_text())
        logger.info("resuming from %s at step %d", ckpt_dir, state["step"])

    report: dict[str, Any] = {}
    if heldout and state["step"] == 0:
        report["initial"] = evaluate_hit_rates(model, adapter, heldout, config.eval_budgets, config)
        state["history"].append({"step": 0, "heldout_loss": report["initial"]["heldout_loss"]})
        logger.info("before training: %s", _fmt_metrics(report["initial"]))

    batches = _shuffled_forever(train_examples, random.Random(config.seed + state["step"]))
    bar = tqdm(
        total=config.max_steps, initial=state["step"], desc="train", disable=not (progress and dist.is_main)
    )
    t0, wall_before = time.perf_counter(), state.get("wall_seconds", 0.0)
    while state["step"] < config.max_steps:
        optimizer.zero_grad(set_to_none=True)
        examples = [next(batches) for _ in range(config.grad_accum)]
        try:
            total = _accumulate_gradient(model, adapter, examples, config, dist)
        except TrainingError as err:
            bar.close()
            raise TrainingError(
                f"{err} at step {state['step'] + 1}; the last good checkpoint is in {ckpt_dir} "
                "(lower --lr or check the data); nothing after it was saved"
            ) from None
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([adapter.rows], config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        state["step"] += 1
        entry = {"step": state["step"], "loss": total, "lr": scheduler.get_last_lr()[0]}
        bar.set_postfix(loss=f"{total:.4f}")
        bar.update(1)
        if heldout and config.eval_every and state["step"] % config.eval_every == 0:
            entry.update(evaluate_hit_rates(model, adapter, heldout, config.eval_budgets, config))
            logger.info("step %d: %s", state["step"], _fmt_metrics(entry))
        state["history"].append(entry)
        state["wall_seconds"] = wall_before + time.perf_counter() - t0
        if dist.is_main and config.save_every and state["step"] % config.save_every == 0:
            _save_checkpoint(ckpt_dir, adapter, optimizer, scheduler, state)
    bar.close()

    if heldout:
        report["final"] = evaluate_hit_rates(model, adapter, heldout, config.eval_budgets, config)
        state["history"].append({"step": state["step"], "heldout_loss": report["final"]["heldout_loss"]})
        logger.info("after training: %s", _fmt_metrics(report["final"]))
    report["steps"] = state["step"]
    report["targets"] = targets
    report["train_loop_seconds"] = round(state["wall_seconds"], 1)
    report["train_prompts"] = sum(len(e.ids) for e in train_examples) * dist.world
    if dist.is_main:
        _record_run(adapter, config, report, dist.world)
        _save_checkpoint(ckpt_dir, adapter, optimizer, scheduler, state)
        _write_outputs(output_dir, adapter, state["history"], report)
    if dist.world > 1:  # the other ranks wait while the main one evaluates and saves
        dist.accelerator.wait_for_everyone()
    adapter.rows.requires_grad_(False)
    return adapter, report


@dataclass(frozen=True)
class _Distributed:
    """Which process this is, from an ``accelerate.Accelerator`` (or one process without one)."""

    accelerator: Any
    is_main: bool = True
    world: int = 1
    rank: int = 0

    @classmethod
    def of(cls, accelerator: Any, model: nn.Module) -> _Distributed:
        """Wrap ``accelerator``; build one when none is passed (logged), and move ``model`` to its device."""
        if accelerator is None:
            try:
                from accelerate import Accelerator
            except ImportError:
                return cls(None)
            accelerator = Accelerator(cpu=not torch.cuda.is_available())
            logger.info("train(): built %s (pass accelerator= to choose)", accelerator.state.distributed_type)
        if next(model.parameters()).device != accelerator.device:
            model.to(accelerator.device)
        return cls(
            accelerator, accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
        )


def _prepare_shard(
    model, tokenizer, prompts, adapter, config, store, dist: _Distributed, progress
) -> tuple[list[Any], str]:
    """This process's share of the training prompts, answered, and the targets route it takes
    (:func:`~.onthefly.resolve_targets`): prefilled with their targets, or on the fly (responses only)."""
    if not prompts:
        raise TrainingError("no training prompts: the dataset is empty")
    if dist.world > 1 and store.path:
        store = ResponseStore(Path(store.path).with_suffix(f".rank{dist.rank}.jsonl"))
    shard = list(prompts)[dist.rank :: dist.world]
    encoded = encode_prompts(model, tokenizer, shard, config)
    targets = resolve_targets(model, config, [len(ids) for _, ids in encoded])
    show = progress and dist.is_main
    if targets == "on-the-fly":
        examples = prepare_lazy_examples(model, tokenizer, encoded, adapter, config, store, progress=show)
        return examples, targets
    examples = prepare_examples(
        model, tokenizer, shard, adapter, config, store, progress=show, desc="train prefill", encoded=encoded
    )
    return examples, targets


def _shuffled_forever(examples: Sequence[Example], rng: random.Random) -> Iterator[Example]:
    """``examples`` in a fresh random order each epoch, without end."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        while order:
            yield examples[order.pop()]


def _accumulate_gradient(
    model, adapter, examples: list[Any], config: TrainConfig, dist: _Distributed
) -> float:
    """Backward the mean alignment loss of ``examples`` into ``adapter.rows.grad`` (averaged over
    processes); returns that loss. Raises :class:`TrainingError` on a non-finite loss or gradient."""
    total = 0.0
    for example in examples:
        pred, target = attention_pair(model, adapter, example, grad=True)
        loss = alignment_loss(pred, target, example.attention_mask, config.loss, config.ignore_first)
        (loss / len(examples)).backward()
        total += float(loss.detach()) / len(examples)
    grad = adapter.rows.grad
    if dist.world > 1:
        grad.copy_(dist.accelerator.reduce(grad, reduction="mean"))
        total = float(dist.accelerator.reduce(torch.tensor(total, device=grad.device), reduction="mean"))
    if not math.isfinite(total) or not torch.isfinite(grad).all():
        raise TrainingError(f"non-finite loss ({total})")
    return total


def _record_run(adapter: JudgeQAdapter, config: TrainConfig, report: dict[str, Any], world: int) -> None:
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


def _write_outputs(
    output_dir: Path, adapter: JudgeQAdapter, history: list[dict], report: dict[str, Any]
) -> None:
    """The adapter, ``history.jsonl``, ``loss_curve.png`` and ``report.json`` in ``output_dir``."""
    adapter.save_pretrained(output_dir)
    with (output_dir / "history.jsonl").open("w") as f:
        for h in history:
            f.write(json.dumps(h) + "\n")
    plot_loss(history, output_dir / "loss_curve.png", title=f"Judge Q: {adapter.config.base_model}")
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def _fmt_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
