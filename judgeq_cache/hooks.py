"""Model hooks that let a cache act when a forward it takes part in starts and ends.

Installed once per model and shared by every cache. They are inert for every forward whose cache is
not forward-aware (a plain ``DynamicCache``, no cache at all, any other ``Cache``): they find no cache
among the call's arguments, return ``None`` and leave the arguments (the attention mask included)
untouched, so the model behaves exactly as a never-hooked one. Each hook tells the cache which module
called it, so a cache built for another model instance can refuse the call.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import nn
from transformers.cache_utils import Cache

from .capture import attention_modules

_INSTALLED = "_judgeq_cache_hooks"
_INSTALLED_TOP = "_judgeq_cache_top_hooks"


@runtime_checkable
class ForwardAware(Protocol):
    """A cache that wants to know when a forward of its model starts and ends (the hook protocol)."""

    def on_model_call(self, module: nn.Module, kwargs: dict[str, Any] | None) -> None: ...

    def on_forward_start(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None: ...

    def on_forward_end(self, module: nn.Module, succeeded: bool, output: Any) -> None: ...

    def on_attention_call(self, module: nn.Module, kwargs: dict[str, Any], hidden: Any) -> None: ...


def find_cache(args: tuple, kwargs: dict[str, Any]) -> ForwardAware | None:
    """The forward-aware cache passed to a call (``past_key_values=`` or ``cache=`` or positionally);
    None for any other call. Only ``Cache`` objects are inspected further."""
    for value in (*kwargs.values(), *args):
        if isinstance(value, Cache) and isinstance(value, ForwardAware):
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
            cache.on_forward_start(module, args, kwargs)

    def on_end(module, args, kwargs, output):
        cache = find_cache(args, kwargs)
        if cache is not None:
            cache.on_forward_end(module, succeeded=output is not None, output=output)

    base_model.register_forward_pre_hook(on_start, with_kwargs=True)
    base_model.register_forward_hook(on_end, with_kwargs=True, always_call=True)

    def on_attention(module, args, kwargs):
        cache = find_cache(args, kwargs)
        if cache is None:
            return None  # not our forward: the arguments stay as they are
        cache.on_attention_call(module, kwargs, kwargs.get("hidden_states", args[0] if args else None))
        return args, kwargs

    for attention in attention_modules(base_model):
        attention.register_forward_pre_hook(on_attention, with_kwargs=True)
    setattr(base_model, _INSTALLED, True)


def _install_top(model: nn.Module) -> None:
    """Let the cache read the head's own arguments (``logits_to_keep``) before the decoder runs."""

    def on_call(module, args, kwargs):
        cache = find_cache(args, kwargs)
        if cache is not None:
            cache.on_model_call(module, kwargs)

    def on_return(module, args, kwargs, output):
        cache = find_cache(args, kwargs)
        if cache is not None:
            cache.on_model_call(module, None)

    model.register_forward_pre_hook(on_call, with_kwargs=True)
    model.register_forward_hook(on_return, with_kwargs=True, always_call=True)
    setattr(model, _INSTALLED_TOP, True)
