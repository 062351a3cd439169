"""Batch-row operations of an :class:`~judgeq_cache.cache.EvictionCache` beyond its layers.

``generate`` reorders rows for beam search (``reorder_cache``) and repeats or selects them
(``batch_repeat_interleave``, ``batch_select_indices``). The layers handle their own keys, values and
filler masks; :class:`BatchRows` applies the same operation to the per-row state the cache keeps
beside them: the kept positions, the prompt record and the queries accumulated for decode-time
eviction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .layers import stack_layers
from .prefill_record import PrefillRecord
from .triggers import QueryScores


class BatchRows:
    """Mixin of :class:`~judgeq_cache.cache.EvictionCache` (before ``DynamicCache`` in its bases)."""

    kept_indices: dict[int, torch.Tensor]
    _prefill: PrefillRecord | None
    _decode_scores: QueryScores

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._map_rows(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        rows = self._rows()
        super().batch_repeat_interleave(repeats)
        self._map_rows(lambda t: t.repeat_interleave(repeats, dim=0), rows)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._map_rows(lambda t: t[indices.to(t.device)])

    def _rows(self) -> int | None:
        return None if self._prefill is None else self._prefill.key_mask.shape[0]

    def _map_rows(self, fn: Callable[[torch.Tensor], torch.Tensor], rows: int | None = None) -> None:
        """Apply a batch-row operation (beam reorder, repeat, select) to the per-row state that lives
        beside the layers: kept positions, the prompt record, queries accumulated for decode eviction."""
        rows = self._rows() if rows is None else rows

        def apply(t: Any) -> Any:
            return fn(t) if t is not None and t.ndim and t.shape[0] == rows else t

        self.kept_indices = {layer: apply(kept) for layer, kept in self.kept_indices.items()}
        self._decode_scores.sums = {layer: apply(s) for layer, s in self._decode_scores.sums.items()}
        if self._prefill is not None:
            record = self._prefill
            self._prefill = PrefillRecord(record.length, apply(record.key_mask), apply(record.position_ids))


def stack_caches(caches: Sequence[Any], make: Callable[[Any], Any]) -> Any:
    """:meth:`~judgeq_cache.cache.EvictionCache.stack`: one compressed cache (``make(first)``, empty)
    holding ``caches``' rows in order, after checking that they can share a batch."""
    if not caches:
        raise ValueError("stack needs at least one cache")
    first = caches[0]
    if any(c._model is not first._model for c in caches):
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
    merged._prefill = PrefillRecord.concatenate([c._prefill for c in caches])
    merged.prompt_length = first.prompt_length
    merged._compressed = True
    return merged
