"""Refusals: the calls in which an :class:`~judgeq_cache.cache.EvictionCache` cannot evict exactly.

- ``generate`` modes checked before anything runs: assisted decoding / prompt lookup together with a
  chunked prefill or with decode-time eviction (rejected candidates are cropped, and entries evicted
  meanwhile cannot come back), and assisted decoding on sliding-window layers that cannot roll back;
- a forward of another model instance than the one the cache was built for.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn


def check_generate_mode(
    model: nn.Module,
    layers: list[Any],
    drafts: int,
    *,
    chunked: bool = False,
    decode_every: int | None = None,
) -> None:
    """Refuse, before anything runs, the ``generate`` modes in which eviction cannot be exact.

    ``layers`` are the cache's layers; ``drafts`` counts the candidate tokens in the prefill forward;
    ``chunked``: the prefill arrives in several forwards; ``decode_every``: decode-time eviction.
    """
    candidates = drafts > 0 or ((chunked or decode_every is not None) and uses_candidates(model))
    if candidates and chunked:
        raise NotImplementedError(
            "EvictionCache cannot evict during a chunked prefill in assisted decoding / prompt lookup; pass "
            "prefill_chunk_size=None, or generate without assistant_model / prompt_lookup_num_tokens"
        )
    if candidates and decode_every is not None:
        raise NotImplementedError(
            "decode-time eviction (decode_every) cannot run with assisted decoding / prompt lookup: generate "
            "crops rejected candidates, and entries evicted meanwhile cannot come back; use decode_every=None "
            "or generate without assistant_model / prompt_lookup_num_tokens"
        )
    if drafts and any(
        getattr(layer, "is_sliding", False) and not getattr(layer, "record_past", False) for layer in layers
    ):
        raise NotImplementedError(
            "assisted decoding / prompt lookup with eviction on a model with sliding-window layers needs "
            "a transformers version whose sliding layers record their past (activate_past_recording, "
            "transformers >= 5.20); upgrade transformers or generate without assistant_model / "
            "prompt_lookup_num_tokens"
        )


def uses_candidates(model: nn.Module, max_depth: int = 64) -> bool:
    """Whether a running ``generate`` call of ``model`` verifies candidate tokens (``assistant_model`` or
    ``prompt_lookup_num_tokens``)."""
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return False
        local = frame.f_locals
        if local.get("self") is model:
            config = local.get("generation_config")
            if local.get("assistant_model") is not None or local.get("candidate_generator") is not None:
                return True
            if getattr(config, "prompt_lookup_num_tokens", None) is not None:
                return True
        frame = frame.f_back
    return False


def running_generate_call(model: nn.Module, max_depth: int = 64) -> dict[str, Any] | None:
    """The local variables of the ``generate`` prefill step of ``model`` that is running right now.

    ``generate`` does not pass its ``GenerationConfig`` to the model's forward, so options that change
    what the cache sees (``prefill_chunk_size``) can only be read from the caller's frame: the first
    frame up the stack that belongs to a method of ``model`` and holds a ``generation_config``.
    Returns ``None`` for direct ``model(...)`` calls.
    """
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        local = frame.f_locals
        if local.get("self") is model and "generation_config" in local:
            return dict(local)
        frame = frame.f_back
    return None


def another_model_error() -> RuntimeError:
    return RuntimeError(
        "this EvictionCache was built for another model instance (a forward of a different model reached "
        "it); create the cache with the model you call: EvictionCache(model, ...)"
    )
