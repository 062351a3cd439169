"""Eviction: how many entries each row keeps, which ones (the scorer's selection), and the compaction.

One path serves every trigger (the prefill, each chunk of a chunked prefill, decode steps): the
candidates are the entries a layer *stores* right now (kept entries, then those added since), with
:func:`stored_key_mask` marking padding and filler slots; :func:`evict_layer` selects among them.

The budget applies to each row's *real* length (left padding excluded). Rows keeping the same count
share one :meth:`~judgeq_cache.scorers.Scorer.select`; rows keeping different counts are selected one
by one and stored with the widest row's count (see :meth:`~judgeq_cache.layers.EvictableLayer.keep`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .. import kernels
from ..scorers import LayerInputs, Scorer
from .budget import Budget
from .layers import EvictableLayer
from .prefill_record import PrefillRecord


def row_budgets(scorer: Scorer, budget: Budget, record: PrefillRecord, num_layers: int) -> list[list[int]]:
    """Entries kept per KV head, ``[layer][row]``, for ``num_layers`` evictable layers."""
    real = record.key_mask.sum(-1).tolist()
    per_row = [scorer.layer_budgets(budget, max(1, int(r)), num_layers) for r in real]
    return [[min(k, record.length) for k in layer] for layer in zip(*per_row)]


def decode_budgets(scorer: Scorer, budget: Budget, record: PrefillRecord, num_layers: int) -> list[list[int]]:
    """Entries kept per KV head by decode-time eviction, ``[layer][row]``: an ``int`` budget as it is
    (not clipped to the prompt), a kept fraction of each row's real prompt length."""
    real = record.key_mask.sum(-1).tolist()
    unclipped = 1 << 40  # an int budget is not clipped to a prompt length
    lengths = [max(1, int(r)) if isinstance(budget.value, float) else unclipped for r in real]
    per_row = [scorer.layer_budgets(budget, n, num_layers) for n in lengths]
    return [list(layer) for layer in zip(*per_row)]


def stored_key_mask(layer: EvictableLayer, record: PrefillRecord) -> torch.Tensor:
    """``[B, stored]`` bool over the entries ``layer`` stores now, ``False`` on padding and filler slots:
    its kept slots (``layer.visible``), then the entries added since, which are the last logical
    tokens (padding only where they fall inside the prompt ``record``)."""
    rows, device = record.key_mask.shape[0], record.key_mask.device
    kept = layer.compressed_length
    head = (
        torch.ones((rows, kept), dtype=torch.bool, device=device) if layer.visible is None else layer.visible
    )
    added = layer.stored_length - kept
    start = layer.get_seq_length() - added
    prompt = record.key_mask[:, start : start + added]
    after = torch.ones((rows, added - prompt.shape[-1]), dtype=torch.bool, device=device)
    return torch.cat([head.to(device), prompt, after], dim=-1)


def stored_positions(layer: EvictableLayer, kept: torch.Tensor | None) -> torch.Tensor | None:
    """``[B, Hkv, stored]`` logical positions of the entries ``layer`` stores, given the positions of
    its kept slots (``kept``, None when it never evicted); None when they are unknown."""
    logical, stored = layer.get_seq_length(), layer.stored_length
    added = stored - layer.compressed_length
    if kept is None and layer.compressed_length:
        return None
    bsz, heads = layer.keys.shape[:2]
    tail = torch.arange(logical - added, logical, device=layer.keys.device).expand(bsz, heads, added)
    return tail if kept is None else torch.cat([kept.to(tail.device), tail], dim=-1)


def evicts(row_budgets: list[int], real_lengths: list[int], stored: int) -> bool:
    """Whether a layer keeping ``row_budgets`` entries per row drops anything: a row keeps fewer than
    its real tokens, or the stored width shrinks (padding dropped)."""
    return max(row_budgets) < stored or any(k < r for k, r in zip(row_budgets, real_lengths))


def any_evicts(budgets: list[list[int]], record: PrefillRecord) -> bool:
    """Whether any layer keeping ``budgets`` (``[layer][row]``) drops anything from the prompt."""
    real = record.key_mask.sum(-1).tolist()
    return any(evicts(b, real, record.length) for b in budgets)


def evict_layer(
    layer_idx: int,
    layer: EvictableLayer,
    row_budgets: list[int],
    scorer: Scorer,
    attention: torch.Tensor | None,
    key_mask: torch.Tensor,
    window_attention: torch.Tensor | None = None,
    *,
    module: nn.Module | None = None,
    hidden_states: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Keep ``row_budgets`` entries of each row of ``layer``, chosen by ``scorer`` from the layer's
    ``attention`` scores (if its queries were captured) and ``key_mask`` ``[B, N]`` over its stored
    entries (``False`` on padding and fillers); returns the kept slots ``[B, Hkv, max(row_budgets)]``,
    or None when the layer keeps everything. A row with no real entry keeps one masked slot."""
    key_mask = key_mask.to(layer.keys.device)  # layers may live on several devices
    if not evicts(row_budgets, key_mask.sum(-1).tolist(), layer.stored_length):
        return None
    inputs = LayerInputs(
        layer_idx=layer_idx,
        keys=layer.keys,
        values=layer.values,
        attention=attention,
        key_mask=key_mask,
        budget=max(row_budgets),
        window_attention=window_attention,
        module=module,
        hidden_states=hidden_states,
    )
    if len(set(row_budgets)) == 1:
        indices, visible = scorer.select(inputs), None
    else:
        indices, visible = select_rows(scorer, inputs, row_budgets)
    real = key_mask.gather(-1, indices[:, 0, :])  # a row without real entries can only pick padding
    layer.keep(indices, kernels.gather_kv, real if visible is None else visible & real)
    return indices


def select_rows(
    scorer: Scorer, inputs: LayerInputs, row_budgets: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows keeping different counts: each row's own top-k (the scorer's selection on that row
    alone), stored with the common width ``max(row_budgets)``; a row that keeps fewer fills its
    leading slots with copies of its first kept entry, marked ``False`` in the returned
    ``visible`` ``[B, width]`` and masked out of attention
    (:func:`~judgeq_cache.attention_masks.hide_fillers`)."""
    width = max(row_budgets)
    rows = []
    for b, budget in enumerate(row_budgets):
        row = dataclasses.replace(
            inputs,
            keys=inputs.keys[b : b + 1],
            values=inputs.values[b : b + 1],
            attention=None if inputs.attention is None else inputs.attention[b : b + 1],
            window_attention=None if inputs.window_attention is None else inputs.window_attention[b : b + 1],
            hidden_states=None if inputs.hidden_states is None else inputs.hidden_states[b : b + 1],
            key_mask=inputs.key_mask[b : b + 1],
            budget=budget,
        )
        idx = scorer.select(row)
        rows.append(torch.cat([idx[..., :1].expand(-1, -1, width - budget), idx], dim=-1))
    device = inputs.keys.device
    fill = torch.tensor([width - k for k in row_budgets], device=device)
    visible = torch.arange(width, device=device)[None, :] >= fill[:, None]
    return torch.cat(rows), visible
