"""EvictionCache: a DynamicCache that prunes the prompt's KV right after prefill; JudgeQCache."""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from . import hooks, kernels
from .adapter import JudgeQAdapter
from .budget import Budget
from .capture import AttentionCapture, QueryPlan, attention_implementations, attention_modules
from .layers import EvictableLayer, _query_length
from .scorers import JudgeQScorer, LayerInputs, Scorer, make_scorer

logger = logging.getLogger(__name__)


@dataclass
class _Prefill:
    """What the cache learned from the prefill call."""

    length: int
    key_mask: torch.Tensor  # [B, N] bool, False = padding
    position_ids: torch.Tensor | None

    def next_positions(self, count: int) -> torch.Tensor:
        """Positions of ``count`` tokens appended right after the prompt, ``[B, count]``."""
        steps = torch.arange(1, count + 1, device=self.key_mask.device)
        if self.position_ids is not None:
            last = self.position_ids[:, -1:].to(self.key_mask.device)
            return (last + steps).expand(self.key_mask.shape[0], -1)
        return (self.length - 1 + steps).expand(self.key_mask.shape[0], -1)


class EvictionCache(DynamicCache):
    """A drop-in ``DynamicCache`` that keeps only the best ``budget`` prompt entries per KV head.

    When the first forward into the empty cache (the prefill) returns, ``scorer`` scores every
    prompt entry of every full-attention layer; the top ``budget`` per KV head are kept in their
    original order and the rest are physically dropped. Decoding then continues from the original
    positions, whether the forward came from ``generate`` or from a direct ``model(...)`` call.
    Sliding-window layers (Gemma-3 style) already hold only a window and are left alone.

    Parameters
    ----------
    model : PreTrainedModel
        The model the cache is used with (its hooks are installed once, and are inert for other caches).
    budget : int or float
        ``int``: entries kept per KV head per layer; ``float`` in ``(0, 1)``: kept fraction of the prompt.
        A budget at least the prompt length keeps everything.
    scorer : str or Scorer
        ``"snapkv"`` (default), ``"streamingllm"``, ``"h2o"``, ``"pyramidkv"``, ``"random"``, ``"oracle"``,
        ``"judgeq"``, or a :class:`~judgeq_cache.scorers.Scorer` instance.
    compress : bool
        Compress automatically when the prefill returns (default). With ``False``, call
        :meth:`compress` yourself (or use :meth:`appended_attention` for analysis and training).
    **scorer_options
        Passed to the scorer's constructor (e.g. ``window_size=16``).

    Attributes
    ----------
    kept_indices : dict[int, Tensor]
        Prompt positions kept by each evicted layer, ``[B, Hkv, k]``.
    prompt_length : int
        Tokens in the compressed prompt (0 before prefill).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        budget: int | float | Budget,
        scorer: str | Scorer = "snapkv",
        *,
        compress: bool = True,
        **scorer_options: Any,
    ) -> None:
        if not isinstance(model, PreTrainedModel):
            raise TypeError(
                f"EvictionCache needs a transformers PreTrainedModel, got {type(model).__name__}; "
                "load it with AutoModelForCausalLM.from_pretrained(...)"
            )
        self.budget = Budget.parse(budget)
        self.scorer = make_scorer(scorer, **scorer_options)
        if not attention_modules(model):
            raise TypeError(
                f"{type(model).__name__} has no attention modules following transformers' standard attention "
                "interface (modules named *Attention with a layer_idx); eviction cannot score this model"
            )
        super().__init__(config=model.config)
        reserve = self.scorer.appended_length() if compress else 0
        self.layers = [
            EvictableLayer(reserve) if type(layer) is DynamicLayer else layer for layer in self.layers
        ]
        self._evictable = [i for i, layer in enumerate(self.layers) if isinstance(layer, EvictableLayer)]
        if not self._evictable:
            raise TypeError(
                "this model has no full-attention layers to evict (all layers are sliding-window)"
            )
        self._base_model = model.base_model
        self._attn_names = attention_implementations(model)
        self._cache_kwarg = _cache_kwarg_name(self._base_model)
        self.auto_compress = compress
        self.kept_indices: dict[int, torch.Tensor] = {}
        self.prompt_length = 0
        self.compression_seconds = 0.0
        self._prefill: _Prefill | None = None
        self._capture: AttentionCapture | None = None
        self._compressed = False
        self._dry = False
        hooks.install(self._base_model)

    # ------------------------------------------------------------------ cache API
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self._dry:
            # Scoring pass: attend over stored + new, store nothing.
            layer = self.layers[layer_idx]
            if isinstance(layer, EvictableLayer):
                return layer.peek(key_states, value_states)
            return torch.cat([layer.keys, key_states], dim=-2), torch.cat(
                [layer.values, value_states], dim=-2
            )
        if self._prefill is None:
            raise RuntimeError(
                "this EvictionCache was built for another model instance (its hooks never saw this forward); "
                "create the cache with the model you call: EvictionCache(model, ...)"
            )
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def get_mask_sizes(self, query: int | torch.Tensor, layer_idx: int, *args, **kwargs) -> tuple[int, int]:
        layer = self.layers[layer_idx] if layer_idx < len(self.layers) else None
        if isinstance(layer, EvictableLayer) and self._ragged:
            # One mask serves all full-attention layers: size it for the longest; the attention hook
            # right-slices it per layer (see _fix_attention_mask).
            stored = max(self.layers[i].stored_length for i in self._evictable)
            return stored + _query_length(query), layer.get_seq_length() - stored
        return super().get_mask_sizes(query, layer_idx, *args, **kwargs)

    @property
    def _ragged(self) -> bool:
        lengths = {self.layers[i].stored_length for i in self._evictable}
        return len(lengths) > 1

    def kv_bytes(self) -> int:
        """Bytes of keys and values stored right now, all layers."""
        return sum(
            layer.keys.numel() * layer.keys.element_size()
            + layer.values.numel() * layer.values.element_size()
            for layer in self.layers
            if getattr(layer, "keys", None) is not None and layer.keys.numel()
        )

    @property
    def is_compressed(self) -> bool:
        return self._compressed

    # ------------------------------------------------------------------ forward hooks
    def _on_forward_start(self, args: tuple, kwargs: dict[str, Any]) -> None:
        if self._dry or self._prefill is not None or self.get_seq_length() > 0:
            return
        tokens = kwargs.get("input_ids")
        if tokens is None:
            tokens = kwargs.get("inputs_embeds")
        if tokens is None and args:
            tokens = args[0]
        if tokens is None or tokens.shape[1] == 0:
            raise ValueError(
                "empty prompt: the first forward into an EvictionCache must carry at least one token"
            )
        bsz, length = tokens.shape[:2]
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.ndim != 2:
            raise ValueError(
                "EvictionCache needs a 2-D attention_mask [batch, tokens] (or None) for the prefill; "
                f"got a {mask.ndim}-D mask"
            )
        if mask is not None and mask.shape[-1] != length:
            raise ValueError(f"attention_mask covers {mask.shape[-1]} tokens but the prompt has {length}")
        key_mask = mask.bool() if mask is not None else torch.ones((bsz, length), dtype=torch.bool)
        key_mask = key_mask.to(tokens.device)
        self._prefill = _Prefill(length, key_mask, kwargs.get("position_ids"))
        self.prompt_length = length
        source = self.scorer.query_source
        if self.auto_compress and source in ("window", "all") and self._will_evict():
            window = min(self.scorer.window_size or length, length) if source == "window" else length
            plan = QueryPlan(
                slice(length - window, None), length - window, length, key_mask, self._layer_set()
            )
            self._capture = AttentionCapture(self._attn_names, plan).__enter__()

    def _on_forward_end(self, succeeded: bool) -> None:
        if self._dry or self._prefill is None or self._compressed:
            return
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.__exit__(None, None, None)
        if succeeded and self.auto_compress:
            attention = capture.scores if capture is not None else None
            with torch.no_grad():
                self.compress(attention)

    def _fix_attention_mask(self, layer_idx: int, kwargs: dict[str, Any], query_length: int) -> None:
        mask = kwargs.get("attention_mask")
        layer = self.layers[layer_idx] if layer_idx < len(self.layers) else None
        if not isinstance(mask, torch.Tensor) or not isinstance(layer, EvictableLayer) or not self._ragged:
            return
        needed = layer.stored_length + query_length
        if mask.shape[-1] > needed:
            kwargs["attention_mask"] = mask[..., -needed:]

    # ------------------------------------------------------------------ scoring and eviction
    def _layer_set(self) -> frozenset[int]:
        return frozenset(self._evictable)

    def _layer_budgets(self) -> list[int]:
        return self.scorer.layer_budgets(self.budget, self.prompt_length, len(self._evictable))

    def _will_evict(self) -> bool:
        return any(b < self.prompt_length for b in self._layer_budgets())

    @contextlib.contextmanager
    def dry_run(self) -> Iterator[None]:
        """Forwards inside this block attend over the cache but store nothing in it."""
        self._dry = True
        try:
            yield
        finally:
            self._dry = False

    def appended_attention(self, inputs: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Mean attention ``{layer: [B, Hkv, N]}`` of extra tokens run right after the prompt.

        ``inputs`` holds ``input_ids`` or ``inputs_embeds`` ``[B, m, ...]``. The tokens attend to the
        prefilled prompt (and causally to each other) at the positions that follow it; nothing is
        stored and no logits are computed. Runs under the caller's grad mode, so soft rows can be
        trained through it.
        """
        if self._prefill is None or self._compressed:
            raise RuntimeError("appended_attention needs a prefilled, not yet compressed cache")
        prefill = self._prefill
        tokens = next(iter(inputs.values()))
        count = tokens.shape[1]
        ones = torch.ones(
            (prefill.key_mask.shape[0], count), dtype=torch.bool, device=prefill.key_mask.device
        )
        key_mask = torch.cat([prefill.key_mask, ones], dim=-1)
        plan = QueryPlan(slice(None), prefill.length, prefill.length, key_mask, self._layer_set())
        with self.dry_run(), AttentionCapture(self._attn_names, plan) as capture:
            self._base_model(
                **inputs,
                attention_mask=key_mask.long(),
                position_ids=prefill.next_positions(count),
                use_cache=True,
                **{self._cache_kwarg: self},
            )
        missing = set(self._evictable) - set(capture.scores)
        if missing:
            raise TypeError(
                f"no queries were captured for layers {sorted(missing)}: the model's attention does not go "
                "through transformers' AttentionInterface, so it cannot be scored"
            )
        return capture.scores

    def compress(self, attention: dict[int, torch.Tensor] | None = None) -> None:
        """Score the prefilled prompt and keep the top entries per KV head (done automatically after
        prefill unless ``compress=False``). ``attention`` overrides the captured attention."""
        if self._prefill is None:
            raise RuntimeError("nothing to compress: run the prompt through the model with this cache first")
        if self._compressed:
            raise RuntimeError("this cache was already compressed")
        start = time.perf_counter()
        prefill = self._prefill
        budgets = self._layer_budgets()
        if any(b < prefill.length for b in budgets):
            if attention is None and self.scorer.query_source == "appended":
                attention = self.appended_attention(
                    self.scorer.appended_inputs(prefill.key_mask.shape[0], self._base_model)
                )
            if attention is None and self.scorer.query_source != "none":
                raise RuntimeError(
                    f"scorer {self.scorer.name!r} needs the prompt's queries, which are captured during the "
                    "prefill forward; with compress=False pass them to compress(attention=...)"
                )
            for layer_idx, budget in zip(self._evictable, budgets):
                self._evict_layer(layer_idx, budget, attention, prefill)
        self._compressed = True
        self.compression_seconds = time.perf_counter() - start
        logger.debug(
            "%s: kept %s of %d prompt entries per head in %d layers (%.1f ms)",
            self.scorer.name,
            self.budget,
            prefill.length,
            len(self._evictable),
            1e3 * self.compression_seconds,
        )

    def _evict_layer(
        self, layer_idx: int, budget: int, attention: dict[int, torch.Tensor] | None, prefill: _Prefill
    ) -> None:
        layer = self.layers[layer_idx]
        if budget >= layer.stored_length:
            return
        key_mask = prefill.key_mask.to(layer.keys.device)  # layers may live on several devices
        inputs = LayerInputs(
            layer_idx=layer_idx,
            keys=layer.keys,
            values=layer.values,
            attention=None if attention is None else attention.get(layer_idx),
            key_mask=key_mask,
            budget=budget,
        )
        indices = self.scorer.select(inputs)
        layer.keep(indices, kernels.gather_kv)
        self.kept_indices[layer_idx] = indices

    # ------------------------------------------------------------------ public surface for tools
    @property
    def evictable_layers(self) -> tuple[int, ...]:
        """Indices of the full-attention layers this cache scores and evicts."""
        return tuple(self._evictable)

    @property
    def cache_kwarg(self) -> str:
        """The forward argument this cache is passed as (``"cache"`` on transformers >= 5.24)."""
        return self._cache_kwarg

    def query_capture(
        self, query_slice: slice, causal_offset: int, num_out: int, key_mask: torch.Tensor | None
    ) -> AttentionCapture:
        """A context manager scoring ``query_slice`` of every evictable layer's attention calls (see
        :class:`~judgeq_cache.capture.QueryPlan`); ``.scores`` holds ``{layer: [B, Hkv, num_out]}``."""
        plan = QueryPlan(query_slice, causal_offset, num_out, key_mask, self._layer_set())
        return AttentionCapture(self._attn_names, plan)

    def load_prefill(
        self,
        keys_values: list[tuple[torch.Tensor, torch.Tensor]],
        key_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> None:
        """Adopt an already computed prompt KV (one ``(keys, values)`` ``[B, Hkv, N, D]`` per layer)
        as this cache's prefill, as if the prompt had just run through the model; nothing is
        compressed (call :meth:`compress`, or use :meth:`appended_attention`)."""
        if self._prefill is not None or self.get_seq_length() > 0:
            raise RuntimeError("load_prefill needs an empty cache")
        if len(keys_values) != len(self.layers):
            raise ValueError(f"got KV for {len(keys_values)} layers, the model has {len(self.layers)}")
        bsz, _, n, _ = keys_values[0][0].shape
        if key_mask is None:
            key_mask = torch.ones((bsz, n), dtype=torch.bool, device=keys_values[0][0].device)
        self._prefill = _Prefill(n, key_mask.bool(), position_ids)
        self.prompt_length = n
        for layer, (keys, values) in zip(self.layers, keys_values):
            layer.update(keys, values)

    def reset(self) -> None:
        super().reset()
        self.kept_indices = {}
        self.prompt_length = 0
        self._prefill = None
        self._compressed = False


class JudgeQCache(EvictionCache):
    """Eviction scored by a trained :class:`JudgeQAdapter`'s soft tokens.

    ``JudgeQCache(model, JudgeQAdapter.from_pretrained(path), budget=512)`` then
    ``model.generate(**inputs, past_key_values=cache)``.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        adapter: JudgeQAdapter,
        budget: int | float | Budget,
        *,
        compress: bool = True,
        **scorer_options: Any,
    ) -> None:
        if not isinstance(adapter, JudgeQAdapter):
            raise TypeError(
                f"JudgeQCache needs a JudgeQAdapter, got {type(adapter).__name__}; "
                "use JudgeQAdapter.from_pretrained(path_or_hub_id) or JudgeQAdapter.init_for(model)"
            )
        adapter.check_compatible(model)
        scorer = JudgeQScorer(adapter=adapter, **scorer_options)
        super().__init__(model, budget, scorer, compress=compress)

    @property
    def adapter(self) -> JudgeQAdapter:
        return self.scorer.adapter


def _cache_kwarg_name(module: nn.Module) -> str:
    """transformers 5.24 renamed the forward argument ``past_key_values`` to ``cache``."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
