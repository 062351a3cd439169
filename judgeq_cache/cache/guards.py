"""Refusals: the calls in which an :class:`~judgeq_cache.cache.EvictionCache` cannot evict exactly.

- ``generate`` modes checked before anything runs: assisted decoding / prompt lookup together with a
  chunked prefill or with decode-time eviction (rejected candidates are cropped, and entries evicted
  meanwhile cannot come back), and assisted decoding on sliding-window layers that cannot roll back;
- a forward of another model instance than the one the cache was built for.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from . import generate_call


def check_generate_mode(
    model: nn.Module,
    layers: list[Any],
    drafts: int,
    *,
    chunked: bool = False,
    evicts_later: bool = False,
) -> None:
    """Refuse, before anything runs, the ``generate`` modes in which eviction cannot be exact.

    ``layers`` are the cache's layers; ``drafts`` counts the candidate tokens in the prefill forward;
    ``chunked``: the prefill arrives in several forwards; ``evicts_later``: decode-time eviction (the
    cache has triggers, e.g. ``decode_every``).
    """
    candidates = drafts > 0 or ((chunked or evicts_later) and uses_candidates(model))
    if candidates and chunked:
        raise NotImplementedError(
            "EvictionCache cannot evict during a chunked prefill in assisted decoding / prompt lookup; pass "
            "prefill_chunk_size=None, or generate without assistant_model / prompt_lookup_num_tokens"
        )
    if candidates and evicts_later:
        raise NotImplementedError(
            "decode-time eviction (decode_every) cannot run with assisted decoding / prompt lookup: generate "
            "crops rejected candidates, and entries evicted meanwhile cannot come back; use decode_every=None "
            "or generate without assistant_model / prompt_lookup_num_tokens"
        )
    # Candidates may arrive in the prefill forward (transformers >= 5.20) or only in later forwards
    # (before): either way generate crops them, which sliding layers can do only if they record the past.
    if (drafts or uses_candidates(model)) and any(
        getattr(layer, "is_sliding", False) and not getattr(layer, "record_past", False) for layer in layers
    ):
        raise NotImplementedError(
            "assisted decoding / prompt lookup with eviction on a model with sliding-window layers needs "
            "a transformers version whose sliding layers record their past (activate_past_recording, "
            "transformers >= 5.20); upgrade transformers or generate without assistant_model / "
            "prompt_lookup_num_tokens"
        )


def uses_candidates(model: nn.Module) -> bool:
    """Whether a running ``generate`` call of ``model`` verifies candidate tokens (``assistant_model``,
    ``prompt_lookup_num_tokens``, ``assistant_early_exit``), as recorded by
    :mod:`judgeq_cache.generate_call`."""
    call = generate_call.current(model)
    return call is not None and call.candidates


def another_model_error() -> RuntimeError:
    return RuntimeError(
        "this EvictionCache was built for another model instance (a forward of a different model reached "
        "it); create the cache with the model you call: EvictionCache(model, ...)"
    )


def closed_error() -> RuntimeError:
    return RuntimeError(
        "this EvictionCache was closed (its hooks are removed from the model); create a new cache"
    )
