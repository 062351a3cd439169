"""Attention-alignment training of Judge Q soft tokens (``judgeq train`` and :func:`train`).

Recipe (paper + our documented choices, see ``docs/training.md``):

1. Prompts (ShareGPT-style files, ``datasets`` datasets, bundled long-context text) in the chat
   template; too long ones are middle-truncated.
2. The frozen model answers each prompt itself (greedy by default); responses are cached in a JSONL
   file and reused on resume.
3. Per prompt: prefill into a ``JudgeQCache(compress=False)``; target = mean attention of the
   response tokens over the prompt keys (``cache.appended_attention(response)``, no grad); prediction =
   the same call with the soft tokens (differentiable w.r.t. ``adapter.rows``) -- the very code the cache
   uses at inference.
4. Loss over every full-attention layer and KV head (GQA: mean over the query heads of a group):
   scaled MSE (default, the paper's loss) or KL between the normalised distributions.
5. AdamW on the rows only, warm-up + cosine, gradient accumulation, checkpoints + resume, held-out
   critical-KV hit rate of Judge Q vs SnapKV.

With ``keep_prefill=True`` (default) each prompt is prefilled once and its KV kept in memory, so a
training step is only the soft-token pass (32 tokens) and its backward. Multi-GPU: run this module
under ``accelerate launch``; prompts are sharded across processes and row gradients all-reduced.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from . import kernels
from .adapter import JudgeQAdapter
from .cache import JudgeQCache, protected_mask
from .capture import AttentionCapture, QueryPlan
from .hitrate import hit_rate
from .prompts import Prompt, corpus_prompts, encode_prompt, load_prompts
from .scorers import Scorer, make_scorer

logger = logging.getLogger(__name__)

__all__ = [
    "Example",
    "ResponseStore",
    "TrainConfig",
    "alignment_loss",
    "evaluate_hit_rates",
    "prepare_examples",
    "register_cli",
    "train",
]

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


class ResponseStore:
    """JSONL cache of self-generated responses: one ``{"id", "prompt_ids", "response_ids"}`` per line.

    Appends are flushed line by line, so an interrupted run resumes where it stopped; a truncated last
    line (killed mid-write) is ignored with a warning.
    """

    def __init__(self, path: str | Path | None):
        self.path = None if path is None else Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.is_file():
            for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    self.records[str(record["id"])] = record
                except (json.JSONDecodeError, KeyError, TypeError):
                    logger.warning("%s:%d: ignoring an unreadable line (interrupted write?)", self.path, n)

    def get(self, pid: str, prompt_ids: list[int]) -> list[int] | None:
        record = self.records.get(pid)
        if record is None or record.get("prompt_ids") != prompt_ids:
            return None
        return list(record["response_ids"])

    def add(self, pid: str, prompt_ids: list[int], response_ids: list[int], **meta: Any) -> None:
        record = {"id": pid, "prompt_ids": prompt_ids, "response_ids": response_ids, **meta}
        self.records[pid] = record
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


# --------------------------------------------------------------------------- examples


@dataclass
class Example:
    """A batch of prompts prefilled together (left padding) with their response-attention targets."""

    ids: list[str]
    input_ids: torch.Tensor  # [B, N]
    attention_mask: torch.Tensor  # [B, N]
    target: dict[int, torch.Tensor]  # {layer: [B, Hkv, N]} fp32, response attention over the prompt
    cache: JudgeQCache | None = None  # prefilled (keep_prefill) or None (re-prefilled per step)
    window: dict[int, torch.Tensor] | None = None  # SnapKV last-window attention (held-out only)

    @property
    def lengths(self) -> list[int]:
        return self.attention_mask.sum(-1).tolist()


def _cache_kwarg(model: nn.Module) -> str:
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _prefill(
    model: nn.Module,
    adapter: JudgeQAdapter,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    window_size: int = 0,
) -> tuple[JudgeQCache, torch.Tensor, dict[int, torch.Tensor] | None]:
    """Prefill a ``JudgeQCache(compress=False)``; returns it, the last logits and (optionally) the
    attention of the last ``window_size`` prompt queries (what SnapKV scores with)."""
    cache = JudgeQCache(model, adapter, budget=0.5, compress=False)
    n = input_ids.shape[1]
    capture = None
    if window_size:
        w = min(window_size, n)
        plan = QueryPlan(slice(n - w, None), n - w, n, mask.bool(), frozenset(cache._evictable))
        capture = AttentionCapture(cache._attn_names, plan)
    with torch.no_grad(), capture if capture is not None else _null():
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=_positions(mask),
            logits_to_keep=1,
            use_cache=True,
            **{_cache_kwarg(model): cache},
        )
    return cache, out.logits[:, -1].float(), (capture.scores if capture is not None else None)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@torch.no_grad()
def _decode(
    model: nn.Module,
    cache: JudgeQCache,
    logits: torch.Tensor,
    mask: torch.Tensor,
    max_new_tokens: int,
    eos_ids: set[int],
    do_sample: bool,
    temperature: float,
    generator: torch.Generator | None,
) -> list[list[int]]:
    """Continue from the prefilled ``cache`` (copied into a plain DynamicCache, left untouched)."""
    dyn = DynamicCache(config=model.config)
    for idx, layer in enumerate(cache.layers):
        dyn.update(layer.keys, layer.values, idx)
    bsz = mask.shape[0]
    positions = _positions(mask)[:, -1:]
    out: list[list[int]] = [[] for _ in range(bsz)]
    done = torch.zeros(bsz, dtype=torch.bool)
    kwarg = _cache_kwarg(model)
    for _ in range(max_new_tokens):
        if do_sample:
            probs = torch.softmax(logits / max(temperature, 1e-5), dim=-1)
            token = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)
        else:
            token = logits.argmax(-1)
        for b in range(bsz):
            if not done[b]:
                t = int(token[b])
                if t in eos_ids:
                    done[b] = True
                else:
                    out[b].append(t)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        positions = positions + 1
        logits = (
            model(
                input_ids=token[:, None],
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{kwarg: dyn},
            )
            .logits[:, -1]
            .float()
        )
    return out


def _response_targets(cache: JudgeQCache, responses: list[list[int]], device) -> dict[int, torch.Tensor]:
    """``{layer: [B, Hkv, N]}`` mean attention of each row's own response (rows of equal response length
    share one dry pass; rows with an empty response get zeros)."""
    bsz = len(responses)
    target: dict[int, torch.Tensor] = {}
    by_length: dict[int, list[int]] = {}
    for b, r in enumerate(responses):
        if r:
            by_length.setdefault(len(r), []).append(b)
    longest = max((len(r) for r in responses), default=0)
    padded = torch.zeros((bsz, max(longest, 1)), dtype=torch.long)
    for b, r in enumerate(responses):
        padded[b, : len(r)] = torch.tensor(r, dtype=torch.long)
    with torch.no_grad():
        for length, rows in by_length.items():
            scores = cache.appended_attention({"input_ids": padded[:, :length].to(device)})
            for layer, s in scores.items():
                if layer not in target:
                    target[layer] = torch.zeros_like(s)
                target[layer][rows] = s[rows]
    return target


def _pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, n - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[b, n - len(s) :] = 1
    return ids, mask


def prepare_examples(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    adapter: JudgeQAdapter,
    config: TrainConfig,
    store: ResponseStore | None = None,
    *,
    window_size: int = 0,
    progress: bool = True,
    desc: str = "prefill + responses",
) -> list[Example]:
    """Encode, answer (or reuse cached answers), prefill and compute targets, in length-sorted batches.

    Prompts whose response is empty are skipped with a warning. ``window_size > 0`` also captures the
    SnapKV window attention (for held-out evaluation).
    """
    from tqdm.auto import tqdm

    if not prompts:
        raise TrainingError("no prompts: the dataset is empty")
    store = store if store is not None else ResponseStore(None)
    device = model.get_input_embeddings().weight.device
    max_len = config.max_prompt_tokens or _default_max_prompt(model, config)
    encoded = [(p.id, encode_prompt(tokenizer, p, max_len)) for p in prompts]
    encoded = [(pid, ids) for pid, ids in encoded if ids]
    encoded.sort(key=lambda x: len(x[1]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos_ids = _eos_ids(model, tokenizer)
    generator = torch.Generator().manual_seed(config.seed)
    examples: list[Example] = []
    skipped = 0
    bar = tqdm(total=len(encoded), desc=desc, disable=not progress)
    for start in range(0, len(encoded), config.batch_size):
        chunk = encoded[start : start + config.batch_size]
        ids, mask = _pad_left([c[1] for c in chunk], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        cache, logits, window = _prefill(model, adapter, ids, mask, window_size)
        responses = [store.get(pid, p) for pid, p in chunk]
        if any(r is None for r in responses):
            fresh = _decode(
                model,
                cache,
                logits,
                mask,
                config.max_new_tokens,
                eos_ids,
                config.do_sample,
                config.temperature,
                generator,
            )
            for b, (pid, p) in enumerate(chunk):
                if responses[b] is None:
                    responses[b] = fresh[b]
                    store.add(pid, p, fresh[b], sampled=config.do_sample)
        keep = [b for b, r in enumerate(responses) if r]
        for b, (pid, _) in enumerate(chunk):
            if not responses[b]:
                logger.warning("prompt %s: the model's response is empty; skipping it", pid)
                skipped += 1
        if keep:
            target = _response_targets(cache, responses, device)
            if len(keep) < len(chunk):  # re-prefill without the empty rows (rare)
                sub = [chunk[b] for b in keep]
                ids, mask = _pad_left([c[1] for c in sub], pad_id)
                ids, mask = ids.to(device), mask.to(device)
                cache, _, window = _prefill(model, adapter, ids, mask, window_size)
                target = _response_targets(cache, [responses[b] for b in keep], device)
                chunk = sub
            examples.append(
                Example(
                    ids=[c[0] for c in chunk],
                    input_ids=ids.cpu(),
                    attention_mask=mask.cpu(),
                    target={k: v.detach() for k, v in target.items()},
                    cache=cache if config.keep_prefill else None,
                    window=window,
                )
            )
        bar.update(len(chunk) + (len(encoded[start : start + config.batch_size]) - len(chunk)))
    bar.close()
    if not examples:
        raise TrainingError(f"no usable examples: all {skipped} responses were empty")
    return examples


def _default_max_prompt(model: nn.Module, config: TrainConfig) -> int:
    cfg = (
        model.config.get_text_config(decoder=True)
        if hasattr(model.config, "get_text_config")
        else model.config
    )
    ctx = int(getattr(cfg, "max_position_embeddings", 8192) or 8192)
    return max(16, ctx - config.max_new_tokens - config.num_soft_tokens)


def _eos_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


# --------------------------------------------------------------------------- loss


def alignment_loss(
    pred: dict[int, torch.Tensor],
    target: dict[int, torch.Tensor],
    attention_mask: torch.Tensor,
    kind: str = "mse",
    ignore_first: int = 0,
) -> torch.Tensor:
    """Loss between soft-token and response attention over the prompt, mean over layers, rows, KV heads.

    ``"mse"``: mean over real prompt positions of ``(N * p - N * t) ** 2`` (probabilities are ~1/N; the
    ``N`` factor makes the loss O(1) whatever the prompt length). ``"kl"``: ``KL(t || p)`` after
    normalising both over the real positions. The first ``ignore_first`` real tokens (attention sinks,
    which take a large, uninformative share of both) and padding are left out.
    """
    if kind not in ("mse", "kl"):
        raise ValueError(f"loss must be 'mse' or 'kl', got {kind!r}")
    mask = attention_mask.bool().to(next(iter(pred.values())).device)
    real_index = mask.long().cumsum(-1) - 1
    valid = (mask & (real_index >= ignore_first)).float()[:, None, :]  # [B, 1, N]
    count = valid.sum(-1).clamp(min=1.0)  # [B, 1]
    losses = []
    for layer, t in target.items():
        p = pred[layer]
        t = t.to(p.device)
        if kind == "mse":
            n = count[..., None]
            err = ((p - t) * n) ** 2 * valid
            losses.append((err.sum(-1) / count).mean())
        else:
            eps = 1e-8
            pn = p * valid
            tn = t * valid
            pn = pn / pn.sum(-1, keepdim=True).clamp(min=eps)
            tn = tn / tn.sum(-1, keepdim=True).clamp(min=eps)
            kl = (tn * (torch.log(tn + eps) - torch.log(pn + eps))) * valid
            losses.append(kl.sum(-1).mean())
    return torch.stack(losses).mean()


# --------------------------------------------------------------------------- evaluation


def _kept(scorer: Scorer, scores: torch.Tensor, k: int) -> torch.Tensor:
    key_mask = torch.ones(scores.shape[0], scores.shape[-1], dtype=torch.bool, device=scores.device)
    sinks, recent = scorer.protected_counts(k)
    return kernels.select_indices(
        scores,
        k,
        key_mask=key_mask,
        protected=protected_mask(key_mask, sinks, recent),
        pooling_kernel=scorer.pooling_kernel,
        pooling=scorer.pooling,
    )


def _soft_attention(model, adapter, example: Example, grad: bool) -> tuple[dict[int, torch.Tensor], Any]:
    cache = example.cache
    if cache is None:
        device = model.get_input_embeddings().weight.device
        cache, _, _ = _prefill(
            model, adapter, example.input_ids.to(device), example.attention_mask.to(device)
        )
    if cache.adapter is not adapter:
        cache.scorer.adapter = adapter
    with torch.set_grad_enabled(grad):
        pred = cache.appended_attention(cache.scorer.appended_inputs(example.input_ids.shape[0], model))
    return pred, cache


def evaluate_hit_rates(
    model: nn.Module,
    adapter: JudgeQAdapter,
    examples: Sequence[Example],
    budgets: Iterable[float] = (0.1, 0.25),
    config: TrainConfig | None = None,
) -> dict[str, float]:
    """Held-out metrics: critical-KV hit rate of Judge Q and SnapKV at each kept fraction, and the loss.

    Both selections go through :func:`judgeq_cache.kernels.select_indices` with the pooling and
    protected tokens their scorer uses in the cache; SnapKV's scores are the last-32-window attention
    captured during the prefill (what ``EvictionCache(model, budget, "snapkv")`` computes). The oracle
    is the top-k of the response attention at the same k. Rows are scored on their real tokens only.
    """
    config = config or TrainConfig()
    judgeq = make_scorer("judgeq", adapter=adapter)
    snapkv = make_scorer("snapkv")
    rates: dict[str, list[float]] = {}
    losses = []
    for example in examples:
        if example.window is None:
            raise ValueError("held-out examples need the SnapKV window: prepare them with window_size=32")
        pred, _ = _soft_attention(model, adapter, example, grad=False)
        losses.append(
            float(
                alignment_loss(pred, example.target, example.attention_mask, config.loss, config.ignore_first)
            )
        )
        for b, n in enumerate(example.lengths):
            for budget in budgets:
                k = max(1, min(n, round(budget * n)))
                critical = {
                    layer: kernels.select_indices(t[b : b + 1, :, -n:].float(), k)
                    for layer, t in example.target.items()
                }
                for name, scorer, scores in (("judgeq", judgeq, pred), ("snapkv", snapkv, example.window)):
                    kept = {
                        layer: _kept(scorer, scores[layer][b : b + 1, :, -n:].float(), k)
                        for layer in critical
                    }
                    rates.setdefault(f"hit_rate/{name}@{budget:.0%}", []).append(hit_rate(kept, critical))
    out = {key: sum(v) / len(v) for key, v in rates.items()}
    out["heldout_loss"] = sum(losses) / len(losses)
    out["heldout_prompts"] = sum(len(e.ids) for e in examples)
    return out


# --------------------------------------------------------------------------- training loop


def _lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


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
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no loss plot")
        return None
    steps = [h["step"] for h in history if "loss" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
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
    plt.close(fig)
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
    between runs (e.g. comparing initialisations). Returns the adapter and the final report.
    """
    config = config or TrainConfig()
    output_dir = Path(output_dir)
    ckpt_dir = output_dir / "checkpoint"
    if accelerator is None:
        try:
            from accelerate import Accelerator

            accelerator = Accelerator(cpu=not torch.cuda.is_available())
        except ImportError:
            accelerator = None
    is_main = accelerator is None or accelerator.is_main_process
    world = 1 if accelerator is None else accelerator.num_processes
    rank = 0 if accelerator is None else accelerator.process_index
    if accelerator is not None and next(model.parameters()).device != accelerator.device:
        model.to(accelerator.device)
    torch.manual_seed(config.seed)
    random.seed(config.seed)

    model.eval()  # dropout off; and transformers' gradient checkpointing is never switched on here
    for p in model.parameters():
        p.requires_grad_(False)

    state: dict[str, Any] = {"step": 0, "history": [], "wall_seconds": 0.0}
    if adapter is None:
        if resume and (ckpt_dir / TRAINER_STATE).is_file():
            adapter = JudgeQAdapter.from_pretrained(ckpt_dir)
        else:
            adapter = JudgeQAdapter.init_for(
                model, config.num_soft_tokens, seed=config.seed, init=config.init
            )
    adapter.check_compatible(model)
    device = model.get_input_embeddings().weight.device
    adapter.to(device)
    adapter.rows.requires_grad_(True)

    store = ResponseStore(responses_path if responses_path is not None else output_dir / "responses.jsonl")
    if train_examples is None:
        # Each process prepares its shard of the prompts.
        shard = list(train_prompts or [])[rank::world]
        if not train_prompts:
            raise TrainingError("no training prompts: the dataset is empty")
        if world > 1:
            store = ResponseStore(Path(store.path).with_suffix(f".rank{rank}.jsonl")) if store.path else store
        train_examples = prepare_examples(
            model,
            tokenizer,
            shard,
            adapter,
            config,
            store,
            progress=progress and is_main,
            desc="train prefill",
        )
    if heldout_examples is None and heldout_prompts and is_main:
        held_cfg = TrainConfig(**{**config.to_dict(), "eval_budgets": config.eval_budgets})
        heldout_examples = prepare_examples(
            model,
            tokenizer,
            heldout_prompts,
            adapter,
            held_cfg,
            store,
            window_size=32,
            progress=progress,
            desc="held-out prefill",
        )

    optimizer = torch.optim.AdamW([adapter.rows], lr=config.lr, weight_decay=config.weight_decay)
    warmup = int(config.warmup_ratio * config.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(warmup, config.max_steps))
    if resume and (ckpt_dir / TRAINER_STATE).is_file():
        saved = torch.load(ckpt_dir / OPTIMIZER_STATE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = json.loads((ckpt_dir / TRAINER_STATE).read_text())
        logger.info("resuming from %s at step %d", ckpt_dir, state["step"])
    elif resume:
        logger.warning("--resume: no checkpoint in %s, starting from scratch", ckpt_dir)

    report: dict[str, Any] = {}
    if heldout_examples and is_main and state["step"] == 0:
        report["initial"] = evaluate_hit_rates(model, adapter, heldout_examples, config.eval_budgets, config)
        state["history"].append({"step": 0, "heldout_loss": report["initial"]["heldout_loss"]})
        logger.info("before training: %s", _fmt_metrics(report["initial"]))

    from tqdm.auto import tqdm

    rng = random.Random(config.seed + state["step"])
    order: list[int] = []
    bar = tqdm(
        total=config.max_steps, initial=state["step"], desc="train", disable=not (progress and is_main)
    )
    t0 = time.perf_counter()
    wall_before = state.get("wall_seconds", 0.0)
    while state["step"] < config.max_steps:
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(config.grad_accum):
            if not order:
                order = list(range(len(train_examples)))
                rng.shuffle(order)
            example = train_examples[order.pop()]
            pred, _ = _soft_attention(model, adapter, example, grad=True)
            loss = alignment_loss(
                pred, example.target, example.attention_mask, config.loss, config.ignore_first
            )
            (loss / config.grad_accum).backward()
            total += float(loss.detach()) / config.grad_accum
        grad = adapter.rows.grad
        if accelerator is not None and world > 1:
            grad.copy_(accelerator.reduce(grad, reduction="mean"))
            total = float(accelerator.reduce(torch.tensor(total, device=grad.device), reduction="mean"))
        if not math.isfinite(total) or not torch.isfinite(grad).all():
            bar.close()
            raise TrainingError(
                f"non-finite loss ({total}) at step {state['step'] + 1}; the last good checkpoint is in {ckpt_dir} "
                "(lower --lr or check the data); nothing after it was saved"
            )
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_([adapter.rows], config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        state["step"] += 1
        entry = {"step": state["step"], "loss": total, "lr": scheduler.get_last_lr()[0]}
        bar.set_postfix(loss=f"{total:.4f}")
        bar.update(1)
        if heldout_examples and is_main and config.eval_every and state["step"] % config.eval_every == 0:
            metrics = evaluate_hit_rates(model, adapter, heldout_examples, config.eval_budgets, config)
            entry.update(metrics)
            logger.info("step %d: %s", state["step"], _fmt_metrics(metrics))
        state["history"].append(entry)
        state["wall_seconds"] = wall_before + time.perf_counter() - t0
        if is_main and config.save_every and state["step"] % config.save_every == 0:
            _save_checkpoint(ckpt_dir, adapter, optimizer, scheduler, state)
    bar.close()
    state["wall_seconds"] = wall_before + time.perf_counter() - t0

    if heldout_examples and is_main:
        report["final"] = evaluate_hit_rates(model, adapter, heldout_examples, config.eval_budgets, config)
        state["history"].append({"step": state["step"], "heldout_loss": report["final"]["heldout_loss"]})
        logger.info("after training: %s", _fmt_metrics(report["final"]))
    report["steps"] = state["step"]
    report["train_loop_seconds"] = round(state["wall_seconds"], 1)
    report["train_prompts"] = sum(len(e.ids) for e in train_examples) * world
    if is_main:
        adapter.config.training = {
            **config.to_dict(),
            "train_prompts": report["train_prompts"],
            "world_size": world,
        }
        adapter.config.metrics = {
            **{k: round(v, 4) for k, v in report.get("final", {}).items() if isinstance(v, float)},
            **{
                f"initial/{k}": round(v, 4)
                for k, v in report.get("initial", {}).items()
                if isinstance(v, float)
            },
            "train_loop_seconds": report["train_loop_seconds"],
        }
        _save_checkpoint(ckpt_dir, adapter, optimizer, scheduler, state)
        adapter.save_pretrained(output_dir)
        with (output_dir / "history.jsonl").open("w") as f:
            for h in state["history"]:
                f.write(json.dumps(h) + "\n")
        plot_loss(
            state["history"], output_dir / "loss_curve.png", title=f"Judge Q: {adapter.config.base_model}"
        )
        (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    adapter.rows.requires_grad_(False)
    return adapter, report


def _fmt_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


# --------------------------------------------------------------------------- CLI


def _load_model(name: str, dtype: str):
    from .models import load_model

    return load_model(name, dtype=dtype)


def run_cli(args: argparse.Namespace) -> int:
    config = TrainConfig(
        num_soft_tokens=args.num_soft_tokens,
        init=args.init,
        loss=args.loss,
        ignore_first=args.ignore_first,
        lr=args.lr,
        max_steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        max_prompt_tokens=args.max_prompt_tokens,
        seed=args.seed,
        save_every=args.save_every,
        eval_every=args.eval_every,
        keep_prefill=not args.no_keep_prefill,
    )
    model, tokenizer = _load_model(args.model, args.dtype)
    prompts: list[Prompt] = []
    for source in args.data or []:
        prompts += load_prompts(source, split=args.split, field=args.field, limit=args.limit)
    if args.corpus_prompts:
        prompts += corpus_prompts(
            tokenizer,
            args.corpus_prompts,
            min_tokens=args.min_tokens,
            max_tokens=args.max_tokens,
            seed=args.seed,
        )
    if not prompts:
        raise TrainingError("no prompts: pass --data FILE/DATASET and/or --corpus-prompts N")
    rng = random.Random(args.seed)
    rng.shuffle(prompts)
    n_held = int(round(args.heldout * len(prompts))) if args.heldout < 1 else int(args.heldout)
    n_held = min(n_held, len(prompts) - 1)
    held, train_set = prompts[:n_held], prompts[n_held:]
    _, report = train(
        model,
        tokenizer,
        train_set,
        args.output,
        config,
        heldout_prompts=held,
        responses_path=args.responses,
        resume=args.resume,
    )
    logger.info("report: %s", json.dumps(report, indent=2))
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train Judge Q soft tokens for a model",
        description="Train Judge Q soft tokens (attention alignment). Runs on one CPU with plain "
        "`judgeq train ...`, or data-parallel with `accelerate launch -m judgeq_cache.training ...`.",
    )
    add_arguments(p)
    p.set_defaults(func=run_cli)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2", help="Hub id, local dir, or 'smollm2' (embedded, offline)")
    p.add_argument("--dtype", default="float32", help="model dtype (float32, bfloat16, float16)")
    p.add_argument(
        "--data", action="append", help="JSON/JSONL file, save_to_disk dir or datasets name (repeatable)"
    )
    p.add_argument("--split", default="train")
    p.add_argument("--field", default=None, help="conversation/text field (default: auto)")
    p.add_argument("--limit", type=int, default=None, help="read at most this many records per --data")
    p.add_argument("--corpus-prompts", type=int, default=0, help="add N prompts over the bundled books")
    p.add_argument("--min-tokens", type=int, default=1000, help="bundled-text excerpt length, minimum")
    p.add_argument("--max-tokens", type=int, default=3000, help="bundled-text excerpt length, maximum")
    p.add_argument("--heldout", type=float, default=0.15, help="held-out fraction (<1) or count (>=1)")
    p.add_argument("--output", "-o", required=True, help="output adapter directory")
    p.add_argument("--responses", default=None, help="response cache JSONL (default OUTPUT/responses.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint")
    p.add_argument("--num-soft-tokens", type=int, default=32)
    p.add_argument("--init", choices=["vocab", "mean"], default="vocab")
    p.add_argument("--loss", choices=["mse", "kl"], default="mse")
    p.add_argument("--ignore-first", type=int, default=4, help="first prompt tokens left out of the loss")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--sample", action="store_true", help="sample responses (default greedy)")
    p.add_argument("--max-prompt-tokens", type=int, default=None, help="middle-truncate longer prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=0)
    p.add_argument("--no-keep-prefill", action="store_true", help="re-prefill each step (saves memory)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m judgeq_cache.training")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_cli(args)


if __name__ == "__main__":
    raise SystemExit(main())
