"""EvictionCache: a DynamicCache that prunes the prompt's KV right after prefill; JudgeQCache."""

from __future__ import annotations

import contextlib
import dataclasses
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


@dataclass
class _Drafts:
    """Tokens that followed the prompt in the prefill forward: the candidate tokens of assisted decoding
    and prompt lookup, which ``generate`` verifies in the same forward as the prompt and may crop."""

    inputs: dict[str, torch.Tensor]  # {"input_ids": [B, c]} or {"inputs_embeds": [B, c, H]}
    attention_mask: torch.Tensor | None  # [B, N + c]
    position_ids: torch.Tensor | None  # [..., c]

    @property
    def count(self) -> int:
        return next(iter(self.inputs.values())).shape[1]


class EvictionCache(DynamicCache):
    """A drop-in ``DynamicCache`` that keeps only the best ``budget`` prompt entries per KV head.

    When the first forward into the empty cache (the prefill) returns, ``scorer`` scores every
    prompt entry of every full-attention layer; the top ``budget`` per KV head are kept in their
    original order and the rest are physically dropped. Decoding then continues from the original
    positions, whether the forward came from ``generate`` or from a direct ``model(...)`` call.
    Sliding-window layers (Gemma-3 style) already hold only a window and are left alone.

    Assisted decoding and prompt lookup put candidate tokens into the prefill forward (``generate``
    asks for their logits, ``logits_to_keep = candidates + 1``): only the prompt before them is
    compressed, and they are run again over the compressed prompt, so their logits and entries are
    those of a forward after compression and ``generate`` can crop the rejected ones. A chunked
    prefill (``prefill_chunk_size``) that would evict raises ``NotImplementedError`` up front.

    Parameters
    ----------
    model : PreTrainedModel
        The model the cache is used with (its hooks are installed once, and are inert for other caches).
    budget : int or float
        ``int``: entries kept per KV head per layer; ``float`` in ``(0, 1)``: kept fraction of the prompt
        (of each row's real length in a left-padded batch). A budget at least the prompt length keeps
        everything.
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
        Prompt positions kept by each evicted layer, ``[B, Hkv, k]`` in original order. In a padded
        batch whose rows keep different counts, ``k`` is the largest; a row that keeps fewer repeats its
        first kept position in its leading (masked) filler slots.
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
        self._model = model
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
        self._drafts: _Drafts | None = None
        self._logits_to_keep: Any = None
        self._forward_depth = 0
        hooks.install(model, self._base_model)

    # ------------------------------------------------------------------ cache API
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self._dry:
            # Scoring pass: attend over stored + new, store nothing.
            layer = self.layers[layer_idx]
            if isinstance(layer, EvictableLayer):
                return layer.peek(key_states, value_states)
            return _peek_window(layer, key_states, value_states)
        if self._prefill is None or self._forward_depth == 0:
            raise _another_model_error()
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
    def _on_model_call(self, module: nn.Module, kwargs: dict[str, Any] | None) -> None:
        """The head's forward starts (``kwargs``) or ends (None): remember its ``logits_to_keep``."""
        if module is self._model:
            self._logits_to_keep = None if kwargs is None else kwargs.get("logits_to_keep")

    def _on_forward_start(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if module is not self._base_model:
            raise _another_model_error()
        self._forward_depth += 1
        if self._dry or self._prefill is not None or self.get_seq_length() > 0:
            return
        tokens, key = kwargs.get("input_ids"), "input_ids"
        if tokens is None:
            tokens, key = kwargs.get("inputs_embeds"), "inputs_embeds"
        if tokens is None and args:
            tokens, key = args[0], "input_ids"
        if tokens is None or tokens.shape[1] == 0:
            raise ValueError(
                "empty prompt: the first forward into an EvictionCache must carry at least one token"
            )
        bsz, total = tokens.shape[:2]
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.ndim != 2:
            raise ValueError(
                "EvictionCache needs a 2-D attention_mask [batch, tokens] (or None) for the prefill; "
                f"got a {mask.ndim}-D mask"
            )
        if mask is not None and mask.shape[-1] != total:
            raise ValueError(f"attention_mask covers {mask.shape[-1]} tokens but the prompt has {total}")
        key_mask = mask.bool() if mask is not None else torch.ones((bsz, total), dtype=torch.bool)
        key_mask = key_mask.to(tokens.device)
        positions = kwargs.get("position_ids")
        drafts = self._draft_count(total)
        length = total - drafts
        prefill = _Prefill(
            length, key_mask[:, :length], None if positions is None else positions[..., :length]
        )
        evicts = self.auto_compress and self._will_evict(prefill)
        if evicts:
            self._check_generate_mode(drafts)
        self._prefill = prefill
        self.prompt_length = length
        self._drafts = None
        if drafts:
            self._drafts = _Drafts(
                {key: tokens[:, length:]}, mask, None if positions is None else positions[..., length:]
            )
        source = self.scorer.query_source
        if evicts and source in ("window", "all"):
            window = min(self.scorer.window_size or length, length) if source == "window" else length
            plan = QueryPlan(
                slice(length - window, length), length - window, length, key_mask, self._layer_set()
            )
            self._capture = AttentionCapture(self._attn_names, plan).__enter__()

    def _on_forward_end(self, module: nn.Module, succeeded: bool, output: Any = None) -> None:
        if module is not self._base_model:
            return
        self._forward_depth = max(0, self._forward_depth - 1)
        if self._dry or self._prefill is None or self._compressed:
            return
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.__exit__(None, None, None)
        if succeeded and self.auto_compress:
            attention = capture.scores if capture is not None else None
            with torch.no_grad():
                hidden = self._compress(attention)
                if hidden is not None and output is not None:
                    # The drafts' hidden states, recomputed over the compressed prompt (see _compress).
                    last = output[0] if isinstance(output, tuple) else output.last_hidden_state
                    last[:, -hidden.shape[1] :] = hidden.to(last.dtype)

    def _draft_count(self, total: int) -> int:
        """Tokens at the end of the prefill forward that are not prompt: ``generate`` asks for the logits
        of the last prompt token and of each candidate (``logits_to_keep = candidates + 1``) when it
        verifies assisted-decoding or prompt-lookup candidates in the prefill forward."""
        keep = self._logits_to_keep
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 < keep <= total:
            return 0
        return keep - 1

    def _check_generate_mode(self, drafts: int) -> None:
        """Refuse, before anything runs, the ``generate`` modes in which eviction cannot be exact."""
        call = hooks.running_generate_call(self._model)
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
            getattr(layer, "is_sliding", False) and not getattr(layer, "record_past", False)
            for layer in self.layers
        ):
            raise NotImplementedError(
                "assisted decoding / prompt lookup with eviction on a model with sliding-window layers needs "
                "a transformers version whose sliding layers record their past (activate_past_recording, "
                "transformers >= 5.20); upgrade transformers or generate without assistant_model / "
                "prompt_lookup_num_tokens"
            )

    def _fix_attention_mask(self, module: nn.Module, kwargs: dict[str, Any], hidden: Any) -> None:
        layer_idx = getattr(module, "layer_idx", None)
        mask = kwargs.get("attention_mask")
        layer = (
            self.layers[layer_idx] if isinstance(layer_idx, int) and layer_idx < len(self.layers) else None
        )
        if not isinstance(layer, EvictableLayer) or self._dry or not isinstance(hidden, torch.Tensor):
            return
        query_length = hidden.shape[-2]
        needed = layer.stored_length + query_length
        if isinstance(mask, torch.Tensor) and self._ragged and mask.shape[-1] > needed:
            mask = kwargs["attention_mask"] = mask[..., -needed:]
        if layer.visible is not None:
            kwargs["attention_mask"] = _hide_fillers(mask, layer, hidden, self._attn_names)

    # ------------------------------------------------------------------ scoring and eviction
    def _layer_set(self) -> frozenset[int]:
        return frozenset(self._evictable)

    def _row_budgets(self, prefill: _Prefill) -> list[list[int]]:
        """Entries kept per KV head, ``[layer][row]``: the budget applies to each row's real length."""
        real = prefill.key_mask.sum(-1).tolist()
        per_row = [self.scorer.layer_budgets(self.budget, max(1, int(r)), len(self._evictable)) for r in real]
        return [[min(k, prefill.length) for k in layer] for layer in zip(*per_row)]

    def _will_evict(self, prefill: _Prefill) -> bool:
        real = prefill.key_mask.sum(-1).tolist()
        return any(_evicts(budgets, real, prefill.length) for budgets in self._row_budgets(prefill))

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
        self._compress(attention)

    def _compress(self, attention: dict[int, torch.Tensor] | None) -> torch.Tensor | None:
        """:meth:`compress`; returns the drafts' hidden states recomputed over the compressed prompt
        (``[B, c, hidden]``) when the prefill forward carried candidate tokens, else None."""
        if self._prefill is None:
            raise RuntimeError("nothing to compress: run the prompt through the model with this cache first")
        if self._compressed:
            raise RuntimeError("this cache was already compressed")
        start = time.perf_counter()
        prefill = self._prefill
        budgets = self._row_budgets(prefill)
        real = prefill.key_mask.sum(-1).tolist()
        hidden = None
        if any(_evicts(b, real, prefill.length) for b in budgets):
            drafts = self._set_aside_tail(prefill)
            if attention is None and self.scorer.query_source == "appended":
                attention = self.appended_attention(
                    self.scorer.appended_inputs(prefill.key_mask.shape[0], self._base_model)
                )
            if attention is None and self.scorer.query_source != "none":
                raise RuntimeError(
                    f"scorer {self.scorer.name!r} needs the prompt's queries, which are captured during the "
                    "prefill forward; with compress=False pass them to compress(attention=...)"
                )
            for layer_idx, row_budgets in zip(self._evictable, budgets):
                self._evict_layer(layer_idx, row_budgets, attention, prefill)
            self._compressed = True
            if drafts is not None:
                hidden = self._rerun(drafts)
        self._compressed = True
        self._drafts = None
        self.compression_seconds = time.perf_counter() - start
        logger.debug(
            "%s: kept %s of %d prompt entries per head in %d layers (%.1f ms)",
            self.scorer.name,
            self.budget,
            prefill.length,
            len(self._evictable),
            1e3 * self.compression_seconds,
        )
        return hidden

    def _set_aside_tail(self, prefill: _Prefill) -> _Drafts | None:
        """Drop the drafts' entries (tokens after the prompt) from every layer before eviction, so the
        scoring sees the prompt alone; they are recomputed over the compressed prompt by :meth:`_rerun`."""
        extra = self.layers[self._evictable[0]].stored_length - prefill.length
        if extra == 0:
            return None
        drafts = self._drafts
        if drafts is None or drafts.count != extra:
            raise RuntimeError(
                f"compress() found {extra} tokens stored after the {prefill.length}-token prompt: call "
                "compress() right after the prefill, before feeding more tokens"
            )
        for layer in self.layers:
            if isinstance(layer, EvictableLayer):
                layer.truncate(prefill.length)
            elif getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys, layer.values = layer.keys[..., :-extra, :], layer.values[..., :-extra, :]
                if hasattr(layer, "cumulative_length"):
                    layer.cumulative_length -= extra
        return drafts

    def _rerun(self, drafts: _Drafts) -> torch.Tensor:
        """Feed the drafts again, now over the compressed prompt, exactly as ``generate`` feeds candidates
        after the prefill; their entries are stored again (and can be cropped)."""
        kwargs = {**drafts.inputs, "attention_mask": drafts.attention_mask, "use_cache": True}
        if drafts.position_ids is not None:
            kwargs["position_ids"] = drafts.position_ids
        out = self._base_model(**kwargs, **{self._cache_kwarg: self})
        return out[0] if isinstance(out, tuple) else out.last_hidden_state

    def _evict_layer(
        self,
        layer_idx: int,
        row_budgets: list[int],
        attention: dict[int, torch.Tensor] | None,
        prefill: _Prefill,
    ) -> None:
        layer = self.layers[layer_idx]
        key_mask = prefill.key_mask.to(layer.keys.device)  # layers may live on several devices
        if not _evicts(row_budgets, key_mask.sum(-1).tolist(), layer.stored_length):
            return
        width = max(row_budgets)
        inputs = LayerInputs(
            layer_idx=layer_idx,
            keys=layer.keys,
            values=layer.values,
            attention=None if attention is None else attention.get(layer_idx),
            key_mask=key_mask,
            budget=width,
        )
        if len(set(row_budgets)) == 1:
            indices, visible = self.scorer.select(inputs), None
        else:
            indices, visible = self._select_rows(inputs, row_budgets)
        layer.keep(indices, kernels.gather_kv, visible)
        self.kept_indices[layer_idx] = indices

    def _select_rows(self, inputs: LayerInputs, row_budgets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows keeping different counts: each row's own top-k (the scorer's selection on that row
        alone), stored with the common width ``max(row_budgets)``; a row that keeps fewer fills its
        leading slots with copies of its first kept entry, marked ``False`` in the returned
        ``visible`` ``[B, width]`` and masked out of attention (:func:`_hide_fillers`)."""
        width = max(row_budgets)
        rows = []
        for b, budget in enumerate(row_budgets):
            row = dataclasses.replace(
                inputs,
                keys=inputs.keys[b : b + 1],
                values=inputs.values[b : b + 1],
                attention=None if inputs.attention is None else inputs.attention[b : b + 1],
                key_mask=inputs.key_mask[b : b + 1],
                budget=budget,
            )
            idx = self.scorer.select(row)
            rows.append(torch.cat([idx[..., :1].expand(-1, -1, width - budget), idx], dim=-1))
        device = inputs.keys.device
        fill = torch.tensor([width - k for k in row_budgets], device=device)
        visible = torch.arange(width, device=device)[None, :] >= fill[:, None]
        return torch.cat(rows), visible

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
        self._drafts = None
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


def _evicts(row_budgets: list[int], real_lengths: list[int], stored: int) -> bool:
    """Whether a layer keeping ``row_budgets`` entries per row drops anything: a row keeps fewer than
    its real tokens, or the stored width shrinks (padding dropped)."""
    return max(row_budgets) < stored or any(k < r for k, r in zip(row_budgets, real_lengths))


def _another_model_error() -> RuntimeError:
    return RuntimeError(
        "this EvictionCache was built for another model instance (a forward of a different model reached "
        "it); create the cache with the model you call: EvictionCache(model, ...)"
    )


def _peek_window(layer: Any, key_states: torch.Tensor, value_states: torch.Tensor):
    """Stored + new entries of a non-evictable layer for the scoring pass (which stores nothing); a
    sliding layer that records its past (assisted decoding) shows only its window, as its mask does."""
    keys, values = layer.keys, layer.values
    window = getattr(layer, "sliding_window", None)
    if getattr(layer, "is_sliding", False) and window and keys.shape[-2] > window - 1:
        keys, values = keys[..., -(window - 1) :, :], values[..., -(window - 1) :, :]
    return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)


def _hide_fillers(mask: Any, layer: EvictableLayer, hidden: torch.Tensor, attn_names: set[str]) -> Any:
    """``mask`` with the filler slots of ``layer`` (rows keeping fewer entries) masked out.

    Boolean masks (sdpa) get ``False``, additive float masks (eager) the dtype's minimum, 2-D padding
    masks (flash attention) a 0; a missing mask (sdpa's causal shortcut) is built causal first.
    """
    query_length = hidden.shape[-2]
    if mask is None:
        num_keys = layer.stored_length + query_length
        visible = layer.visibility(num_keys, query_length)
        if any(name.startswith("flash") for name in attn_names):
            return visible.long()
        causal = torch.ones((query_length, num_keys), dtype=torch.bool, device=visible.device).tril(
            num_keys - query_length
        )
        allowed = causal[None, None] & visible[:, None, None, :]
        return torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device).masked_fill(
            ~allowed, torch.finfo(hidden.dtype).min
        )
    if not isinstance(mask, torch.Tensor):
        raise NotImplementedError(
            f"rows keeping different numbers of entries need eager, sdpa or flash attention, not a "
            f"{type(mask).__name__} mask; use an int budget or attn_implementation='sdpa'"
        )
    visible = layer.visibility(mask.shape[-1], query_length).to(mask.device)
    if mask.ndim == 2:
        return mask * visible.to(mask.dtype)
    visible = visible[:, None, None, :]
    if mask.shape[0] != visible.shape[0]:
        mask = mask.expand(visible.shape[0], *mask.shape[1:])
    if mask.dtype == torch.bool:
        return mask & visible
    return mask.masked_fill(~visible, torch.finfo(mask.dtype).min)


def _cache_kwarg_name(module: nn.Module) -> str:
    """transformers 5.24 renamed the forward argument ``past_key_values`` to ``cache``."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
