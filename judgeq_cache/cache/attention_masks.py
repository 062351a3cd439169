"""Attention masks for compressed layers, fitted per attention call.

transformers builds one mask for all full-attention layers. After eviction two things can differ per
layer, and the attention hook of :mod:`judgeq_cache.hooks` fixes them (only for forwards whose cache
is an :class:`~judgeq_cache.cache.EvictionCache`):

- layers storing different counts (PyramidKV): the mask is sized for the longest and right-sliced;
- rows keeping different counts: the filler slots of the shorter rows are masked out.
"""

from __future__ import annotations

from typing import Any

import torch

from .layers import EvictableLayer


def fit_attention_mask(
    layer: EvictableLayer, kwargs: dict[str, Any], hidden: torch.Tensor, ragged: bool, attn_names: set[str]
) -> None:
    """Fit ``kwargs["attention_mask"]`` of an attention call of ``layer`` in place: right-slice it to
    the layer's stored entries when layers store different counts (``ragged``), and hide the filler
    slots of rows that keep fewer entries."""
    mask = kwargs.get("attention_mask")
    needed = layer.stored_length + hidden.shape[-2]
    if isinstance(mask, torch.Tensor) and ragged and mask.shape[-1] > needed:
        mask = kwargs["attention_mask"] = mask[..., -needed:]
    if layer.visible is not None:
        kwargs["attention_mask"] = hide_fillers(mask, layer, hidden, attn_names)


def hide_fillers(mask: Any, layer: EvictableLayer, hidden: torch.Tensor, attn_names: set[str]) -> Any:
    """``mask`` with the filler slots of ``layer`` (rows keeping fewer entries) masked out.

    Boolean masks (sdpa) get ``False``, additive float masks (eager) the dtype's minimum, 2-D padding
    masks (flash attention) a 0; a missing mask (sdpa's causal shortcut) is built causal first.
    """
    query_length = hidden.shape[-2]
    if mask is None:
        num_keys = layer.stored_length + query_length
        visible = layer.visibility(num_keys, query_length)
        if any(name.startswith("flash") for name in attn_names):
            return visible.long()
        causal = torch.ones((query_length, num_keys), dtype=torch.bool, device=visible.device).tril(
            num_keys - query_length
        )
        allowed = causal[None, None] & visible[:, None, None, :]
        return torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device).masked_fill(
            ~allowed, torch.finfo(hidden.dtype).min
        )
    if not isinstance(mask, torch.Tensor):
        raise NotImplementedError(
            f"rows keeping different numbers of entries need eager, sdpa or flash attention, not a "
            f"{type(mask).__name__} mask; use an int budget or attn_implementation='sdpa'"
        )
    visible = layer.visibility(mask.shape[-1], query_length).to(mask.device)
    if mask.ndim == 2:
        return mask * visible.to(mask.dtype)
    visible = visible[:, None, None, :]
    if mask.shape[0] != visible.shape[0]:
        mask = mask.expand(visible.shape[0], *mask.shape[1:])
    if mask.dtype == torch.bool:
        return mask & visible
    return mask.masked_fill(~visible, torch.finfo(mask.dtype).min)
