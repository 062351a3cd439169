"""Copies of an :class:`~judgeq_cache.cache.EvictionCache`: ``copy.deepcopy``, ``fork``, ``stack``
and adopting a computed prefill. Each copy takes its own layers and builds its
:class:`~.state.PromptState` from the original's; the :class:`~.state.ModelBinding` and the scorer
are shared."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..scorers import Scorer
from . import hooks
from .budget import Budget
from .layers import copy_layer
from .prefill_record import load_layers
from .rows import stack_caches
from .state import PromptState
from .triggers import OneShot

if TYPE_CHECKING:
    from .eviction_cache import EvictionCache


def deep_copy(cache: EvictionCache, memo: dict[int, Any]) -> EvictionCache:
    """``copy.deepcopy(cache)``: its own layers and state, the same model and scorer (hooked again
    unless the cache is closed)."""
    for shared in (cache.binding, cache.scorer):
        memo[id(shared)] = shared
    twin = type(cache).__new__(type(cache))
    memo[id(cache)] = twin
    for name, value in vars(cache).items():
        object.__setattr__(twin, name, copy.deepcopy(value, memo))
    if not cache.closed:
        hooks.attach(twin, cache.binding.model, cache.binding.base_model)
    return twin


def load_prefill(
    cache: EvictionCache,
    keys_values: list[tuple[torch.Tensor, torch.Tensor]],
    key_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
) -> None:
    """``cache.load_prefill``: adopt a computed prompt KV as the empty cache's prefill."""
    if cache.state.prefill is not None or cache.get_seq_length() > 0:
        raise RuntimeError("load_prefill needs an empty cache")
    prefill = load_layers(cache.layers, keys_values, key_mask, position_ids)
    cache.state = PromptState(prompt_length=prefill.length, prefill=prefill, prefill_trigger=OneShot())


def fork(
    cache: EvictionCache,
    make: type[EvictionCache],
    budget: int | float | Budget | None,
    scorer: str | Scorer | None,
    **scorer_options: Any,
) -> EvictionCache:
    """``cache.fork``: an uncompressed copy with another budget or scorer, or a branch of a compressed
    cache."""
    if cache.state.compressed and budget is None and scorer is None and not scorer_options:
        return copy.deepcopy(cache)
    if cache.state.compressed:
        raise RuntimeError(
            "fork needs a prefilled, not yet compressed cache to take another budget or scorer; "
            "fork() without arguments branches a compressed cache as it is"
        )
    cache.check_uncompressed_prefill("fork")
    twin = _empty_like(
        make,
        cache,
        cache.budget if budget is None else budget,
        cache.scorer if scorer is None else scorer,
        **scorer_options,
    )
    twin.layers = [copy_layer(layer) for layer in cache.layers]
    twin.state = cache.state.prefilled()
    return twin


def stack(caches: Sequence[EvictionCache], make: type[EvictionCache]) -> EvictionCache:
    """``EvictionCache.stack``: one compressed cache holding ``caches``' rows in order."""
    return stack_caches(caches, lambda first: _empty_like(make, first, first.budget, first.scorer))


def _empty_like(
    make: type[EvictionCache], cache: EvictionCache, budget: Any, scorer: Any, **scorer_options: Any
) -> EvictionCache:
    """An empty ``make(..., auto_compress=False)`` for ``cache``'s model (``make``: ``EvictionCache``)."""
    return make(cache.binding.model, budget, scorer, auto_compress=False, **scorer_options)
