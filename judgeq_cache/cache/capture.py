"""Capture post-RoPE queries through transformers' AttentionInterface and turn them into scores.

One mechanism serves every model that calls ``ALL_ATTENTION_FUNCTIONS.get_interface(...)`` (Llama,
Mistral, Qwen2/3, Gemma2/3, Phi3, ...): while a :class:`AttentionCapture` is active in the calling
thread, the model's attention modules are pointed (per call, by :mod:`judgeq_cache.hooks`) at a
function registered under our own name (:func:`capture_name`) that first scores the queries it
receives against the keys the cache returned, then calls the original function unchanged. No
per-architecture query code exists anywhere in the library, and transformers' own tables are only
ever extended through their public ``register``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from .. import kernels


@dataclass
class QueryPlan:
    """Which queries of a forward to score, and where they sit among the keys.

    Attributes
    ----------
    query_slice : slice
        Queries taken from the attention call (``slice(-w, None)`` for a last window).
    causal_offset : int or None
        Key position of the first selected query. ``None``: the call's queries are its last keys (a
        forward over a cache that already holds entries), so the offset follows from the key count.
    num_out : int or None
        Key columns to score (the prompt). ``None``: every key but the last ``exclude_tail``.
    key_mask : bool Tensor ``[B, num_keys]``, a dict of them per layer, or None
        ``False`` marks padding keys (and filler slots of an evicted layer).
    layers : frozenset[int]
        Layer indices to score (the evictable, full-attention ones).
    exclude_tail : int
        With ``num_out=None``: trailing keys not scored (the appended tokens' own keys).
    fuse : bool
        The scored queries are all of the call's, over exactly the keys ``key_mask`` leaves visible
        (the logits-free appended pass): where :func:`fusable`, the scoring softmax also gives the
        attention output and the model's attention function is not called a second time.
    """

    query_slice: slice
    causal_offset: int | None
    num_out: int | None
    key_mask: torch.Tensor | dict[int, torch.Tensor] | None
    layers: frozenset[int]
    exclude_tail: int = 0
    fuse: bool = False

    def resolve(
        self, layer_idx: int, num_queries: int, num_keys: int
    ) -> tuple[int, int, torch.Tensor | None]:
        """``(causal_offset, num_out, key_mask)`` of one attention call of ``layer_idx``."""
        offset, num_out = self.causal_offset, self.num_out
        if offset is None:
            offset = num_keys - num_queries + self.query_slice.indices(num_queries)[0]
        if num_out is None:
            num_out = num_keys - self.exclude_tail
        key_mask = self.key_mask.get(layer_idx) if isinstance(self.key_mask, dict) else self.key_mask
        return offset, num_out, key_mask


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Attention modules that follow transformers' standard interface (they carry a ``layer_idx``)."""
    return [
        m
        for m in model.modules()
        if type(m).__name__.endswith("Attention") and isinstance(getattr(m, "layer_idx", None), int)
    ]


def attention_implementations(model: nn.Module) -> set[str]:
    """The ``_attn_implementation`` names used by ``model``'s attention modules."""
    names = set()
    for module in attention_modules(model):
        config = getattr(module, "config", None) or model.config
        names.add(getattr(config, "_attn_implementation", None) or "eager")
    return names


#: Attention keyword arguments whose meaning the fused scoring + attention reproduces (checked below).
_FUSABLE_KWARGS = frozenset(
    {"dropout", "scaling", "softcap", "sliding_window", "use_cache", "position_ids", "cache_position"}
)


def fusable(name: str, inner: Callable | None, module: nn.Module, query: torch.Tensor, kwargs: dict) -> bool:
    """Whether :func:`kernels.attention_scores_and_output` gives exactly what ``inner`` would: plain
    softmax attention (transformers' own sdpa or the modeling file's eager; no sinks, no sliding
    window, no dropout), no gradient, on the torch kernels."""
    own = inner is None if name == "eager" else name == "sdpa" and inner is sdpa_attention_forward
    return (
        own
        and not query.requires_grad
        and kernels.backend_for(query) == "torch"
        and set(kwargs) <= _FUSABLE_KWARGS
        and kwargs.get("sliding_window") is None
        and not (module.training and kwargs.get("dropout"))
        and getattr(module, "sinks", None) is None
    )


def _modeling_eager(module: nn.Module) -> Callable:
    """The eager attention of ``module``'s modeling file (softcapping etc. included)."""
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        raise TypeError(
            f"{type(module).__name__} uses eager attention but its modeling file defines no "
            "eager_attention_forward; load the model with attn_implementation='sdpa'"
        )
    return eager


class AttentionCapture:
    """Context manager: while active, score ``plan``'s queries in the attention calls of ``modules``.

    ``scores[layer_idx]`` holds ``[B, Hkv, plan.num_out]`` fp32 mean attention probabilities (with
    autograd when the queries require grad, which is how training back-propagates into soft rows).

    Whether a capture is active lives in a :class:`contextvars.ContextVar` of the calling thread (or
    task), never in a process-global table: another thread, or another model in this one, is never
    scored. The attention modules reach the capture through :mod:`judgeq_cache.hooks`, which points
    them, for the duration of one call, at a function registered under our own name with transformers'
    public ``AttentionInterface.register`` (:func:`capture_name`).
    """

    def __init__(self, modules: Iterable[nn.Module], plan: QueryPlan):
        self.plan = plan
        self.scores: dict[int, torch.Tensor] = {}
        self._modules = frozenset(id(m) for m in modules)

    def covers(self, module: nn.Module) -> bool:
        """Whether this capture scores ``module``'s attention calls."""
        return id(module) in self._modules and getattr(module, "layer_idx", None) in self.plan.layers

    def _score(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        kwargs: dict,
        value: torch.Tensor | None = None,
    ) -> Any:
        """The scores of ``plan``'s queries; with ``value``, ``(scores, attention output)``."""
        plan = self.plan
        scaling = kwargs.get("scaling")
        if scaling is None:
            scaling = getattr(module, "scaling", query.shape[-1] ** -0.5)
        softcap = kwargs.get("softcap")
        offset, num_out, key_mask = plan.resolve(module.layer_idx, query.shape[-2], key.shape[-2])
        key_mask = None if key_mask is None else key_mask.to(key.device)
        if key_mask is not None and key_mask.shape[-1] != key.shape[-2]:
            raise RuntimeError(
                f"scoring pass saw {key.shape[-2]} keys at layer {module.layer_idx} but expected "
                f"{key_mask.shape[-1]}; is another cache or attention wrapper active?"
            )
        options = dict(
            scaling=float(scaling), key_mask=key_mask, causal_offset=offset, num_out=num_out, softcap=softcap
        )
        if value is not None:
            return kernels.attention_scores_and_output(query, key, value, **options)
        return kernels.attention_scores(query[:, :, plan.query_slice], key, **options)

    def __enter__(self) -> AttentionCapture:
        _ACTIVE.set((*_ACTIVE.get(), self))
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.set(tuple(c for c in _ACTIVE.get() if c is not self))


#: The captures active in the current thread / task (see :class:`AttentionCapture`).
_ACTIVE: ContextVar[tuple[AttentionCapture, ...]] = ContextVar("judgeq_cache_captures", default=())
#: Prefix of the names under which :func:`capture_name` registers the capturing attention functions.
CAPTURE_PREFIX = "judgeq_capture:"
_REGISTER_LOCK = threading.Lock()
_REGISTERED: set[str] = set()


def active_capture(module: nn.Module) -> bool:
    """Whether a capture active in this thread / task scores ``module``'s attention calls."""
    return any(capture.covers(module) for capture in _ACTIVE.get())


def capture_name(inner: str) -> str:
    """The attention-implementation name, registered with transformers' public
    ``AttentionInterface.register``, of a function that scores the active captures' queries and then
    runs the ``inner`` implementation unchanged (found through the public interface at each call, so
    a user's own registration keeps running underneath). Outside a capture it is ``inner`` exactly."""
    name = CAPTURE_PREFIX + inner
    with _REGISTER_LOCK:
        if name not in _REGISTERED:
            AttentionInterface.register(name, _capturing_attention(inner))
            _REGISTERED.add(name)
    return name


def _capturing_attention(name: str) -> Callable:
    def capture_then_attend(module, query, key, value, attention_mask, *args, **kwargs):
        inner = ALL_ATTENTION_FUNCTIONS.get(name)  # None for the modeling file's own eager
        captures = [c for c in _ACTIVE.get() if c.covers(module)]
        alone = len(captures) == 1 and captures[0].plan.fuse and not args
        if alone and fusable(name, inner, module, query, kwargs):
            scores, output = captures[0]._score(module, query, key, kwargs, value)
            captures[0].scores[module.layer_idx] = scores
            return output, None
        for capture in captures:
            capture.scores[module.layer_idx] = capture._score(module, query, key, kwargs)
        attend = inner if inner is not None else _modeling_eager(module)
        return attend(module, query, key, value, attention_mask, *args, **kwargs)

    return capture_then_attend
