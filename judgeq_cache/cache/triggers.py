"""When an :class:`~judgeq_cache.cache.EvictionCache` evicts: the triggers beyond the one-shot prefill.

Every trigger feeds the same path (score the stored entries, :func:`~judgeq_cache.eviction.evict_layer`
selects, the layer compacts); this module only decides *when*:

- **the prefill** (:class:`OneShot`, the paper's one-shot eviction): the first forward into an empty
  cache, evicted when it returns;
- **prefill chunks** (:class:`ChunkedPrefill`): a prefill that arrives in several forwards is evicted
  after each of them, so the
  cache never stores more than ``budget + chunk`` entries per KV head. A chunked prefill is recognised
  in two ways only, never guessed: ``generate(..., prefill_chunk_size=N)`` on a prompt longer than one
  chunk (the running ``generate`` call's options, recorded by :mod:`judgeq_cache.generate_call`;
  :class:`ChunkedPrefill` with the prompt's length),
  and forwards inside ``with cache.chunked_prefill():`` (a manual loop; the prefill ends with the
  block). Outside these, forwards after the prefill append (a question, a second turn).
- **after the prefill** (``decode_every=N``, or any :class:`~judgeq_cache.schedule.Trigger`): once the
  prefill is done, whenever one of the cache's triggers says so (:class:`~judgeq_cache.schedule.DecodeEvery`:
  every ``N`` tokens added to the cache).

The prefill's trigger (:class:`PrefillTrigger`: :class:`OneShot` or :class:`ChunkedPrefill`) is
chosen when the prefill starts and kept in the cache's state until the prompt is compressed; the
functions below are what the cache does on the forwards after the first one (:mod:`.forwards` calls
them).
Scorers that read queries get them from the forward that triggers: the last window of a chunk's
queries; for decode steps, the queries of every token added since the last eviction, accumulated
(:class:`~.state.QueryScores`), since one decode forward holds a single query.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from . import compression, eviction, generate_call
from .capture import AttentionCapture, QueryPlan
from .prefill_record import PrefillRecord, read_tokens_call

if TYPE_CHECKING:
    from .eviction_cache import EvictionCache


class PrefillTrigger(ABC):
    """When the prefill is evicted: told after each forward of the prefill, with the attention of
    the queries captured from it (None for scorers that read none or run their own pass)."""

    #: Whether the prefill arrives in several forwards (each one evicted, then the next appended).
    chunked: ClassVar[bool] = False

    @abstractmethod
    def after_forward(
        self, cache: EvictionCache, attention: dict[int, torch.Tensor] | None
    ) -> torch.Tensor | None:
        """A forward of the prefill returned; returns the drafts' hidden states when assisted decoding
        put candidates into it and they were run again over the compressed prompt."""


class OneShot(PrefillTrigger):
    """The paper's schedule: the prefill is one forward, compressed when it returns (unless
    ``auto_compress=False``: then by ``cache.compress()``)."""

    def after_forward(
        self, cache: EvictionCache, attention: dict[int, torch.Tensor] | None
    ) -> torch.Tensor | None:
        if not cache.auto_compress:
            return None
        with torch.no_grad():
            return compression.compress(cache, attention)


@dataclass
class ChunkedPrefill(PrefillTrigger):
    """A prefill arriving in several forwards, evicted after each. ``total``: the prompt's tokens
    (``generate`` knows them; the prefill ends with the forward that reaches them); None: a manual
    loop, which ends with the ``chunked_prefill()`` block."""

    total: int | None
    chunked: ClassVar[bool] = True

    def ends_at(self, seen: int) -> bool:
        return self.total is not None and seen >= self.total

    def after_forward(
        self, cache: EvictionCache, attention: dict[int, torch.Tensor] | None
    ) -> torch.Tensor | None:
        after_chunk(cache, attention)
        return None


def generate_chunks(model: nn.Module, first_chunk: int) -> ChunkedPrefill | None:
    """The chunked prefill that the running ``generate(..., prefill_chunk_size=N)`` call of ``model`` is
    starting with a ``first_chunk``-token forward; None when no such call runs or the prompt fits in
    one chunk (an ordinary prefill)."""
    call = generate_call.current(model)
    if call is None or call.prefill_chunk_size is None:
        return None
    total = call.prompt_tokens
    return ChunkedPrefill(total) if total > first_chunk else None


def start_step(cache: EvictionCache, args: tuple, kwargs: dict[str, Any]) -> None:
    """A forward into a prefilled cache: a prefill chunk, or tokens added after the prefill (their
    queries are captured for decode-time eviction by scorers that read queries)."""
    state, forward = cache.state, cache.forward
    step = read_tokens_call(args, kwargs)
    chunk = state.chunking
    if chunk:
        forward.step = step
        state.prefill = state.prefill.extend(step)
        state.prompt_length = state.prefill.length
    elif cache.triggers:
        forward.step = step
    else:
        return
    need = cache.scorer.queries()
    if not need.prompt and not need.hybrid:
        return
    if chunk and not cache.auto_compress and not need.hybrid:  # (a hybrid's later compress() needs it)
        return
    evictable = cache.binding.evictable
    masks = {i: compression.stored_mask(cache, i, step.key_mask) for i in evictable}
    window = step.length
    if chunk and not need.every_query:
        window = min(need.last, step.length)
    plan = QueryPlan(slice(step.length - window, step.length), None, None, masks, frozenset(evictable))
    forward.capture = AttentionCapture(cache.binding.attention_modules, plan).__enter__()


def after_chunk(cache: EvictionCache, attention: dict[int, torch.Tensor] | None) -> None:
    """A prefill chunk returned: evict back to the budget; the prefill ends with its last chunk."""
    state = cache.state
    if cache.auto_compress:
        start = time.perf_counter()
        with torch.no_grad():
            budgets = compression.row_budgets(cache, state.prefill)
            compression.evict_stored(cache, budgets, attention, state.last_queries)
        state.compression_seconds += time.perf_counter() - start
    if state.prefill_trigger.ends_at(state.prefill.length):
        finish_chunks(cache)


def after_decode_step(
    cache: EvictionCache, step: PrefillRecord, attention: dict[int, torch.Tensor] | None
) -> None:
    """Tokens were added after the prefill: tell every trigger, evict when one of them says so."""
    if not cache.triggers:
        return
    if attention is not None:
        cache.state.decode_queries.add(attention, step.length)
    due = [trigger.after_forward(step.length) for trigger in cache.triggers]  # each one counts
    if any(due):
        with torch.no_grad():
            evict_decode(cache)


def finish_chunks(cache: EvictionCache) -> None:
    """The last chunk of a chunked prefill was evicted: the prefill is compressed (with
    ``auto_compress=False`` it stays uncompressed, all chunks stored, for ``compress()``)."""
    state = cache.state
    state.prefill_trigger = None
    if cache.auto_compress:
        state.compressed = True
        state.drafts = None


@contextlib.contextmanager
def chunked_prefill(cache: EvictionCache) -> Iterator[Any]:
    """``EvictionCache.chunked_prefill``: every forward into the empty cache inside the block is one
    chunk of the prefill: after each, the cache scores what it stores plus the chunk and evicts back
    to the budget. The prefill ends with the block; later forwards append (a question, ``generate``).

    In a left-padded batch, a row gets the tokens it gets alone chunked at the same positions: its
    first chunk holds ``chunk - padding % chunk`` real tokens, so it equals the row run alone with
    the same chunk size only when its padding is a multiple of the chunk (same for
    ``generate(..., prefill_chunk_size=N)``)."""
    if cache.state.prefill is not None or cache.get_seq_length() > 0:
        raise RuntimeError("chunked_prefill() needs an empty cache (call reset() first)")
    if not cache.auto_compress:
        raise ValueError("chunked_prefill() evicts after each chunk; it needs auto_compress=True")
    cache.forward.manual_chunks = True
    try:
        yield cache
    finally:
        cache.forward.manual_chunks = False
        if cache.state.chunking:
            finish_chunks(cache)


def evict_decode(cache: EvictionCache) -> None:
    """Decode-time eviction: back to the budget, scored by the queries added since the last one,
    the last ``decode_recent_tokens`` entries protected (:meth:`~judgeq_cache.scorers.Scorer.for_decoding`)."""
    state = cache.state
    if state.decode_budgets is None:
        state.decode_budgets = eviction.decode_budgets(
            cache.scorer, cache.budget, state.prefill, len(cache.binding.evictable)
        )
    queries = state.decode_queries.mean()
    state.decode_queries.clear()
    start = time.perf_counter()
    scorer = cache.scorer.for_decoding()
    if scorer.queries().appended:  # a hybrid scorer mixes them into its own
        compression.evict_stored(cache, state.decode_budgets, None, queries, scorer=scorer)
    else:
        compression.evict_stored(cache, state.decode_budgets, queries, scorer=scorer)
    state.compression_seconds += time.perf_counter() - start
