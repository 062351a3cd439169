"""The training loop: AdamW on the soft rows, warm-up + cosine, accumulation, checkpoints, resume."""

from __future__ import annotations

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
from .checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, TrainData, TrainingError
from .data import Example, ResponseStore, encode_prompts, prepare_examples
from .objective import alignment_loss, evaluate_hit_rates
from .onthefly import attention_pair, prepare_lazy_examples, resolve_targets
from .outputs import plot_loss as plot_loss  # re-exported: `from .loop import plot_loss` predates .outputs
from .outputs import record_run, write_outputs

logger = logging.getLogger(__name__)


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
    data: TrainData | None = None,
) -> tuple[JudgeQAdapter, dict[str, Any]]:
    """Train soft tokens for ``model`` (frozen) and save the adapter to ``output_dir``.

    Writes ``output_dir/{adapter_config.json, adapter_model.safetensors, loss_curve.png,
    history.jsonl}`` and checkpoints under ``output_dir/checkpoint/`` (adapter + optimizer +
    trainer state; ``resume=True`` continues from it). Responses are cached in ``responses_path``
    (default ``output_dir/responses.jsonl``). Prepared examples can be passed in to share prefills
    between runs (e.g. comparing initialisations). ``data=`` carries the prompts, examples and
    responses path as one :class:`~.config.TrainData` instead of the five keywords (not both; pass
    ``train_prompts=None``). ``config.targets`` picks prepared targets or targets computed on the fly
    at every step (:mod:`~.onthefly`; ``"auto"`` decides by memory); ``report["targets"]`` says which
    ran. Returns the adapter and the final report.

    Side effects: seeds torch's and Python's global RNGs with ``config.seed`` (reproducible
    initialisation and shuffling), and builds an ``accelerate.Accelerator`` when none is passed
    (logged; pass ``accelerator=`` to control devices and processes yourself).
    """
    data = TrainData.resolve(
        data,
        train_prompts=train_prompts,
        heldout_prompts=heldout_prompts,
        train_examples=train_examples,
        heldout_examples=heldout_examples,
        responses_path=responses_path,
    )
    config = config or TrainConfig()
    output_dir = Path(output_dir)
    ckpt_dir = output_dir / "checkpoint"
    dist = _Distributed.of(accelerator, model)
    _seed_and_freeze(model, config.seed)
    adapter, resuming = _setup_adapter(model, adapter, config, ckpt_dir, resume)
    data, targets = _prepare_data(model, tokenizer, data, adapter, config, output_dir, dist, progress)
    run = _start_run(model, adapter, config, dist, ckpt_dir, resuming)

    report: dict[str, Any] = {}
    heldout = data.heldout_examples
    if heldout and run.state["step"] == 0:
        report["initial"] = run.evaluate(heldout)
        logger.info("before training: %s", _fmt_metrics(report["initial"]))
    _run_steps(run, data, progress)
    _finish(run, data, targets, output_dir, report)
    adapter.rows.requires_grad_(False)
    return adapter, report


def _seed_and_freeze(model: nn.Module, seed: int) -> None:
    """Seed torch's and Python's global RNGs, and freeze ``model`` in eval mode."""
    torch.manual_seed(seed)
    random.seed(seed)
    model.eval()  # dropout off; and transformers' gradient checkpointing is never switched on here
    for p in model.parameters():
        p.requires_grad_(False)


def _setup_adapter(
    model: nn.Module, adapter: JudgeQAdapter | None, config: TrainConfig, ckpt_dir: Path, resume: bool
) -> tuple[JudgeQAdapter, bool]:
    """The adapter to train, on the model's device with trainable rows, and whether the run resumes:
    the checkpoint's rows when resuming (also when ``adapter`` is passed), else ``adapter``, else fresh."""
    resuming = resume and has_checkpoint(ckpt_dir)
    if resume and not resuming:
        logger.warning("--resume: no checkpoint in %s, starting from scratch", ckpt_dir)
    if resuming:
        adapter = JudgeQAdapter.from_pretrained(ckpt_dir)
    elif adapter is None:
        adapter = JudgeQAdapter.init_for(model, config.num_soft_tokens, seed=config.seed, init=config.init)
    adapter.check_compatible(model)
    adapter.to(model.get_input_embeddings().weight.device)
    adapter.rows.requires_grad_(True)
    return adapter, resuming


def _prepare_data(
    model: nn.Module,
    tokenizer: Any,
    data: TrainData,
    adapter: JudgeQAdapter,
    config: TrainConfig,
    output_dir: Path,
    dist: _Distributed,
    progress: bool,
) -> tuple[TrainData, str]:
    """``data`` with this process's training examples and (main process only) held-out examples
    prepared where only prompts were given; and the targets route the training examples take."""
    store = ResponseStore(
        data.responses_path if data.responses_path is not None else output_dir / "responses.jsonl"
    )
    targets = "prepared"
    train_examples, heldout_examples = data.train_examples, data.heldout_examples
    if train_examples is not None and config.targets == "on-the-fly":
        logger.warning("train(): prepared train_examples were passed in; they are used as they are")
    if train_examples is None:
        train_examples, targets = _prepare_shard(
            model, tokenizer, data.train_prompts, adapter, config, store, dist, progress
        )
    if heldout_examples is None and data.heldout_prompts and dist.is_main:
        heldout_examples = prepare_examples(
            model,
            tokenizer,
            data.heldout_prompts,
            adapter,
            # on the fly, the held-out prompts keep their targets but not their KV
            config if targets == "prepared" else replace(config, keep_prefill=False),
            store,
            window_size=32,
            progress=progress,
            desc="held-out prefill",
        )
    heldout = heldout_examples if dist.is_main else None
    return replace(data, train_examples=train_examples, heldout_examples=heldout), targets


