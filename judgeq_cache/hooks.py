"""Model hooks that let a cache act when a forward it takes part in starts and ends.

Installed once per model and shared by every cache: they do nothing unless the forward's cache
(found among the call's arguments, whatever transformers calls it) asks for them, so the model
behaves exactly as before for everyone else. Each hook tells the cache which module called it, so a
cache built for another model instance can refuse the call.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, runtime_checkable

from torch import nn

from .capture import attention_modules

_INSTALLED = "_judgeq_cache_hooks"
_INSTALLED_TOP = "_judgeq_cache_top_hooks"


@runtime_checkable
class ForwardAware(Protocol):
    """A cache that wants to know when a forward of its model starts and ends."""

    def _on_model_call(self, module: nn.Module, kwargs: dict[str, Any] | None) -> None: ...

    def _on_forward_start(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None: ...

    def _on_forward_end(self, module: nn.Module, succeeded: bool, output: Any) -> None: ...

    def _fix_attention_mask(self, module: nn.Module, kwargs: dict[str, Any], hidden: Any) -> None: ...


def find_cache(args: tuple, kwargs: dict[str, Any]) -> ForwardAware | None:
    """The forward-aware cache passed to a call (``past_key_values=`` or ``cache=`` or positionally)."""
    for value in (*kwargs.values(), *args):
        if isinstance(value, ForwardAware):
            return value
    return None


def install(model: nn.Module, base_model: nn.Module) -> None:
    """Attach the hooks to ``model`` (the head, e.g. ``*ForCausalLM``), ``base_model`` (the decoder) and
    its attention modules, once per module."""
    if model is not base_model and not getattr(model, _INSTALLED_TOP, False):
        _install_top(model)
    if getattr(base_model, _INSTALLED, False):
        return

    def on_start(module, args, kwargs):
        cache = find_cache(args, kwargs)
        if cache is not None:
            cache._on_forward_start(module, args, kwargs)

    def on_end(module, args, kwargs, output):
        cache = find_cache(args, kwargs)
        if cache is not None:
            cache._on_forward_end(module, succeeded=output is not None, output=output)

    base_model.register_forward_pre_hook(on_start, with_kwargs=True)
    base_model.register_forward_hook(on_end, with_kwargs=True, always_call=True)

    for attention in attention_modules(base_model):

        def fix_mask(module, args, kwargs):
            cache = find_cache(args, kwargs)
            if cache is not None:
                cache._fix_attention_mask(
                    module, kwargs, kwargs.get("hidden_states", args[0] if args else None)
                )
            return args, kwargs

        attention.register_forward_pre_hook(fix_mask, with_kwargs=True)
    setattr(base_model, _INSTALLED, True)


def _install_top(model: nn.Module) -> None:
    """Let the cache read the head's own arguments (``logits_to_keep``) before the decoder runs."""

    def on_call(module, args, kwargs):
        cache = find_cache(args, kwargs)
        if cache is not None:
            cache._on_model_call(module, kwargs)

    def on_return(module, args, kwargs, output):
        cache = find_cache(args, kwargs)
        if cache is not None:
            cache._on_model_call(module, None)

    model.register_forward_pre_hook(on_call, with_kwargs=True)
    model.register_forward_hook(on_return, with_kwargs=True, always_call=True)
    setattr(model, _INSTALLED_TOP, True)


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
