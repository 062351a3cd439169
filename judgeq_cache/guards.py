"""Refusals: the calls in which an :class:`~judgeq_cache.cache.EvictionCache` cannot evict exactly.

- ``generate`` modes checked before anything runs: a chunked prefill longer than one chunk (only the
  first chunk would be compressed) and assisted decoding on sliding-window layers that cannot roll
  back;
- a forward of another model instance than the one the cache was built for.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn


def check_generate_mode(model: nn.Module, layers: list[Any], drafts: int) -> None:
    """Refuse, before anything runs, the ``generate`` modes in which eviction cannot be exact.

    ``layers`` are the cache's layers; ``drafts`` counts the candidate tokens in the prefill forward.
    """
    call = running_generate_call(model)
    config = None if call is None else call.get("generation_config")
    chunk = getattr(config, "prefill_chunk_size", None)
    ids = None if call is None else call.get("input_ids")
    total = ids.shape[-1] if isinstance(ids, torch.Tensor) else 0
    if chunk is not None and total > chunk:
        raise NotImplementedError(
            f"EvictionCache cannot compress a chunked prefill yet (generate(..., prefill_chunk_size={chunk}) "
            f"on a {total}-token prompt): only the first chunk would be compressed. Pass "
            "prefill_chunk_size=None, or a budget of at least the prompt length to keep everything"
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
