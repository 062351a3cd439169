"""On-the-fly targets: nothing but the responses is stored; each step prefills its prompts again.

For models whose prepared store (every prompt's KV and targets) does not fit. Per step and micro-batch:

1. prefill the prompts under ``no_grad`` with the frozen model (:func:`~.data.prefill_prompt`);
2. the target: the responses' mean attention over the prompt KV (:func:`~.data.response_targets`,
   ``no_grad``), the very pass the prepared route runs once;
3. the prediction: the soft tokens' attention over the same KV, with gradient into the rows only.

The loss is :func:`~.objective.alignment_loss`, as for prepared targets. Memory: the weights, one
micro-batch's KV, its two attention maps and the soft pass's activations (``judgeq train --dry-run``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapter import JudgeQAdapter
from .config import TrainConfig, TrainingError
from .data import Responder, ResponseStore, pad_left, pad_token_id, prefill_prompt, response_targets
from .plan import choose_targets
from .shapes import shape_of_model

logger = logging.getLogger(__name__)

__all__ = ["LazyExample", "attention_pair", "prepare_lazy_examples", "resolve_targets"]


@dataclass
class LazyExample:
    """A batch of prompts (left padding) and the model's responses; targets are computed per step."""

    ids: list[str]
    input_ids: torch.Tensor  # [B, N]
    attention_mask: torch.Tensor  # [B, N]
    responses: list[list[int]]

    @property
    def lengths(self) -> list[int]:
        return self.attention_mask.sum(-1).tolist()


def prepare_lazy_examples(
    model: nn.Module,
    tokenizer: Any,
    encoded: Sequence[tuple[str, list[int]]],
    adapter: JudgeQAdapter,
    config: TrainConfig,
    store: ResponseStore,
    *,
    progress: bool = True,
) -> list[LazyExample]:
    """Answer every encoded prompt that ``store`` has no response for (one prefill + decode per batch,
    nothing kept), then batch the prompts with their responses. Empty responses are skipped."""
    if not encoded:
        raise TrainingError("no prompts: the dataset is empty")
    device = model.get_input_embeddings().weight.device
    answer = Responder(model, tokenizer, config, store)
    pad_id = pad_token_id(tokenizer)
    answered: list[tuple[str, list[int], list[int]]] = []
    bar = tqdm(total=len(encoded), desc="responses", disable=not progress)
    for start in range(0, len(encoded), config.batch_size):
        chunk = list(encoded[start : start + config.batch_size])
        responses = answer.cached(chunk)
        if any(r is None for r in responses):
            ids, mask = (t.to(device) for t in pad_left([c[1] for c in chunk], pad_id))
            cache, logits, _ = prefill_prompt(model, adapter, ids, mask)
            responses = answer(chunk, cache, logits, mask)
            del cache
        for (pid, prompt), response in zip(chunk, responses, strict=True):
            if response:
                answered.append((pid, prompt, response))
            else:
                logger.warning("prompt %s: the model's response is empty; skipping it", pid)
        bar.update(len(chunk))
    bar.close()
    if not answered:
        raise TrainingError(f"no usable examples: all {len(encoded)} responses were empty")
    examples = []
    for start in range(0, len(answered), config.batch_size):
        rows = answered[start : start + config.batch_size]
        ids, mask = pad_left([r[1] for r in rows], pad_id)
        examples.append(LazyExample([r[0] for r in rows], ids, mask, [r[2] for r in rows]))
    return examples


def attention_pair(
    model: nn.Module, adapter: JudgeQAdapter, example: Any, grad: bool
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """``(prediction, target)``: the soft tokens' and the responses' attention over ``example``'s prompt.

    A :class:`LazyExample` is prefilled now (``no_grad``) and its target computed from that prefill;
    any other example (prepared in memory or on disk) brings its stored target.
    """
    from .objective import soft_attention

    if not isinstance(example, LazyExample):
        pred, _ = soft_attention(model, adapter, example, grad)
        return pred, example.target
    device = model.get_input_embeddings().weight.device
    ids, mask = example.input_ids.to(device), example.attention_mask.to(device)
    cache, _, _ = prefill_prompt(model, adapter, ids, mask)
    target = response_targets(cache, example.responses, device)
    with torch.set_grad_enabled(grad):
        pred = cache.appended_attention(cache.scorer.appended_inputs(ids.shape[0], model))
    return pred, target


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of ``device``: the GPU's, or the machine's RAM for a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def prepared_store_bytes(model: nn.Module, lengths: Sequence[int], keep_prefill: bool) -> int:
    """What the prepared route keeps for the whole run: every prompt's fp32 target, plus its KV in the
    model's dtype with ``keep_prefill``."""
    shape = shape_of_model(model)
    dtype_bytes = next(model.parameters()).element_size()
    per = [shape.target_bytes(n) + (shape.kv_bytes(n, dtype_bytes) if keep_prefill else 0) for n in lengths]
    return sum(per)


def resolve_targets(model: nn.Module, config: TrainConfig, lengths: Sequence[int]) -> str:
    """``config.targets``, with ``"auto"`` decided by :func:`~.plan.choose_targets` on the real prompt
    lengths and the device's memory (``config.gpu_memory_gb`` overrides it). Logs the decision."""
    if config.targets != "auto":
        return config.targets
    device = model.get_input_embeddings().weight.device
    memory = config.gpu_memory_gb * 1e9 if config.gpu_memory_gb else device_memory_bytes(device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    store = prepared_store_bytes(model, lengths, config.keep_prefill)
    choice = choose_targets(store, weights, memory)
    logger.info(
        "--targets auto: %s (prepared store %.2f GB for %d prompts; %.2f GB of memory, weights %.2f GB)",
        choice,
        store / 1e9,
        len(lengths),
        memory / 1e9,
        weights / 1e9,
    )
    return choice
