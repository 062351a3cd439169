"""EvictableLayer: a DynamicLayer that stores fewer entries than the tokens it has seen; and the
operations on any cache layer that an EvictionCache needs (peek, copy, stack rows)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer


def query_length(query: int | torch.Tensor) -> int:
    """transformers <=5.3 passes ``cache_position`` to ``get_mask_sizes``, later versions the length."""
    return query if isinstance(query, int) else int(query.shape[0])


def _tokens_to_remove(logical: int, length: int) -> int:
    """Tokens a ``crop(length)`` removes from a layer that has seen ``logical`` tokens."""
    target = logical + length if length <= 0 else min(length, logical)
    return max(0, logical - target)


class EvictableLayer(DynamicLayer):
    """A full-attention cache layer whose prompt entries can be pruned in place.

    The layer keeps two lengths apart, as ``DynamicSlidingWindowLayer`` does:

    - the *logical* length (tokens seen), returned by :meth:`get_seq_length`, which drives
      positions and generate's input slicing;
    - the *stored* length (``keys.shape[-2]``), reported to the mask code through
      :meth:`get_mask_sizes` as ``(stored + query_length, logical - stored)``: stored entries map to
      the last logical positions, so every kept entry lies in the past of the next query.

    Rows of a batch may keep different numbers of entries (a kept fraction of each row's own length):
    they are stored with a common width, and :attr:`visible` marks the leading filler slots of the
    rows that keep fewer. The cache masks those slots out of every attention call of this layer.
    """

    def __init__(self, reserve: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_evicted = 0
        self.compressed_length = 0
        #: Spare slots allocated after the prompt at prefill, so the scoring pass can attend over
        #: prompt + appended tokens without copying the prompt's KV (see :meth:`peek`).
        self.reserve = reserve
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        #: ``[B, compressed_length]`` bool, ``False`` on filler slots (None: every slot is a kept entry).
        self.visible: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.reserve and self.stored_length == 0:
            # Prefill: store the prompt at the front of buffers with `reserve` spare slots.
            self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            shape_k, shape_v = list(key_states.shape), list(value_states.shape)
            shape_k[-2] = shape_v[-2] = n + self.reserve
            keys, values = key_states.new_empty(shape_k), value_states.new_empty(shape_v)
            keys[..., :n, :], values[..., :n, :] = key_states, value_states
            self._buffers = (keys, values)
            self.keys, self.values = keys[..., :n, :], values[..., :n, :]
            return key_states, value_states
        return super().update(key_states, value_states, *args, **kwargs)

    def peek(self, key_states: torch.Tensor, value_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored + new entries for a pass that stores nothing (the scoring pass)."""
        n, m = self.stored_length, key_states.shape[-2]
        if self._buffers is not None and m <= self.reserve and not torch.is_grad_enabled():
            keys, values = self._buffers
            if keys.data_ptr() == self.keys.data_ptr():  # still the prefill's buffers
                keys[..., n : n + m, :], values[..., n : n + m, :] = key_states, value_states
                return keys[..., : n + m, :], values[..., : n + m, :]
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    @property
    def stored_length(self) -> int:
        if not self.is_initialized or self.keys is None or self.keys.numel() == 0:
            return 0
        return self.keys.shape[-2]

    def get_seq_length(self, *args, **kwargs) -> int:
        return self.stored_length + self.num_evicted

    def get_mask_sizes(self, query: int | torch.Tensor, *args, **kwargs) -> tuple[int, int]:
        return self.stored_length + query_length(query), self.num_evicted

    def keep(self, indices: torch.Tensor, compact, visible: torch.Tensor | None = None) -> None:
        """Keep only ``indices`` ``[B, H, k]`` (ascending) of the stored entries; free the rest.

        ``visible`` ``[B, k]`` (bool) marks filler slots (``False``) of rows that keep fewer than ``k``.
        """
        before = self.stored_length
        self.keys, self.values = compact(self.keys, self.values, indices)
        self._buffers = None
        self.num_evicted += before - self.stored_length
        self.compressed_length = self.stored_length
        self.visible = None if visible is None or bool(visible.all()) else visible.to(self.keys.device)

    def truncate(self, length: int) -> None:
        """Drop every stored entry after the first ``length`` (tokens that followed the prompt)."""
        self.keys = self.keys[..., :length, :]
        self.values = self.values[..., :length, :]

    def visibility(self, num_keys: int, query_length: int) -> torch.Tensor | None:
        """``[B, num_keys]`` bool over the key columns of an attention call whose ``query_length`` new
        tokens are not stored yet, ``False`` on filler slots; None when there are none.

        Columns are ``[kept slots | entries added after compression | new tokens]``, right-aligned.
        """
        if self.visible is None:
            return None
        rows = self.visible.shape[0]
        after = self.stored_length - self.compressed_length + query_length
        full = torch.cat([self.visible, self.visible.new_ones((rows, after))], dim=-1)
        if num_keys > full.shape[-1]:
            full = torch.cat([full.new_ones((rows, num_keys - full.shape[-1])), full], dim=-1)
        return full[:, full.shape[-1] - num_keys :]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        if self.visible is not None:
            self.visible = self.visible.index_select(0, beam_idx.to(self.visible.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.visible is not None:
            self.visible = self.visible.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.visible is not None:
            self.visible = self.visible[indices]

    def crop(self, length: int) -> None:
        """Drop the newest entries.

        ``length <= 0`` removes ``-length`` tokens (transformers >= 5.20 meaning; ``crop(0)`` removes
        nothing), ``length > 0`` keeps the first ``length`` logical tokens (the older meaning). Evicted
        prompt entries cannot come back, so cropping into the compressed prompt is an error.
        """
        remove = _tokens_to_remove(self.get_seq_length(), length)
        if remove == 0 or not self.is_initialized:
            return
        stored = self.stored_length
        if remove > stored - self.compressed_length:
            raise ValueError(
                f"cannot crop {remove} tokens: the cache was compressed and only the "
                f"{stored - self.compressed_length} tokens added after compression can be removed (in "
                "assisted decoding or prompt lookup this means the cache could not tell the candidates from "
                "the prompt: build the cache before calling generate, not inline in its arguments, so that "
                "the call is recorded; and the model's forward must accept logits_to_keep)"
            )
        keep = stored - remove  # computed once: keys and values are cut to the same length
        self.keys = self.keys[..., :keep, :]
        self.values = self.values[..., :keep, :]

    def reset(self) -> None:
        super().reset()
        self._buffers = None
        self.visible = None
        self.num_evicted = 0
        self.compressed_length = 0


def peek_layer(layer: Any, key_states: torch.Tensor, value_states: torch.Tensor):
    """Stored + new entries of a layer for the scoring pass (which stores nothing); a sliding layer
    that records its past (assisted decoding) shows only its window, as its mask does."""
    if isinstance(layer, EvictableLayer):
        return layer.peek(key_states, value_states)
    keys, values = layer.keys, layer.values
    window = getattr(layer, "sliding_window", None)
    if getattr(layer, "is_sliding", False) and window and keys.shape[-2] > window - 1:
        keys, values = keys[..., -(window - 1) :, :], values[..., -(window - 1) :, :]
    return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)


def copy_layer(layer: Any) -> Any:
    """A copy of ``layer`` (any cache layer) whose keys and values are copied too."""
    twin = copy.copy(layer)
    if getattr(twin, "keys", None) is not None:
        twin.keys, twin.values = twin.keys.clone(), twin.values.clone()
    return twin


def stack_layers(layers: Sequence[Any]) -> Any:
    """One layer whose batch rows are ``layers``' rows, in order (each must store as many entries);
    an :class:`EvictableLayer` carries the filler slots of rows keeping fewer entries along."""
    stacked = copy.copy(layers[0])
    stacked.keys = torch.cat([layer.keys for layer in layers])
    stacked.values = torch.cat([layer.values for layer in layers])
    if isinstance(stacked, EvictableLayer):
        stacked.visible = _stacked_visibility(layers)
    return stacked


def _stacked_visibility(layers: Sequence[EvictableLayer]) -> torch.Tensor | None:
    """:attr:`EvictableLayer.visible` of ``layers`` stacked along the batch."""
    if all(layer.visible is None for layer in layers):
        return None
    return torch.cat(
        [
            torch.ones(
                layer.keys.shape[0], layer.compressed_length, dtype=torch.bool, device=layer.keys.device
            )
            if layer.visible is None
            else layer.visible
            for layer in layers
        ]
    )
