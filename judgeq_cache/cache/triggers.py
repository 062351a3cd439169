"""When an :class:`~judgeq_cache.cache.EvictionCache` evicts: the triggers beyond the one-shot prefill.

Every trigger feeds the same path (score the stored entries, :func:`~judgeq_cache.eviction.evict_layer`
selects, the layer compacts); this module only decides *when*:

- **the prefill** (the paper's one-shot eviction): the first forward into an empty cache, evicted when
  it returns;
- **prefill chunks**: a prefill that arrives in several forwards is evicted after each of them, so the
  cache never stores more than ``budget + chunk`` entries per KV head. A chunked prefill is recognised
  in two ways only, never guessed: ``generate(..., prefill_chunk_size=N)`` on a prompt longer than one
  chunk (the running ``generate`` call's options, recorded by :mod:`judgeq_cache.generate_call`;
  :class:`ChunkedPrefill` with the prompt's length),
  and forwards inside ``with cache.chunked_prefill():`` (a manual loop; the prefill ends with the
  block). Outside these, forwards after the prefill append (a question, a second turn).
- **after the prefill** (``decode_every=N``, or any :class:`~judgeq_cache.schedule.Trigger`): once the
  prefill is done, whenever one of the cache's triggers says so (:class:`~judgeq_cache.schedule.DecodeEvery`:
  every ``N`` tokens added to the cache).

:class:`EvictionTriggers` is the part of the cache that reacts to the forwards after the first one.
Scorers that read queries get them from the forward that triggers: the last window of a chunk's
queries; for decode steps, the queries of every token added since the last eviction, accumulated
(:class:`QueryScores`), since one decode forward holds a single query.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import eviction, generate_call
from .capture import AttentionCapture, QueryPlan
from .prefill_record import PrefillRecord, read_tokens_call
from .schedule import Trigger


@dataclass
class ChunkedPrefill:
    """A prefill arriving in several forwards. ``total``: the prompt's tokens (``generate`` knows
    them; the prefill ends with the forward that reaches them); None: a manual loop, which ends with
    the ``chunked_prefill()`` block."""

    total: int | None

    def ends_at(self, seen: int) -> bool:
        return self.total is not None and seen >= self.total


def generate_chunks(model: nn.Module, first_chunk: int) -> ChunkedPrefill | None:
    """The chunked prefill that the running ``generate(..., prefill_chunk_size=N)`` call of ``model`` is
    starting with a ``first_chunk``-token forward; None when no such call runs or the prompt fits in
    one chunk (an ordinary prefill)."""
    call = generate_call.current(model)
    if call is None or call.prefill_chunk_size is None:
        return None
    total = call.prompt_tokens
    return ChunkedPrefill(total) if total > first_chunk else None


@dataclass
class QueryScores:
    """The summed attention of every query added since the last eviction, per layer, over the stored
    entries (``[B, Hkv, stored]``; entries added later have seen fewer queries)."""

    sums: dict[int, torch.Tensor] = field(default_factory=dict)
    queries: int = 0

    def add(self, scores: dict[int, torch.Tensor], count: int) -> None:
        """Add the mean attention ``scores`` of ``count`` queries of one forward."""
        for layer, mean in scores.items():
            total = mean.detach() * count
            old = self.sums.get(layer)
            if old is not None:
                total[..., : old.shape[-1]] += old
            self.sums[layer] = total
        self.queries += count

    def mean(self) -> dict[int, torch.Tensor] | None:
        if not self.queries:
            return None
        return {layer: total / self.queries for layer, total in self.sums.items()}

    def clear(self) -> None:
        self.sums, self.queries = {}, 0


class EvictionTriggers:
    """Mixin of :class:`~judgeq_cache.compression.PromptCompression`: what a forward after the first
    one does (a prefill chunk, tokens added after the prefill) and the eviction each trigger starts,
    through the cache's one eviction path (``_evict_stored``)."""

    _chunks: ChunkedPrefill | None
    _manual_chunks: bool
    _triggers: list[Trigger]
    _decode_scores: QueryScores
    _decode_budgets: list[list[int]] | None
    _step: PrefillRecord | None
    _window: dict[int, torch.Tensor] | None

    def _start_step(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """A forward into a prefilled cache: a prefill chunk, or tokens added after the prefill (their
        queries are captured for decode-time eviction by scorers that read queries)."""
        step = read_tokens_call(args, kwargs)
        chunk = self._chunks is not None
        if chunk:
            self._step = step
            self._prefill = self._prefill.extend(step)
            self.prompt_length = self._prefill.length
        elif self._triggers:
            self._step = step
        else:
            return
        need = self.scorer.queries()
        if not need.prompt and not need.hybrid:
            return
        if chunk and not self.auto_compress and not need.hybrid:  # (a hybrid's later compress() needs it)
            return
        masks = {i: self._stored_mask(i, step.key_mask) for i in self._evictable}
        window = step.length
        if chunk and not need.every_query:
            window = min(need.last, step.length)
        plan = QueryPlan(slice(step.length - window, step.length), None, None, masks, self._layer_set())
        self._capture = AttentionCapture(self._attention_modules, plan).__enter__()

    def _after_chunk(self, attention: dict[int, torch.Tensor] | None) -> None:
        """A prefill chunk returned: evict back to the budget; the prefill ends with its last chunk."""
        if self.auto_compress:
            start = time.perf_counter()
            with torch.no_grad():
                self._evict_stored(self._row_budgets(self._prefill), attention, self._window)
            self.compression_seconds += time.perf_counter() - start
        if self._chunks.ends_at(self._prefill.length):
            self._finish_chunks()

    def _after_decode_step(self, step: PrefillRecord, attention: dict[int, torch.Tensor] | None) -> None:
        """Tokens were added after the prefill: tell every trigger, evict when one of them says so."""
        if not self._triggers:
            return
        if attention is not None:
            self._decode_scores.add(attention, step.length)
        due = [trigger.after_forward(step.length) for trigger in self._triggers]  # each one counts
        if any(due):
            with torch.no_grad():
                self._evict_decode()

    def _finish_chunks(self) -> None:
        """The last chunk of a chunked prefill was evicted: the prefill is compressed (with
        ``auto_compress=False`` it stays uncompressed, all chunks stored, for :meth:`compress`)."""
        self._chunks = None
        if self.auto_compress:
            self._compressed = True
            self._drafts = None

    @contextlib.contextmanager
    def chunked_prefill(self) -> Iterator[Any]:
        """Every forward into this empty cache inside the block is one chunk of the prefill: after
        each, the cache scores what it stores plus the chunk and evicts back to the budget (stored
        entries never exceed budget + chunk). The prefill ends with the block; later forwards append
        (a question, ``generate``).

        In a left-padded batch, a row gets the tokens it gets alone chunked at the same positions:
        its first chunk holds ``chunk - padding % chunk`` real tokens, so it equals the row run alone
        with the same chunk size only when its padding is a multiple of the chunk (same for
        ``generate(..., prefill_chunk_size=N)``)."""
        if self._prefill is not None or self.get_seq_length() > 0:
            raise RuntimeError("chunked_prefill() needs an empty cache (call reset() first)")
        if not self.auto_compress:
            raise ValueError("chunked_prefill() evicts after each chunk; it needs auto_compress=True")
        self._manual_chunks = True
        try:
            yield self
        finally:
            self._manual_chunks = False
            if self._chunks is not None:
                self._finish_chunks()

    def _evict_decode(self) -> None:
        """Decode-time eviction: back to the budget, scored by the queries added since the last one,
        the last ``decode_recent_tokens`` entries protected (:meth:`~judgeq_cache.scorers.Scorer.for_decoding`)."""
        if self._decode_budgets is None:
            self._decode_budgets = eviction.decode_budgets(
                self.scorer, self.budget, self._prefill, len(self._evictable)
            )
        queries = self._decode_scores.mean()
        self._decode_scores.clear()
        start = time.perf_counter()
        scorer = self.scorer.for_decoding()
        if scorer.queries().appended:  # a hybrid scorer mixes them into its own
            self._evict_stored(self._decode_budgets, None, queries, scorer=scorer)
        else:
            self._evict_stored(self._decode_budgets, queries, scorer=scorer)
        self.compression_seconds += time.perf_counter() - start
