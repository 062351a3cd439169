"""Independent references for the eviction tests.

``masked_logits``: the full, never-evicted cache where exactly the evicted entries are masked out
of every layer's attention (plain eager math with an explicit per-head mask). Eviction is exact
iff the evicted cache gives the same logits.
"""

from __future__ import annotations

import contextlib

import torch
from conftest import cache_kwargs
from transformers import DynamicCache
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

_NAME = "judgeq_test_masked_reference"
_KEEP: dict[int, torch.Tensor] = {}


def _masked_eager(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs
):
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scaling = module.scaling if scaling is None else scaling
    logits = (query.float() @ key.float().transpose(-1, -2)) * scaling
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if attention_mask is not None:
        mask = attention_mask[..., : key.shape[-2]]
        logits = (
            logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.float()
        )
    keep = _KEEP.get(module.layer_idx)
    if keep is not None:
        full = torch.ones(logits.shape[0], keep.shape[1], key.shape[-2], dtype=torch.bool)
        full[..., : keep.shape[-1]] = keep
        logits = logits.masked_fill(~full.repeat_interleave(groups, dim=1)[:, :, None, :], float("-inf"))
    probs = torch.softmax(logits, dim=-1).to(value.dtype)
    out = (probs @ value).transpose(1, 2).contiguous()
    return out, probs


ALL_ATTENTION_FUNCTIONS.register(_NAME, _masked_eager)
ALL_MASK_ATTENTION_FUNCTIONS.register(_NAME, eager_mask)


@contextlib.contextmanager
def _attention(model, name: str):
    old = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = old


def keep_masks(kept_indices: dict[int, torch.Tensor], prompt_length: int) -> dict[int, torch.Tensor]:
    """Per-layer ``[B, Hkv, N]`` bool masks of the kept prompt entries."""
    masks = {}
    for layer, idx in kept_indices.items():
        mask = torch.zeros(*idx.shape[:2], prompt_length, dtype=torch.bool)
        mask.scatter_(-1, idx, True)
        masks[layer] = mask
    return masks


@torch.no_grad()
def masked_logits(
    model, prompt_kwargs: dict, steps: list[dict], keep: dict[int, torch.Tensor]
) -> list[torch.Tensor]:
    """Logits of each forward in ``steps`` after a full-cache prefill, evicted entries masked out."""
    full = DynamicCache(config=model.config)
    model(**prompt_kwargs, **cache_kwargs(model, full))
    out = []
    _KEEP.clear()
    _KEEP.update(keep)
    try:
        with _attention(model, _NAME):
            for step in steps:
                out.append(model(**step, **cache_kwargs(model, full)).logits)
    finally:
        _KEEP.clear()
    return out


@torch.no_grad()
def one_pass_soft_attention(model, prompt_ids: torch.Tensor, rows: torch.Tensor) -> dict[int, torch.Tensor]:
    """Soft tokens appended to the prompt in ONE eager forward; their mean attention over the prompt
    per KV head, read from ``output_attentions``."""
    embeds = model.get_input_embeddings()(prompt_ids)
    bsz, n = prompt_ids.shape
    soft = rows.to(embeds.dtype)[None].expand(bsz, -1, -1)
    with _attention(model, "eager"):
        out = model(inputs_embeds=torch.cat([embeds, soft], dim=1), output_attentions=True, use_cache=False)
    return attention_after(out.attentions, n, model.config.num_key_value_heads)


def attention_after(attentions: tuple[torch.Tensor, ...], n: int, kv_heads: int) -> dict[int, torch.Tensor]:
    """``{layer: [B, Hkv, n]}`` from eager ``output_attentions``: the mean attention of the queries
    from position ``n`` on over the first ``n`` keys, the query heads of each KV group averaged."""
    result = {}
    for layer, attn in enumerate(attentions):
        b, hq, q, _ = attn.shape
        part = attn[:, :, n:, :n].float().reshape(b, kv_heads, hq // kv_heads, q - n, n)
        result[layer] = part.mean(dim=(2, 3))
    return result


@torch.no_grad()
def masked_logits_per_step(
    model, steps: list[dict], keeps: list[dict[int, torch.Tensor]]
) -> list[torch.Tensor]:
    """Logits of each forward in ``steps`` over one full, never-evicted cache, where forward ``t`` does
    not see the entries that ``keeps[t]`` (``{layer: [B, Hkv, P]}`` bool over the first ``P`` logical
    positions) marks ``False``; later positions stay visible. The reference for eviction that happens
    between forwards (prefill chunks, decode steps)."""
    full = DynamicCache(config=model.config)
    out = []
    try:
        with _attention(model, _NAME):
            for step, keep in zip(steps, keeps):
                _KEEP.clear()
                _KEEP.update(keep)
                out.append(model(**step, **cache_kwargs(model, full)).logits)
    finally:
        _KEEP.clear()
    return out
