"""Model hooks that let a cache act when a forward it takes part in starts and ends.

Installed on a model by the first open cache built for it and shared by every open cache of that
model; removed, every one of them (and the ``generate`` wrapper of
:mod:`judgeq_cache.generate_call`), when the last of those caches is closed (:func:`detach`, called by
``cache.close()``). They are inert for every forward whose cache is not forward-aware (a plain
``DynamicCache``, no cache at all, any other ``Cache``): they find no cache among the call's
arguments, return ``None`` and leave the arguments (the attention mask included) untouched, so the
model behaves exactly as a never-hooked one. Each hook tells the cache which module called it, so a
cache built for another model instance can refuse the call.

The attention hooks also point an attention module, for the duration of one call, at the capturing
attention function of :mod:`judgeq_cache.capture` when a capture active in the calling thread scores
that module: the module's ``config`` is replaced by a read-only view whose ``_attn_implementation``
names the capturing function, and the original is put back when the call returns. The model's own
config (and so its mask code) is never changed, and another thread that runs the module meanwhile
reaches the capturing function with no capture of its own, which then runs the original function
exactly.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import nn
from transformers.cache_utils import Cache

from .capture import active_capture, attention_modules, capture_name
from .generate_call import wrap_generate

#: The attribute of the decoder (base model) that holds its :class:`_Hooks` while hooks are installed.
_ATTR = "_judgeq_cache_hooks"
_LOCK = threading.Lock()
#: Attention modules pointed at the capturing function by the calls running in this thread / task.
_POINTED: ContextVar[frozenset[int]] = ContextVar("judgeq_cache_pointed", default=frozenset())


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


@dataclass
class _Hooks:
    """What is installed on one model: the hook handles, the ``generate`` unwrappers, the open caches."""

    handles: list[Any] = field(default_factory=list)
    heads: dict[int, Callable[[], None]] = field(default_factory=dict)
    caches: weakref.WeakSet = field(default_factory=weakref.WeakSet)
    pointed: dict[int, list[Any]] = field(default_factory=dict)  # id(module) -> [original config, calls]


def attach(cache: Any, model: nn.Module, base_model: nn.Module) -> None:
    """Register ``cache`` as an open cache of ``model`` (the head, e.g. ``*ForCausalLM``) and
    ``base_model`` (the decoder), installing the hooks if it is the first."""
    with _LOCK:
        hooks = vars(base_model).get(_ATTR)
        if hooks is None:
            hooks = _Hooks()
            _install(base_model, hooks)
            object.__setattr__(base_model, _ATTR, hooks)
        if model is not base_model and id(model) not in hooks.heads:
            hooks.heads[id(model)] = _install_top(model, hooks)
        hooks.caches.add(cache)


def detach(cache: Any, base_model: nn.Module) -> None:
    """``cache`` is closed: when no open cache of ``base_model`` is left, remove every hook."""
    with _LOCK:
        hooks = vars(base_model).get(_ATTR)
        if hooks is None:
            return
        hooks.caches.discard(cache)
        if len(hooks.caches):
            return
        for handle in hooks.handles:
            handle.remove()
        for unwrap in hooks.heads.values():
            unwrap()
        del base_model.__dict__[_ATTR]


def installed(model: nn.Module) -> bool:
    """Whether any hook of ours is installed on ``model`` or one of its submodules."""
    return any(_ATTR in vars(m) or _is_ours(m) for m in model.modules())


def _is_ours(module: nn.Module) -> bool:
    hook_dicts = (module._forward_pre_hooks, module._forward_hooks)
    if any(getattr(h, "__judgeq_cache_hook__", False) for d in hook_dicts for h in d.values()):
        return True
    return getattr(vars(module).get("generate"), "__judgeq_cache_wrapper__", False)


def _ours(fn: Callable) -> Callable:
    fn.__judgeq_cache_hook__ = True
    return fn


def _install(base_model: nn.Module, hooks: _Hooks) -> None:
    @_ours
    def on_start(module, args, kwargs):
        cache = find_cache(args, kwargs)
        if cache is not None:
            cache.on_forward_start(module, args, kwargs)

    @_ours
    def on_end(module, args, kwargs, output):
        cache = find_cache(args, kwargs)
        if cache is not None:
            cache.on_forward_end(module, succeeded=output is not None, output=output)

    hooks.handles.append(base_model.register_forward_pre_hook(on_start, with_kwargs=True))
    hooks.handles.append(base_model.register_forward_hook(on_end, with_kwargs=True, always_call=True))

    @_ours
    def on_attention(module, args, kwargs):
        if active_capture(module):
            _point(module, hooks)
        cache = find_cache(args, kwargs)
        if cache is None:
            return None  # not our forward: the arguments stay as they are
        cache.on_attention_call(module, kwargs, kwargs.get("hidden_states", args[0] if args else None))
        return args, kwargs

    @_ours
    def after_attention(module, args, kwargs, output):
        if id(module) in _POINTED.get():
            _release(module, hooks)

    for attention in attention_modules(base_model):
        hooks.handles.append(attention.register_forward_pre_hook(on_attention, with_kwargs=True))
        hooks.handles.append(
            attention.register_forward_hook(after_attention, with_kwargs=True, always_call=True)
        )


def _install_top(model: nn.Module, hooks: _Hooks) -> Callable[[], None]:
    """Let the cache read the head's own arguments (``logits_to_keep``) before the decoder runs, and
    the running ``generate`` call's options (:mod:`judgeq_cache.generate_call`)."""

    @_ours
    def on_call(module, args, kwargs):
        cache = find_cache(args, kwargs)
        if cache is not None:
            cache.on_model_call(module, kwargs)

    @_ours
    def on_return(module, args, kwargs, output):
        cache = find_cache(args, kwargs)
        if cache is not None:
            cache.on_model_call(module, None)

    hooks.handles.append(model.register_forward_pre_hook(on_call, with_kwargs=True))
    hooks.handles.append(model.register_forward_hook(on_return, with_kwargs=True, always_call=True))
    return wrap_generate(model) if callable(getattr(model, "generate", None)) else (lambda: None)


class _CaptureConfig:
    """A read-only view of an attention module's config that names the capturing attention function."""

    def __init__(self, config: Any) -> None:
        object.__setattr__(self, "_judgeq_config", config)
        inner = getattr(config, "_attn_implementation", None) or "eager"
        object.__setattr__(self, "_judgeq_name", capture_name(inner))

    @property
    def _attn_implementation(self) -> str:
        return self._judgeq_name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._judgeq_config, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a module's config is read-only while its attention is being scored")


def _point(module: nn.Module, hooks: _Hooks) -> None:
    """Point ``module`` at the capturing attention function for this call."""
    pointed = _POINTED.get()
    if id(module) in pointed or getattr(module, "config", None) is None:
        return
    with _LOCK:
        entry = hooks.pointed.get(id(module))
        if entry is None:
            original = module.config
            hooks.pointed[id(module)] = [original, 1]
            object.__setattr__(module, "config", _CaptureConfig(original))
        else:
            entry[1] += 1
    _POINTED.set(pointed | {id(module)})


def _release(module: nn.Module, hooks: _Hooks) -> None:
    """This call of ``module`` returned: put its config back when no other call still needs the view."""
    _POINTED.set(_POINTED.get() - {id(module)})
    with _LOCK:
        entry = hooks.pointed.get(id(module))
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            object.__setattr__(module, "config", entry[0])
            del hooks.pointed[id(module)]
