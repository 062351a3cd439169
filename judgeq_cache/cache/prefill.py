"""SharedPrefill: prefill a prompt once, then compress copies of it with many scorers and budgets.

Comparisons (the evaluation harness, notebooks) run every method on the same sample; the prefill is
the expensive part and is identical for all of them, so it runs once. The prompt queries that
``"window"`` and ``"all"`` scorers need are captured during that one prefill; ``"appended"``
scorers (Judge Q, oracle) run their short pass on each copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel

from ..devices import input_device
from ..scorers import Scorer, make_scorer
from .eviction_cache import EvictionCache


class SharedPrefill:
    """One prefill of ``input_ids`` whose KV and captured attention serve many :meth:`cache` calls.

    Parameters
    ----------
    model : PreTrainedModel
    input_ids : LongTensor ``[B, N]``
    attention_mask : Tensor ``[B, N]``, optional
    window_size : int or sequence of int
        Last-window sizes captured for window scorers (SnapKV/PyramidKV use 32); the last query
        alone (TOVA, Judge Q's hybrid score) is always captured too.
    all_queries : bool
        Also capture every prompt query's attention (for H2O; costs one extra attention computation).
    """

    @torch.no_grad()
    def __init__(
        self,
        model: PreTrainedModel,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        window_size: int | Sequence[int] = 32,
        all_queries: bool = True,
    ) -> None:
        device = input_device(model)
        input_ids = input_ids.to(device)
        attention_mask = None if attention_mask is None else attention_mask.to(device)
        self.model = model
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        n = input_ids.shape[1]
        sizes = [window_size] if isinstance(window_size, int) else list(window_size)
        sizes.append(1)  # the last query, always: TOVA and Judge Q's hybrid score read it
        self.window_sizes = sorted({min(w, n) for w in sizes})
        self._base = EvictionCache(model, 1, "random", auto_compress=False)
        mask = None if attention_mask is None else attention_mask.bool()
        windows = {w: self._base.query_capture(slice(n - w, None), n - w, n, mask) for w in self.window_sizes}
        everything = self._base.query_capture(slice(None), 0, n, mask)
        with contextlib.ExitStack() as stack:
            for capture in windows.values():
                stack.enter_context(capture)
            if all_queries:
                stack.enter_context(everything)
            self.outputs = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                use_cache=True,
                logits_to_keep=1,  # only the last position's logits are ever read
                **{self._base.cache_kwarg: self._base},
            )
        self.attention = {
            "window": {w: c.scores for w, c in windows.items()},
            "all": everything.scores if all_queries else None,
        }

    @property
    def prompt_length(self) -> int:
        return self._base.prompt_length

    @property
    def logits(self) -> torch.Tensor:
        """The prefill's last-position logits (``[B, 1, vocab]``): the first answer token."""
        return self.outputs.logits

    def full_cache(self) -> EvictionCache:
        """An uncompressed copy (the full-cache baseline)."""
        cache = self._base.fork()
        cache.skip_compression()  # nothing to evict: later forwards append
        return cache

    @torch.no_grad()
    def cache(self, budget: int | float, scorer: str | Scorer = "snapkv", **options: Any) -> EvictionCache:
        """A compressed copy of the prefilled cache, ready for decoding."""
        scorer = make_scorer(scorer, **options)
        cache = self._base.fork(budget, scorer)
        attention = window = None
        need = scorer.queries()
        if need.last:
            size = min(need.last, self.prompt_length)
            if size not in self.attention["window"]:
                raise ValueError(
                    f"{scorer.name} uses a {scorer.window_size}-query window but this prefill captured "
                    f"{self.window_sizes}; pass window_size={scorer.window_size} to SharedPrefill"
                )
            window = self.attention["window"][size]
        if need.every_query:
            attention = self.attention["all"]
            if attention is None:
                raise ValueError(
                    f"{scorer.name} needs every prompt query: create SharedPrefill(all_queries=True)"
                )
        elif need.prompt:
            attention, window = window, None
        cache.compress(attention, window)
        return cache

    def stack(self, caches: Sequence[EvictionCache]) -> EvictionCache:
        """One cache whose batch rows are ``caches``' rows, in order, to decode several compressed
        copies of this prefill in one :meth:`generate` call (rows never interact: the result equals
        decoding each alone). Every cache must store the same number of entries in each layer (same
        budget; PyramidKV's layer budgets differ from the uniform ones)."""
        return EvictionCache.stack(caches)

    @torch.no_grad()
    def generate(self, cache: EvictionCache, max_new_tokens: int, **generate_kwargs: Any) -> torch.Tensor:
        """Greedy answer ``[B, T]`` from a cache made by :meth:`cache`, :meth:`full_cache` or
        :meth:`stack` (``[R * B, T]``, row blocks in the stacked order).

        The first token comes from the shared prefill's logits; ``generate`` then sees the prompt plus
        that token, slices off what the cache already holds (its logical length) and decodes on.
        """
        rows = cache.prefill_mask.shape[0] // self.input_ids.shape[0]
        first = self.logits[:, -1:].argmax(-1).repeat(rows, 1)
        if max_new_tokens <= 1:
            return first
        ids = torch.cat([self.input_ids.repeat(rows, 1), first], dim=1)
        if self.attention_mask is None:
            mask = torch.ones_like(ids)
        else:
            mask = torch.cat([self.attention_mask.repeat(rows, 1), torch.ones_like(first)], 1)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens - 1,
            do_sample=False,
            **{cache.cache_kwarg: cache},
            **generate_kwargs,
        )
        return out[:, self.input_ids.shape[1] :]
