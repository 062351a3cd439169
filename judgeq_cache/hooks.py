"""Model hooks that let a cache act when a forward it takes part in starts and ends.

Installed once per model and shared by every cache: they do nothing unless the forward's cache
(found among the call's arguments, whatever transformers calls it) asks for them, so the model
behaves exactly as before for everyone else.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import nn

from .capture import attention_modules

_INSTALLED = "_judgeq_cache_hooks"


@runtime_checkable
class ForwardAware(Protocol):
    """A cache that wants to know when a forward of its model starts and ends."""

    def _on_forward_start(self, args: tuple, kwargs: dict[str, Any]) -> None: ...

    def _on_forward_end(self, succeeded: bool) -> None: ...

    def _fix_attention_mask(self, layer_idx: int, kwargs: dict[str, Any], query_length: int) -> None: ...


def find_cache(args: tuple, kwargs: dict[str, Any]) -> ForwardAware | None:
    """The forward-aware cache passed to a call (``past_key_values=`` or ``cache=`` or positionally)."""
    for value in (*kwargs.values(), *args):
        if isinstance(value, ForwardAware):
            return value
    return None


def install(base_model: nn.Module) -> None:
    """Attach the hooks to ``base_model`` (the decoder) and its attention modules, once."""
    if getattr(base_model, _INSTALLED, False):
        return

    def on_start(module, args, kwargs):
        cache = find_cache(args, kwargs)
        if cache is not None:
            cache._on_forward_start(args, kwargs)

    def on_end(module, args, kwargs, output):
        cache = find_cache(args, kwargs)
        if cache is not None:
            cache._on_forward_end(succeeded=output is not None)

    base_model.register_forward_pre_hook(on_start, with_kwargs=True)
    base_model.register_forward_hook(on_end, with_kwargs=True, always_call=True)

    for attention in attention_modules(base_model):

        def fix_mask(module, args, kwargs):
            cache = find_cache(args, kwargs)
            if cache is not None:
                hidden = kwargs.get("hidden_states", args[0] if args else None)
                cache._fix_attention_mask(module.layer_idx, kwargs, hidden.shape[-2])
            return args, kwargs

        attention.register_forward_pre_hook(fix_mask, with_kwargs=True)
    setattr(base_model, _INSTALLED, True)
