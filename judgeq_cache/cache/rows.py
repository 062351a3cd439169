"""Batch-row operations of an :class:`~judgeq_cache.cache.EvictionCache` beyond its layers.

``generate`` reorders rows for beam search (``reorder_cache``) and repeats or selects them
(``batch_repeat_interleave``, ``batch_select_indices``). The layers handle their own keys, values and
filler masks; :func:`map_rows` applies the same operation to the per-row state the cache keeps
beside them (:class:`~.state.PromptState`): the kept positions, the prompt record and the queries accumulated for decode-time
eviction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .layers import stack_layers
from .prefill_record import PrefillRecord
from .state import PromptState


def batch_rows(state: PromptState) -> int | None:
    """Rows of the prompt a cache holds (None before the prefill)."""
    return None if state.prefill is None else state.prefill.key_mask.shape[0]


def map_rows(state: PromptState, fn: Callable[[torch.Tensor], torch.Tensor], rows: int | None) -> None:
    """Apply a batch-row operation (beam reorder, repeat, select) to the per-row state that lives
    beside the layers: kept positions, the prompt record, queries accumulated for decode eviction.
    ``rows``: the batch size before the operation."""

    def apply(t: Any) -> Any:
        return fn(t) if t is not None and t.ndim and t.shape[0] == rows else t

    state.kept_indices = {layer: apply(kept) for layer, kept in state.kept_indices.items()}
    queries = state.decode_queries
    queries.sums = {layer: apply(s) for layer, s in queries.sums.items()}
    if state.prefill is not None:
        record = state.prefill
        state.prefill = PrefillRecord(record.length, apply(record.key_mask), apply(record.position_ids))


def stack_caches(caches: Sequence[Any], make: Callable[[Any], Any]) -> Any:
    """:meth:`~judgeq_cache.cache.EvictionCache.stack`: one compressed cache (``make(first)``, empty)
    holding ``caches``' rows in order, after checking that they can share a batch."""
    if not caches:
        raise ValueError("stack needs at least one cache")
    first = caches[0]
    if any(c.binding.model is not first.binding.model for c in caches):
        raise ValueError("caches built for different model instances cannot share a batch")
    if not all(c.is_compressed for c in caches):
        raise ValueError("stack needs compressed caches (compress() or skip_compression() them first)")
    if any(c.triggers for c in caches):
        raise ValueError(
            "stack cannot carry decode-time eviction (each row would need its own scorer and "
            "positions); decode caches built with decode_every one by one"
        )
    lengths = {tuple(layer.keys.shape[-2] for layer in c.layers) for c in caches}
    if len(lengths) > 1:
        raise ValueError(
            "caches store different numbers of entries per layer and cannot share a batch; "
            "group them by budget and layer budgets first"
        )
    merged = make(first)
    merged.layers = [stack_layers([c.layers[i] for c in caches]) for i in range(len(first.layers))]
    prefill = PrefillRecord.concatenate([c.state.prefill for c in caches])
    merged.state = PromptState(prompt_length=first.prompt_length, prefill=prefill, compressed=True)
    return merged