@dataclass
class _Run:
    """What the step loop and the final save share: the frozen model, the rows' optimizer and
    schedule, and the trainer state (``step``, ``history``, ``wall_seconds``) that checkpoints keep."""

    model: nn.Module
    adapter: JudgeQAdapter
    config: TrainConfig
    dist: _Distributed
    ckpt_dir: Path
    optimizer: torch.optim.Optimizer
    scheduler: Any
    state: dict[str, Any]

    def evaluate(self, heldout: list[Example]) -> dict[str, Any]:
        """Held-out metrics now; their loss is noted in the history at the current step."""
        metrics = evaluate_hit_rates(self.model, self.adapter, heldout, self.config.eval_budgets, self.config)
        self.state["history"].append({"step": self.state["step"], "heldout_loss": metrics["heldout_loss"]})
        return metrics

    def save(self) -> None:
        """Checkpoint the rows, the optimizer and schedule, and the trainer state."""
        save_checkpoint(self.ckpt_dir, self.adapter, self.optimizer, self.scheduler, self.state)


def _start_run(
    model: nn.Module,
    adapter: JudgeQAdapter,
    config: TrainConfig,
    dist: _Distributed,
    ckpt_dir: Path,
    resuming: bool,
) -> _Run:
    """AdamW on the rows with warm-up + cosine, fresh or restored from ``ckpt_dir``."""
    optimizer = torch.optim.AdamW([adapter.rows], lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * config.max_steps), config.max_steps
    )
    state: dict[str, Any] = {"step": 0, "history": [], "wall_seconds": 0.0}
    if resuming:
        state = load_checkpoint(ckpt_dir, optimizer, scheduler)
        logger.info("resuming from %s at step %d", ckpt_dir, state["step"])
    return _Run(model, adapter, config, dist, ckpt_dir, optimizer, scheduler, state)


def _run_steps(run: _Run, data: TrainData, progress: bool) -> None:
    """Optimizer steps up to ``config.max_steps``; held-out evaluations and checkpoints on schedule."""
    config, state, heldout = run.config, run.state, data.heldout_examples
    batches = _shuffled_forever(data.train_examples, random.Random(config.seed + state["step"]))
    bar = tqdm(
        total=config.max_steps,
        initial=state["step"],
        desc="train",
        disable=not (progress and run.dist.is_main),
    )
    t0, wall_before = time.perf_counter(), state.get("wall_seconds", 0.0)
    while state["step"] < config.max_steps:
        try:
            total = _step(run, batches)
        except TrainingError as err:
            bar.close()
            raise TrainingError(
                f"{err} at step {state['step'] + 1}; the last good checkpoint is in {run.ckpt_dir} "
                "(lower --lr or check the data); nothing after it was saved"
            ) from None
        entry = {"step": state["step"], "loss": total, "lr": run.scheduler.get_last_lr()[0]}
        bar.set_postfix(loss=f"{total:.4f}")
        bar.update(1)
        if heldout and config.eval_every and state["step"] % config.eval_every == 0:
            entry.update(evaluate_hit_rates(run.model, run.adapter, heldout, config.eval_budgets, config))
            logger.info("step %d: %s", state["step"], _fmt_metrics(entry))
        state["history"].append(entry)
        state["wall_seconds"] = wall_before + time.perf_counter() - t0
        if run.dist.is_main and config.save_every and state["step"] % config.save_every == 0:
            run.save()
    bar.close()


def _step(run: _Run, batches: Iterator[Example]) -> float:
    """One optimizer step over ``config.grad_accum`` examples from ``batches``; returns their loss."""
    run.optimizer.zero_grad(set_to_none=True)
    examples = [next(batches) for _ in range(run.config.grad_accum)]
    total = _accumulate_gradient(run.model, run.adapter, examples, run.config, run.dist)
    if run.config.max_grad_norm:
        torch.nn.utils.clip_grad_norm_([run.adapter.rows], run.config.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.state["step"] += 1
    return total


def _finish(run: _Run, data: TrainData, targets: str, output_dir: Path, report: dict[str, Any]) -> None:
    """Final held-out evaluation, the report, and (main process) the last checkpoint and the outputs."""
    state, dist = run.state, run.dist
    if data.heldout_examples:
        report["final"] = run.evaluate(data.heldout_examples)
        logger.info("after training: %s", _fmt_metrics(report["final"]))
    report["steps"] = state["step"]
    report["targets"] = targets
    report["train_loop_seconds"] = round(state["wall_seconds"], 1)
    report["train_prompts"] = sum(len(e.ids) for e in data.train_examples) * dist.world
    if dist.is_main:
        record_run(run.adapter, run.config, report, dist.world)
        run.save()
        write_outputs(output_dir, run.adapter, state["history"], report)
    if dist.world > 1:  # the other ranks wait while the main one evaluates and saves
        dist.accelerator.wait_for_everyone()


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


def _fmt_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
