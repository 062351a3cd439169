"""What an :class:`~judgeq_cache.cache.EvictionCache` records from its prefill forward.

The first forward into an empty cache is the prefill (in a chunked prefill, every chunk: the record
grows with each, see :meth:`PrefillRecord.extend`). The cache keeps a :class:`PrefillRecord` of the
prompt (its length, which keys are padding, its positions) and, in assisted decoding and prompt
lookup, the :class:`Drafts`: candidate tokens that ``generate`` put into the same forward after the
prompt. Only the prompt is compressed; the drafts are set aside before scoring and run again over
the compressed prompt afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .layers import EvictableLayer


@dataclass
class PrefillRecord:
    """The prompt of the prefill forward."""

    length: int
    key_mask: torch.Tensor  # [B, N] bool, False = padding
    position_ids: torch.Tensor | None

    def next_positions(self, count: int, seen: int | None = None) -> torch.Tensor:
        """Positions of ``count`` tokens appended after the ``seen`` tokens of the cache (default: right
        after the prompt; tokens after the prompt continue its positions one by one), ``[B, count]``."""
        after = 0 if seen is None else seen - self.length
        steps = torch.arange(after + 1, after + count + 1, device=self.key_mask.device)
        if self.position_ids is not None:
            last = self.position_ids[:, -1:].to(self.key_mask.device)
            return (last + steps).expand(self.key_mask.shape[0], -1)
        return (self.length - 1 + steps).expand(self.key_mask.shape[0], -1)

    def forward_key_mask(self, drafts: Drafts | None) -> torch.Tensor:
        """``[B, N + c]`` bool over the keys of the prefill forward: the prompt's, then the drafts'."""
        if drafts is None:
            return self.key_mask
        if drafts.attention_mask is not None:
            return drafts.attention_mask.bool().to(self.key_mask.device)
        return torch.cat([self.key_mask, self.key_mask.new_ones((self.key_mask.shape[0], drafts.count))], -1)

    def extend(self, chunk: PrefillRecord) -> PrefillRecord:
        """This prompt followed by the next prefill ``chunk`` (a chunked prefill)."""
        positions = None
        if self.position_ids is not None and chunk.position_ids is not None:
            positions = torch.cat([self.position_ids, chunk.position_ids.to(self.position_ids.device)], -1)
        mask = torch.cat([self.key_mask, chunk.key_mask.to(self.key_mask.device)], -1)
        return PrefillRecord(self.length + chunk.length, mask, positions)

    @staticmethod
    def concatenate(records: Sequence[PrefillRecord]) -> PrefillRecord:
        """The records of prompts of one length stacked along the batch (caches merged row-wise)."""
        if len({r.length for r in records}) > 1:
            raise ValueError("prompts of different lengths cannot share a batch")
        positions = [r.position_ids for r in records]
        return PrefillRecord(
            records[0].length,
            torch.cat([r.key_mask for r in records]),
            None if any(p is None for p in positions) else torch.cat(positions),
        )


@dataclass
class Drafts:
    """Tokens that followed the prompt in the prefill forward: the candidate tokens of assisted decoding
    and prompt lookup, which ``generate`` verifies in the same forward as the prompt and may crop."""

    inputs: dict[str, torch.Tensor]  # {"input_ids": [B, c]} or {"inputs_embeds": [B, c, H]}
    attention_mask: torch.Tensor | None  # [B, N + c]
    position_ids: torch.Tensor | None  # [..., c]

    @property
    def count(self) -> int:
        return next(iter(self.inputs.values())).shape[1]


def draft_count(logits_to_keep: Any, total: int) -> int:
    """Tokens at the end of the prefill forward that are not prompt: ``generate`` asks for the logits
    of the last prompt token and of each candidate (``logits_to_keep = candidates + 1``) when it
    verifies assisted-decoding or prompt-lookup candidates in the prefill forward."""
    keep = logits_to_keep
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 < keep <= total:
        return 0
    return keep - 1


def read_prefill_call(
    args: tuple, kwargs: dict[str, Any], logits_to_keep: Any
) -> tuple[PrefillRecord, Drafts | None]:
    """The prompt and drafts of a prefill forward called with ``args``/``kwargs`` (the decoder's
    arguments); ``logits_to_keep``: the head's, when the running ``generate`` call verifies candidates
    (:mod:`judgeq_cache.generate_call`), else None (a direct call's ``logits_to_keep`` only selects
    logits: every token is prompt)."""
    tokens, key = kwargs.get("input_ids"), "input_ids"
    if tokens is None:
        tokens, key = kwargs.get("inputs_embeds"), "inputs_embeds"
    if tokens is None and args:
        tokens, key = args[0], "input_ids"
    if tokens is None or tokens.shape[1] == 0:
        raise ValueError(
            "empty prompt: the first forward into an EvictionCache must carry at least one token"
        )
    bsz, total = tokens.shape[:2]
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.ndim != 2:
        raise ValueError(
            "EvictionCache needs a 2-D attention_mask [batch, tokens] (or None) for the prefill; "
            f"got a {mask.ndim}-D mask"
        )
    if mask is not None and mask.shape[-1] != total:
        raise ValueError(f"attention_mask covers {mask.shape[-1]} tokens but the prompt has {total}")
    key_mask = mask.bool() if mask is not None else torch.ones((bsz, total), dtype=torch.bool)
    key_mask = key_mask.to(tokens.device)
    positions = kwargs.get("position_ids")
    length = total - draft_count(logits_to_keep, total)
    record = PrefillRecord(
        length, key_mask[:, :length], None if positions is None else positions[..., :length]
    )
    if length == total:
        return record, None
    drafts = Drafts({key: tokens[:, length:]}, mask, None if positions is None else positions[..., length:])
    return record, drafts


def read_tokens_call(args: tuple, kwargs: dict[str, Any]) -> PrefillRecord:
    """The tokens a forward into a non-empty cache adds (a later prefill chunk, a decode step): their
    count, padding mask (the last columns of a 2-D ``attention_mask`` that covers them, else all real)
    and positions."""
    tokens = kwargs.get("input_ids")
    if tokens is None:
        tokens = kwargs.get("inputs_embeds")
    if tokens is None and args:
        tokens = args[0]
    if tokens is None:
        raise ValueError("a forward into an EvictionCache must carry input_ids or inputs_embeds")
    bsz, count = tokens.shape[:2]
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.ndim == 2 and mask.shape[-1] >= count:
        key_mask = mask[:, mask.shape[-1] - count :].bool().to(tokens.device)
    else:
        key_mask = torch.ones((bsz, count), dtype=torch.bool, device=tokens.device)
    positions = kwargs.get("position_ids")
    return PrefillRecord(count, key_mask, None if positions is None else positions[..., -count:])


def set_aside_drafts(layers: list[Any], record: PrefillRecord, drafts: Drafts | None) -> Drafts | None:
    """Drop the drafts' entries (tokens after the prompt) from every layer before eviction, so the
    scoring sees the prompt alone; :func:`rerun_drafts` recomputes them over the compressed prompt.
    Returns the drafts set aside (None when only the prompt is stored)."""
    evictable = next(layer for layer in layers if isinstance(layer, EvictableLayer))
    extra = evictable.stored_length - record.length
    if extra == 0:
        return None
    if drafts is None or drafts.count != extra:
        raise RuntimeError(
            f"compress() found {extra} tokens stored after the {record.length}-token prompt: call "
            "compress() right after the prefill, before feeding more tokens"
        )
    for layer in layers:
        if isinstance(layer, EvictableLayer):
            layer.truncate(record.length)
        elif getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys, layer.values = layer.keys[..., :-extra, :], layer.values[..., :-extra, :]
            if hasattr(layer, "cumulative_length"):
                layer.cumulative_length -= extra
    return drafts


def rerun_drafts(base_model: nn.Module, cache_kwarg: str, cache: Any, drafts: Drafts) -> torch.Tensor:
    """Feed the drafts again, now over the compressed prompt, exactly as ``generate`` feeds candidates
    after the prefill; their entries are stored again (and can be cropped). Returns their hidden
    states ``[B, c, hidden]``."""
    kwargs = {**drafts.inputs, "attention_mask": drafts.attention_mask, "use_cache": True}
    if drafts.position_ids is not None:
        kwargs["position_ids"] = drafts.position_ids
    out = base_model(**kwargs, **{cache_kwarg: cache})
    return out[0] if isinstance(out, tuple) else out.last_hidden_state


def load_layers(
    layers: list[Any],
    keys_values: list[tuple[torch.Tensor, torch.Tensor]],
    key_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
) -> PrefillRecord:
    """Store an already computed prompt KV (one ``(keys, values)`` ``[B, Hkv, N, D]`` per layer) in
    empty ``layers``; returns its record (``key_mask`` None: no padding)."""
    if len(keys_values) != len(layers):
        raise ValueError(f"got KV for {len(keys_values)} layers, the model has {len(layers)}")
    bsz, _, n, _ = keys_values[0][0].shape
    if key_mask is None:
        key_mask = torch.ones((bsz, n), dtype=torch.bool, device=keys_values[0][0].device)
    for layer, (keys, values) in zip(layers, keys_values):
        layer.update(keys, values)
    return PrefillRecord(n, key_mask.bool(), position_ids)
