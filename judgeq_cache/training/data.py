"""Training data: prompts answered by the frozen model (cached, resumable), prefilled once."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache

from ..adapter import JudgeQAdapter
from ..cache import JudgeQCache
from ..prompts import Prompt, encode_prompt
from ..utils import cache_kwarg, eos_token_ids, text_config
from .config import TrainConfig, TrainingError

logger = logging.getLogger(__name__)


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
    last: dict[int, torch.Tensor] | None = None  # last prompt query's attention (TOVA; held-out only)

    @property
    def lengths(self) -> list[int]:
        return self.attention_mask.sum(-1).tolist()


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def prefill_prompt(
    model: nn.Module,
    adapter: JudgeQAdapter,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    window_size: int = 0,
) -> tuple[JudgeQCache, torch.Tensor, dict[int, dict[int, torch.Tensor]] | None]:
    """Prefill a ``JudgeQCache(auto_compress=False)``; returns it, the last logits and (optionally)
    ``{window_size: ..., 1: ...}``: the attention of the last ``window_size`` prompt queries (what
    SnapKV scores with) and of the last one (TOVA's)."""
    cache = JudgeQCache(model, adapter, budget=0.5, auto_compress=False)
    n = input_ids.shape[1]
    captures = {}
    if window_size:
        for size in {window_size, 1}:
            w = min(size, n)
            captures[size] = cache.query_capture(slice(n - w, None), n - w, n, mask.bool())
    with torch.no_grad(), contextlib.ExitStack() as stack:
        for capture in captures.values():
            stack.enter_context(capture)
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=_positions(mask),
            logits_to_keep=1,
            use_cache=True,
            **{cache.cache_kwarg: cache},
        )
    windows = {size: capture.scores for size, capture in captures.items()} if captures else None
    return cache, out.logits[:, -1].float(), windows


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
    kwarg = cache_kwarg(model)
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


def response_targets(cache: JudgeQCache, responses: list[list[int]], device) -> dict[int, torch.Tensor]:
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


def pad_token_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def encode_prompts(
    model: nn.Module, tokenizer: Any, prompts: Sequence[Prompt], config: TrainConfig
) -> list[tuple[str, list[int]]]:
    """``(id, token ids)`` of every non-empty prompt in the chat template, middle-truncated, shortest first."""
    max_len = config.max_prompt_tokens or _default_max_prompt(model, config)
    encoded = [(p.id, encode_prompt(tokenizer, p, max_len)) for p in prompts]
    encoded = [(pid, ids) for pid, ids in encoded if ids]
    encoded.sort(key=lambda x: len(x[1]))
    return encoded


class Responder:
    """The model's own responses to a batch of prompts: from ``store``, or decoded from their prefill
    (and appended to ``store``)."""

    def __init__(self, model: nn.Module, tokenizer: Any, config: TrainConfig, store: ResponseStore):
        self.model, self.config, self.store = model, config, store
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.generator = torch.Generator().manual_seed(config.seed)

    def cached(self, chunk: Sequence[tuple[str, list[int]]]) -> list[list[int] | None]:
        return [self.store.get(pid, p) for pid, p in chunk]

    def __call__(
        self,
        chunk: Sequence[tuple[str, list[int]]],
        cache: JudgeQCache,
        logits: torch.Tensor,
        mask: torch.Tensor,
    ) -> list[list[int]]:
        responses = self.cached(chunk)
        if any(r is None for r in responses):
            c = self.config
            fresh = _decode(
                self.model,
                cache,
                logits,
                mask,
                c.max_new_tokens,
                self.eos_ids,
                c.do_sample,
                c.temperature,
                self.generator,
            )
            for b, (pid, p) in enumerate(chunk):
                if responses[b] is None:
                    responses[b] = fresh[b]
                    self.store.add(pid, p, fresh[b], sampled=c.do_sample)
        return responses


def pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
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
    encoded: list[tuple[str, list[int]]] | None = None,
) -> list[Example]:
    """Encode, answer (or reuse cached answers), prefill and compute targets, in length-sorted batches.

    Prompts whose response is empty are skipped with a warning. ``window_size > 0`` also captures the
    SnapKV window attention (for held-out evaluation). ``encoded``: the prompts already encoded by
    :func:`encode_prompts`.
    """
    from tqdm.auto import tqdm

    if not prompts:
        raise TrainingError("no prompts: the dataset is empty")
    store = store if store is not None else ResponseStore(None)
    device = model.get_input_embeddings().weight.device
    encoded = encoded if encoded is not None else encode_prompts(model, tokenizer, prompts, config)
    pad_id = pad_token_id(tokenizer)
    answer = Responder(model, tokenizer, config, store)
    examples: list[Example] = []
    skipped = 0
    bar = tqdm(total=len(encoded), desc=desc, disable=not progress)
    for start in range(0, len(encoded), config.batch_size):
        chunk = encoded[start : start + config.batch_size]
        ids, mask = pad_left([c[1] for c in chunk], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        cache, logits, window = prefill_prompt(model, adapter, ids, mask, window_size)
        responses = answer(chunk, cache, logits, mask)
        keep = [b for b, r in enumerate(responses) if r]
        for b, (pid, _) in enumerate(chunk):
            if not responses[b]:
                logger.warning("prompt %s: the model's response is empty; skipping it", pid)
                skipped += 1
        if keep:
            target = response_targets(cache, responses, device)
            if len(keep) < len(chunk):  # re-prefill without the empty rows (rare)
                sub = [chunk[b] for b in keep]
                ids, mask = pad_left([c[1] for c in sub], pad_id)
                ids, mask = ids.to(device), mask.to(device)
                cache, _, window = prefill_prompt(model, adapter, ids, mask, window_size)
                target = response_targets(cache, [responses[b] for b in keep], device)
                chunk = sub
            examples.append(
                Example(
                    ids=[c[0] for c in chunk],
                    input_ids=ids.cpu(),
                    attention_mask=mask.cpu(),
                    target={k: v.detach() for k, v in target.items()},
                    cache=cache if config.keep_prefill else None,
                    window=None if window is None else window[window_size],
                    last=None if window is None else window[1],
                )
            )
        bar.update(len(chunk) + (len(encoded[start : start + config.batch_size]) - len(chunk)))
    bar.close()
    if not examples:
        raise TrainingError(f"no usable examples: all {skipped} responses were empty")
    return examples


def _default_max_prompt(model: nn.Module, config: TrainConfig) -> int:
    ctx = int(getattr(text_config(model), "max_position_embeddings", 8192) or 8192)
    return max(16, ctx - config.max_new_tokens - config.num_soft_tokens)


# --------------------------------------------------------------------------- loss
