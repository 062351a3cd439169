"""Batch-row operations of an :class:`~judgeq_cache.cache.EvictionCache` beyond its layers.

``generate`` reorders rows for beam search (``reorder_cache``) and repeats or selects them
(``batch_repeat_interleave``, ``batch_select_indices``). The layers handle their own keys, values and
filler masks; :class:`BatchRows` applies the same operation to the per-row state the cache keeps
beside them: the kept positions, the prompt record and the queries accumulated for decode-time
eviction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

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
