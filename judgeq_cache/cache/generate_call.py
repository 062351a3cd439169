"""The options of a running ``generate`` call that ``generate`` does not pass to the model's forward.

``generate`` hands the model only tensors (``input_ids``, ``attention_mask``, ``logits_to_keep``, ...):
nothing says that a forward is one chunk of a ``prefill_chunk_size`` prefill, or that its last
``logits_to_keep - 1`` tokens are assisted-decoding / prompt-lookup candidates. While an
:class:`~judgeq_cache.cache.EvictionCache` is open on a model, :func:`wrap_generate` puts a thin
wrapper on that model instance's ``generate`` (removed again by ``cache.close()``): for the duration of
each call it records the call's :class:`GenerateCall` in a :class:`contextvars.ContextVar` of the
calling thread, which the cache reads. This is the one, explicit path for those options: a forward
outside a wrapped ``generate`` (a direct ``model(...)`` call, another thread) sees no call, and its
``logits_to_keep`` only selects logits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class GenerateCall:
    """What the cache needs to know about a running ``generate`` call of ``model``.

    Attributes
    ----------
    model : nn.Module
        The model whose ``generate`` runs.
    prefill_chunk_size : int or None
        ``generate``'s chunked prefill: the prompt arrives in forwards of this many tokens.
    prompt_tokens : int
        Tokens of ``input_ids`` given to ``generate`` (0 when unknown, e.g. ``inputs_embeds`` only).
    candidates : bool
        The call verifies candidate tokens (``assistant_model``, ``prompt_lookup_num_tokens``,
        ``assistant_early_exit``): a forward's last ``logits_to_keep - 1`` tokens are candidates.
    """

    model: nn.Module
    prefill_chunk_size: int | None
    prompt_tokens: int
    candidates: bool


_CALL: ContextVar[GenerateCall | None] = ContextVar("judgeq_cache_generate_call", default=None)


def current(model: nn.Module) -> GenerateCall | None:
    """The ``generate`` call of ``model`` running in this thread / task (None: a direct forward)."""
    call = _CALL.get()
    return call if call is not None and call.model is model else None


def read_call(model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> GenerateCall:
    """The :class:`GenerateCall` of ``model.generate(*args, **kwargs)`` (keyword arguments override the
    ``generation_config`` passed, which overrides the model's, as in ``generate``)."""
    config = kwargs.get("generation_config") or getattr(model, "generation_config", None)

    def option(name: str) -> Any:
        return kwargs[name] if name in kwargs else getattr(config, name, None)

    ids = args[0] if args else kwargs.get("inputs", kwargs.get("input_ids"))
    tokens = int(ids.shape[-1]) if hasattr(ids, "shape") and len(ids.shape) >= 1 else 0
    candidates = (
        kwargs.get("assistant_model") is not None
        or option("prompt_lookup_num_tokens") is not None
        or option("assistant_early_exit") is not None
    )
    return GenerateCall(model, option("prefill_chunk_size"), tokens, candidates)


def wrap_generate(model: nn.Module) -> Callable[[], None]:
    """Put the recording wrapper on ``model``'s ``generate`` (an attribute of this instance only);
    returns the function that takes it off again."""
    had_own = "generate" in vars(model)
    original = model.generate

    @functools.wraps(original)
    def generate(*args: Any, **kwargs: Any) -> Any:
        token = _CALL.set(read_call(model, args, kwargs))
        try:
            return original(*args, **kwargs)
        finally:
            _CALL.reset(token)

    generate.__judgeq_cache_wrapper__ = True
    object.__setattr__(model, "generate", generate)

    def unwrap() -> None:
        if vars(model).get("generate") is generate:
            if had_own:
                object.__setattr__(model, "generate", original)
            else:
                del model.__dict__["generate"]

    return unwrap
