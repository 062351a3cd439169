"""How an :class:`~judgeq_cache.cache.EvictionCache` evicts: the one path every trigger takes.

:func:`evict_stored` reads top to bottom: the entries each layer stores now → which layers must
shrink → the scorer's attention (captured, or the scoring pass run here for scorers with appended
tokens) → per layer: score, shared heads, protection, pooling and top-k (the scorer's
:meth:`~judgeq_cache.scorers.Scorer.select`) → gather and replace the layer's keys and values
(:func:`~.eviction.evict_layer`) → the kept positions. :func:`compress` runs it once on the prompt
after the prefill; :mod:`.triggers` runs it after each chunk and at decode time.
:func:`appended_scores` is the logits-free scoring pass (soft tokens, the oracle's future).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from ..scorers import Scorer
from . import eviction
from .capture import AttentionCapture, QueryPlan
from .prefill_record import PrefillRecord, rerun_drafts, set_aside_drafts

if TYPE_CHECKING:
    from .eviction_cache import EvictionCache

logger = logging.getLogger(__name__)


def row_budgets(cache: EvictionCache, prefill: PrefillRecord) -> list[list[int]]:
    """Entries kept per KV head, ``[layer][row]``: the budget applies to each row's real length."""
    return eviction.row_budgets(cache.scorer, cache.budget, prefill, len(cache.binding.evictable))


def stored_mask(cache: EvictionCache, layer_idx: int, new: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, stored (+ new)]`` bool over a layer's stored entries (and ``new`` tokens' mask)."""
    mask = eviction.stored_key_mask(cache.layers[layer_idx], cache.state.prefill)
    return mask if new is None else torch.cat([mask, new.to(mask.device)], dim=-1)


def compress(
    cache: EvictionCache,
    attention: dict[int, torch.Tensor] | None,
    window: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """Score the prefilled prompt and evict it to the budget (``EvictionCache.compress``); returns
    the drafts' hidden states recomputed over the compressed prompt (``[B, c, hidden]``) when the
    prefill forward carried candidate tokens, else None."""
    state = cache.state
    if state.prefill is None:
        raise RuntimeError("nothing to compress: run the prompt through the model with this cache first")
    if state.compressed:
        raise RuntimeError("this cache was already compressed")
    window = state.last_queries if window is None else window
    start = time.perf_counter()
    prefill = state.prefill
    budgets = row_budgets(cache, prefill)
    hidden = None
    if eviction.any_evicts(budgets, prefill):
        drafts = set_aside_drafts(cache.layers, prefill, state.drafts)
        evict_stored(cache, budgets, attention, window)
        state.compressed = True
        if drafts is not None:
            hidden = rerun_drafts(cache.binding.base_model, cache.binding.cache_kwarg, cache, drafts)
    state.compressed = True
    state.drafts = None
    state.prefill_trigger = None
    state.hidden_states = {}
    state.compression_seconds = time.perf_counter() - start
    logger.debug(
        "%s: kept %s of %d prompt entries per head in %d layers (%.1f ms)",
        cache.scorer.name,
        cache.budget,
        prefill.length,
        len(cache.binding.evictable),
        1e3 * state.compression_seconds,
    )
    return hidden


def appended_scores(
    cache: EvictionCache, inputs: dict[str, torch.Tensor], masks: dict[int, torch.Tensor]
) -> dict[int, torch.Tensor]:
    """Mean attention ``{layer: [B, Hkv, stored]}`` of ``inputs`` run right after what the cache
    stores now, over the stored entries (``masks``: ``{layer: [B, stored]}``, ``False`` on padding
    and fillers); nothing is stored and no logits are computed."""
    record, binding = cache.state.prefill, cache.binding
    count = next(iter(inputs.values())).shape[1]
    seen = cache.get_seq_length()
    ones = record.key_mask.new_ones((record.key_mask.shape[0], seen - record.length + count))
    logical_mask = torch.cat([record.key_mask, ones], dim=-1)  # what the model's mask code indexes
    key_masks = {i: torch.cat([m, ones[:, -count:].to(m.device)], dim=-1) for i, m in masks.items()}
    layers = frozenset(binding.evictable)
    plan = QueryPlan(slice(None), None, None, key_masks, layers, exclude_tail=count, fuse=True)
    capture = AttentionCapture(binding.attention_modules, plan)
    with cache.scoring_pass(), capture:
        binding.base_model(
            **inputs,
            attention_mask=logical_mask.long(),
            position_ids=record.next_positions(count, seen),
            use_cache=True,
            **{binding.cache_kwarg: cache},
        )
    missing = set(binding.evictable) - set(capture.scores)
    if missing:
        raise TypeError(
            f"no queries were captured for layers {sorted(missing)}: the model's attention does not go "
            "through transformers' AttentionInterface, so it cannot be scored"
        )
    return capture.scores


def evict_stored(
    cache: EvictionCache,
    budgets: list[list[int]],
    attention: dict[int, torch.Tensor] | None,
    window: dict[int, torch.Tensor] | None = None,
    scorer: Scorer | None = None,
) -> None:
    """The one eviction path of every trigger: each evictable layer keeps ``budgets`` (``[layer][row]``)
    of the entries it stores now, chosen by ``scorer`` (default: the cache's; ``attention``: captured
    scores over the stored entries; the scoring pass runs here for scorers with appended tokens;
    ``window``: the last queries' attention that hybrid scorers mix in)."""
    scorer = cache.scorer if scorer is None else scorer
    state, binding = cache.state, cache.binding
    masks = {i: stored_mask(cache, i) for i in binding.evictable}
    due = [
        (i, rows)
        for i, rows in zip(binding.evictable, budgets)
        if eviction.evicts(rows, masks[i].sum(-1).tolist(), cache.layers[i].stored_length)
    ]
    if not due:
        return
    need = scorer.queries()
    if attention is None and need.appended:
        rows = state.prefill.key_mask.shape[0]
        attention = appended_scores(cache, scorer.appended_inputs(rows, binding.base_model), masks)
    if attention is None and need.any:
        raise RuntimeError(
            f"scorer {scorer.name!r} needs the prompt's queries, which are captured during the "
            "prefill forward; with auto_compress=False pass them to compress(attention=...)"
        )
    for layer_idx, rows in due:
        layer = cache.layers[layer_idx]
        positions = eviction.stored_positions(layer, state.kept_indices.get(layer_idx))
        hidden = state.hidden_states.get(layer_idx)
        if hidden is not None and hidden.shape[1] != layer.stored_length:
            hidden = hidden[:, : layer.stored_length] if not state.compressed else None
        kept = eviction.evict_layer(
            layer_idx,
            layer,
            rows,
            scorer,
            None if attention is None else attention.get(layer_idx),
            masks[layer_idx],
            None if window is None else window.get(layer_idx),
            module=binding.attention_by_layer.get(layer_idx),
            hidden_states=hidden,
        )
        if kept is None:
            continue
        if positions is None:  # a stacked cache: the positions of its kept slots are not known
            state.kept_indices.pop(layer_idx, None)
        else:
            state.kept_indices[layer_idx] = positions.gather(-1, kept.to(positions.device))
