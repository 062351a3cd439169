"""When an :class:`~judgeq_cache.cache.EvictionCache` evicts: the triggers beyond the one-shot prefill.

Every trigger feeds the same path (score the stored entries, :func:`~judgeq_cache.eviction.evict_layer`
selects, the layer compacts); this module only decides *when*:

- **the prefill** (the paper's one-shot eviction): the first forward into an empty cache, evicted when
  it returns;
- **prefill chunks**: a prefill that arrives in several forwards is evicted after each of them, so the
  cache never stores more than ``budget + chunk`` entries per KV head. A chunked prefill is recognised
  in two ways only, never guessed: ``generate(..., prefill_chunk_size=N)`` on a prompt longer than one
  chunk (read from the running ``generate`` call, :class:`ChunkedPrefill` with the prompt's length),
  and forwards inside ``with cache.chunked_prefill():`` (a manual loop; the prefill ends with the
  block). Outside these, forwards after the prefill append (a question, a second turn).
- **decode steps** (``decode_every=N``): once the prefill is done, every ``N`` tokens added to the
  cache (:class:`DecodeSchedule`).

Scorers that read queries get them from the forward that triggers: the last window of a chunk's
queries; for decode steps, the queries of every token added since the last eviction, accumulated
(:class:`QueryScores`), since one decode forward holds a single query.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .guards import running_generate_call


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
    call = running_generate_call(model)
    config = None if call is None else call.get("generation_config")
    if getattr(config, "prefill_chunk_size", None) is None:
        return None
    ids = call.get("input_ids")
    total = ids.shape[-1] if isinstance(ids, torch.Tensor) else 0
    return ChunkedPrefill(total) if total > first_chunk else None


@dataclass
class DecodeSchedule:
    """``decode_every=N``: evict once ``N`` tokens were added since the last eviction (or since the
    prefill)."""

    every: int
    since: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(
                f"decode_every must be a positive int (tokens between evictions), got {self.every!r}"
            )

    def add(self, tokens: int) -> bool:
        """Count ``tokens`` added; True when an eviction is due (the count starts again)."""
        self.since += tokens
        if self.since < self.every:
            return False
        self.since = 0
        return True


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

    def reorder(self, beam_idx: torch.Tensor) -> None:
        self.sums = {k: v.index_select(0, beam_idx.to(v.device)) for k, v in self.sums.items()}

    def clear(self) -> None:
        self.sums, self.queries = {}, 0
