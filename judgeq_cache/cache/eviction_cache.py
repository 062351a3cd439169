"""EvictionCache: a DynamicCache that prunes the prompt's KV right after prefill.

As in transformers' ``cache_utils``, the cache is a list of layers (:mod:`.layers`); beside them it
holds two small state records (:mod:`.state`: the prompt's, the running forward's), what it knows
of its model (:class:`~.state.ModelBinding`), its scorer, budget and triggers. It is passive: the
model's hooks call its ``on_*`` methods, which hand over to :mod:`.forwards`; how it evicts lives in
:mod:`.compression`, when in :mod:`.triggers` (``docs/architecture.md`` draws the data flow).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from .. import tensor_parallel, utils
from ..scorers import Scorer, make_scorer
from . import compression, copies, forwards, hooks, rows, triggers
from .budget import Budget
from .capture import AttentionCapture, QueryPlan, attention_modules
from .guards import another_model_error, closed_error
from .layers import EvictableLayer, peek_layer, query_length
from .schedule import DecodeEvery, Trigger, make_triggers
from .state import ForwardState, ModelBinding, PromptState


class EvictionCache(DynamicCache):
    """A drop-in ``DynamicCache`` that keeps only the best ``budget`` prompt entries per KV head.

    When the first forward into the empty cache (the prefill) returns, ``scorer`` scores every
    prompt entry of every full-attention layer; the top ``budget`` per KV head are kept in their
    original order and the rest are physically dropped. Decoding then continues from the original
    positions, whether the forward came from ``generate`` or from a direct ``model(...)`` call.
    Sliding-window layers (Gemma-3 style) already hold only a window and are left alone.

    A chunked prefill is evicted after every chunk (:meth:`chunked_prefill`), later forwards when a
    trigger says so. Candidates of assisted decoding are set aside and run again over the compressed
    prompt (:mod:`.prefill_record`); what ``generate`` does not pass to the model comes from a thin
    wrapper on ``model.generate`` (:mod:`.generate_call`).

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
    auto_compress : bool
        Compress automatically when the prefill returns (default). With ``False``, call
        :meth:`compress` yourself (or use :meth:`appended_attention` for analysis and training).
    decode_every : int or None
        Decode-time eviction: every ``decode_every`` tokens added after the prefill, score the stored
        entries again and evict back to ``budget``, keeping the scorer's ``decode_recent_tokens``
        newest entries; the cache then stores at most ``max(budget, kept prompt) + decode_every - 1 + T``
        entries per KV head (``T``: the largest forward after the prefill; see :class:`~.schedule.DecodeEvery`).
        ``None`` (default): evict once, at the prefill, as the paper does.
    triggers : sequence of Trigger
        More decode-time triggers (:class:`~judgeq_cache.schedule.Trigger` plug-ins, each one class;
        ``decode_every=N`` is ``DecodeEvery(N)``): after the prefill, the cache evicts as above
        whenever one of them says so.
    **scorer_options
        Passed to the scorer's constructor (e.g. ``window_size=16``).

    Attributes
    ----------
    kept_indices, prompt_length, compression_seconds
        Read from :attr:`state` (:class:`~.state.PromptState` documents them).
    state, forward, binding : PromptState, ForwardState, ModelBinding
        The prompt's state, the running forward's, and what the cache knows of its model (:mod:`.state`).

    The ``on_*`` methods are the hook protocol (:mod:`.hooks`), called by the model's hooks, not by users.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        budget: int | float | Budget,
        scorer: str | Scorer = "snapkv",
        *,
        auto_compress: bool = True,
        decode_every: int | None = None,
        triggers: Sequence[Trigger] = (),
        **scorer_options: Any,
    ) -> None:
        if not isinstance(model, PreTrainedModel):
            raise TypeError(
                f"EvictionCache needs a transformers PreTrainedModel, got {type(model).__name__}; "
                "load it with AutoModelForCausalLM.from_pretrained(...)"
            )
        self.budget = Budget.parse(budget)
        self.scorer = tensor_parallel.bind(make_scorer(scorer, **scorer_options), model)
        if not attention_modules(model):
            raise TypeError(
                f"{type(model).__name__} has no attention modules following transformers' standard attention "
                "interface (modules named *Attention with a layer_idx); eviction cannot score this model"
            )
        super().__init__(config=model.config)
        reserve = self.scorer.appended_length() if auto_compress else 0
        self.layers = [
            EvictableLayer(reserve) if type(layer) is DynamicLayer else layer for layer in self.layers
        ]
        evictable = tuple(i for i, layer in enumerate(self.layers) if isinstance(layer, EvictableLayer))
        if not evictable:
            raise TypeError(
                "this model has no full-attention layers to evict (all layers are sliding-window)"
            )
        self.binding = ModelBinding.of(model, evictable)
        self.auto_compress = auto_compress
        self.state = PromptState()
        self.forward = ForwardState()
        self._triggers: list[Trigger] = make_triggers(decode_every, triggers)
        self._closed = False
        hooks.attach(self, model, self.binding.base_model)

    # ------------------------------------------------------------------ cache API
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self.forward.scoring_pass:  # attend over stored + new, store nothing
            return peek_layer(self.layers[layer_idx], key_states, value_states)
        if self.state.prefill is None or self.forward.depth == 0:
            raise closed_error() if self._closed else another_model_error()
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def get_mask_sizes(self, query: int | torch.Tensor, layer_idx: int, *args, **kwargs) -> tuple[int, int]:
        layer = self.layers[layer_idx] if layer_idx < len(self.layers) else None
        if isinstance(layer, EvictableLayer) and self.ragged:
            # One mask serves all full-attention layers: size it for the longest; the attention hook
            # right-slices it per layer (see attention_masks.fit_attention_mask).
            stored = max(self.layers[i].stored_length for i in self.binding.evictable)
            return stored + query_length(query), layer.get_seq_length() - stored
        return super().get_mask_sizes(query, layer_idx, *args, **kwargs)

    @property
    def ragged(self) -> bool:
        """Whether the evictable layers store different numbers of entries (per-layer budgets)."""
        return len({self.layers[i].stored_length for i in self.binding.evictable}) > 1

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        rows.map_rows(
            self.state, lambda t: t.index_select(0, beam_idx.to(t.device)), rows.batch_rows(self.state)
        )

    def batch_repeat_interleave(self, repeats: int) -> None:
        before = rows.batch_rows(self.state)
        super().batch_repeat_interleave(repeats)
        rows.map_rows(self.state, lambda t: t.repeat_interleave(repeats, dim=0), before)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        rows.map_rows(self.state, lambda t: t[indices.to(t.device)], rows.batch_rows(self.state))

    def kv_bytes(self) -> int:
        """Bytes of keys and values stored right now, all layers."""
        return utils.kv_bytes(self)

    def reset(self) -> None:
        super().reset()
        self.state = PromptState()
        for trigger in self._triggers:
            trigger.reset()

    # ------------------------------------------------------------------ the hook protocol
    def on_model_call(self, module: nn.Module, kwargs: dict[str, Any] | None) -> None:
        forwards.model_call(self, module, kwargs)

    def on_forward_start(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        forwards.forward_start(self, module, args, kwargs)

    def on_forward_end(self, module: nn.Module, succeeded: bool, output: Any = None) -> None:
        forwards.forward_end(self, module, succeeded, output)

    def on_attention_call(self, module: nn.Module, kwargs: dict[str, Any], hidden: Any) -> None:
        forwards.attention_call(self, module, kwargs, hidden)

    # ------------------------------------------------------------------ public surface
    @property
    def kept_indices(self) -> dict[int, torch.Tensor]:
        """Logical positions each evicted layer kept at its last eviction, ``[B, Hkv, k]``, in order; a
        row keeping fewer than ``k`` repeats its first one in its leading (masked) filler slots."""
        return self.state.kept_indices

    @property
    def prompt_length(self) -> int:
        """Tokens in the prompt (0 before the prefill; in a chunked prefill, the chunks so far)."""
        return self.state.prompt_length

    @property
    def compression_seconds(self) -> float:
        """Time spent scoring and evicting the prompt held now (all its evictions)."""
        return self.state.compression_seconds

    @property
    def is_compressed(self) -> bool:
        """Whether the compression step is done (whether or not it evicted anything)."""
        return self.state.compressed

    @property
    def evictable_layers(self) -> tuple[int, ...]:
        """Indices of the full-attention layers this cache scores and evicts."""
        return self.binding.evictable

    @property
    def cache_kwarg(self) -> str:
        """The forward argument this cache is passed as (``"cache"`` on transformers >= 5.24)."""
        return self.binding.cache_kwarg

    @property
    def prefill_mask(self) -> torch.Tensor | None:
        """``[B, N]`` bool over the prefilled prompt, ``False`` on padding (None before the prefill);
        the cache's own tensor, to read, not to modify."""
        return None if self.state.prefill is None else self.state.prefill.key_mask

    @property
    def decode_every(self) -> int | None:
        """Tokens between decode-time evictions (None: evict once, at the prefill)."""
        every = [t.every for t in self._triggers if isinstance(t, DecodeEvery)]
        return every[0] if every else None

    @property
    def triggers(self) -> tuple[Trigger, ...]:
        """When the compressed cache evicts again (``decode_every=N`` is ``DecodeEvery(N)``)."""
        return tuple(self._triggers)

    def compress(
        self,
        attention: dict[int, torch.Tensor] | None = None,
        window: dict[int, torch.Tensor] | None = None,
    ) -> None:
        """Score the prefilled prompt and keep the top entries per KV head (done automatically after
        prefill unless ``auto_compress=False``). ``attention`` overrides the captured attention;
        ``window`` is the last prompt queries' attention for scorers that mix it in
        (:meth:`~judgeq_cache.scorers.Scorer.captured_window`)."""
        compression.compress(self, attention, window)

    def appended_attention(self, inputs: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Mean attention ``{layer: [B, Hkv, N]}`` of extra tokens run right after the prompt.

        ``inputs`` holds ``input_ids`` or ``inputs_embeds`` ``[B, m, ...]``. The tokens attend to the
        prefilled prompt (and causally to each other) at the positions that follow it; nothing is
        stored and no logits are computed. Runs under the caller's grad mode, so soft rows can be
        trained through it.
        """
        self.check_uncompressed_prefill("appended_attention")
        masks = {i: compression.stored_mask(self, i) for i in self.binding.evictable}
        return compression.appended_scores(self, inputs, masks)

    def scoring_pass(self) -> contextlib.AbstractContextManager[None]:
        """Forwards inside this block attend over the cache but store nothing in it."""
        return self.forward.scoring()

    def chunked_prefill(self) -> contextlib.AbstractContextManager[EvictionCache]:
        """Every forward into this empty cache inside the block is one chunk of the prefill, evicted
        back to the budget when it returns (stored entries never exceed budget + chunk); the prefill
        ends with the block. A left-padded row equals that row run alone with the same chunk size
        only when its padding is a multiple of the chunk (:func:`.triggers.chunked_prefill`)."""
        return triggers.chunked_prefill(self)

    def close(self) -> None:
        """Release the model: when no other open cache of it is left, every hook of this package on it
        is removed (also done on leaving ``with EvictionCache(...) as cache:``)."""
        self._closed = True
        hooks.detach(self, self.binding.base_model)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> EvictionCache:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __deepcopy__(self, memo: dict[int, Any]) -> EvictionCache:
        """A copy with its own keys, values and state that keeps the same model and scorer (what
        transformers documents for prefix reuse: ``copy.deepcopy(prompt_cache)``)."""
        return copies.deep_copy(self, memo)

    def query_capture(
        self, query_slice: slice, causal_offset: int, num_out: int, key_mask: torch.Tensor | None
    ) -> AttentionCapture:
        """A context manager scoring ``query_slice`` of every evictable layer's attention calls (see
        :class:`~judgeq_cache.capture.QueryPlan`); ``.scores`` holds ``{layer: [B, Hkv, num_out]}``."""
        plan = QueryPlan(query_slice, causal_offset, num_out, key_mask, frozenset(self.binding.evictable))
        return AttentionCapture(self.binding.attention_modules, plan)

    def load_prefill(
        self,
        keys_values: list[tuple[torch.Tensor, torch.Tensor]],
        key_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> None:
        """Adopt an already computed prompt KV (one ``(keys, values)`` ``[B, Hkv, N, D]`` per layer)
        as this cache's prefill, as if the prompt had just run through the model; nothing is
        compressed (call :meth:`compress`, or use :meth:`appended_attention`)."""
        copies.load_prefill(self, keys_values, key_mask, position_ids)

    def fork(
        self,
        budget: int | float | Budget | None = None,
        scorer: str | Scorer | None = None,
        **scorer_options: Any,
    ) -> EvictionCache:
        """An uncompressed ``EvictionCache(auto_compress=False)`` copy of this prefilled, not yet compressed
        cache: same model and prefill, its own copy of every entry, and ``budget``/``scorer`` where
        given (else this cache's; a JudgeQCache's scorer carries its adapter). Compress the copy with
        :meth:`compress` or :meth:`skip_compression`; this cache is left as it is, so one prefill
        serves many copies.

        On a compressed cache, ``fork()`` without arguments is a branch for prefix reuse: a copy with
        its own entries and state, same model, budget and scorer (``copy.deepcopy(cache)``)."""
        return copies.fork(self, EvictionCache, budget, scorer, **scorer_options)

    def skip_compression(self) -> None:
        """Finish a prefilled cache without evicting anything (the full-cache baseline): it counts as
        compressed, later forwards append, and :meth:`compress` refuses."""
        self.check_uncompressed_prefill("skip_compression")
        self.state.compressed = True
        self.state.drafts = self.state.prefill_trigger = None

    @staticmethod
    def stack(caches: Sequence[EvictionCache]) -> EvictionCache:
        """One compressed cache whose batch rows are ``caches``' rows, in order, to decode them in one
        forward (rows never interact: the result equals decoding each alone). The caches must be
        compressed, built for one model from prompts of one length, and store the same number of
        entries in each layer; they are left as they are. The result has no ``kept_indices``."""
        return copies.stack(caches, EvictionCache)

    def check_uncompressed_prefill(self, what: str) -> None:
        """Refuse ``what`` unless the cache holds a prefilled, not yet compressed prompt."""
        if self.state.prefill is None or self.state.compressed:
            raise RuntimeError(f"{what} needs a prefilled, not yet compressed cache")
        if self.state.chunking:
            raise RuntimeError(f"{what} cannot run inside a chunked prefill (after a chunk was evicted)")


# The public import path (``from judgeq_cache.cache import EvictionCache``), also for pickling.
EvictionCache.__module__ = "judgeq_cache.cache"
