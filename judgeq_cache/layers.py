"""EvictableLayer: a DynamicLayer that stores fewer entries than the tokens it has seen."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


def _query_length(query: int | torch.Tensor) -> int:
    """transformers <=5.3 passes ``cache_position`` to ``get_mask_sizes``, later versions the length."""
    return query if isinstance(query, int) else int(query.shape[0])


class EvictableLayer(DynamicLayer):
    """A full-attention cache layer whose prompt entries can be pruned in place.

    The layer keeps two lengths apart, as ``DynamicSlidingWindowLayer`` does:

    - the *logical* length (tokens seen), returned by :meth:`get_seq_length`, which drives
      positions and generate's input slicing;
    - the *stored* length (``keys.shape[-2]``), reported to the mask code through
      :meth:`get_mask_sizes` as ``(stored + query_length, logical - stored)``: stored entries map to
      the last logical positions, so every kept entry lies in the past of the next query.
    """

    def __init__(self, reserve: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_evicted = 0
        self.compressed_length = 0
        #: Spare slots allocated after the prompt at prefill, so the scoring pass can attend over
        #: prompt + appended tokens without copying the prompt's KV (see :meth:`peek`).
        self.reserve = reserve
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

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
        return self.stored_length + _query_length(query), self.num_evicted

    def keep(self, indices: torch.Tensor, compact) -> None:
        """Keep only ``indices`` ``[B, H, k]`` (ascending) of the stored entries; free the rest."""
        before = self.stored_length
        self.keys, self.values = compact(self.keys, self.values, indices)
        self._buffers = None
        self.num_evicted += before - self.stored_length
        self.compressed_length = self.stored_length

    def crop(self, length: int) -> None:
        """Drop newest entries: ``length < 0`` removes ``-length`` tokens (transformers >=5.20 meaning),
        ``length >= 0`` keeps the first ``length`` logical tokens (older meaning). Evicted prompt
        entries cannot come back, so cropping into the compressed prompt is an error."""
        logical = self.get_seq_length()
        target = logical + length if length < 0 else min(length, logical)
        remove = logical - target
        if remove <= 0 or not self.is_initialized:
            return
        if remove > self.stored_length - self.compressed_length:
            raise ValueError(
                f"cannot crop {remove} tokens: the cache was compressed and only tokens added after "
                "compression can be removed"
            )
        self.keys = self.keys[..., : self.stored_length - remove, :]
        self.values = self.values[..., : self.stored_length - remove, :]

    def reset(self) -> None:
        super().reset()
        self._buffers = None
        self.num_evicted = 0
        self.compressed_length = 0
