"""EvictionCache: a DynamicCache that prunes the prompt's KV right after prefill.

As in transformers' ``cache_utils``, the cache is a list of layers (:mod:`.layers`). This module holds
the class and its public surface; what it does on each forward lives in :mod:`.compression` and
:mod:`.triggers` (see ``docs/architecture.md`` for the data flow and every module's one job).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from .. import tensor_parallel, utils
from ..scorers import Scorer, make_scorer
from . import hooks
from .budget import Budget
from .capture import AttentionCapture, QueryPlan, attention_implementations, attention_modules
from .compression import PromptCompression
from .guards import another_model_error, closed_error
from .layers import EvictableLayer, copy_layer, peek_layer, query_length
from .prefill_record import Drafts, PrefillRecord, load_layers
from .rows import BatchRows, stack_caches
from .schedule import DecodeEvery, Trigger, make_triggers
from .triggers import ChunkedPrefill, QueryScores


class EvictionCache(PromptCompression, BatchRows, DynamicCache):
    """A drop-in ``DynamicCache`` that keeps only the best ``budget`` prompt entries per KV head.

    When the first forward into the empty cache (the prefill) returns, ``scorer`` scores every
    prompt entry of every full-attention layer; the top ``budget`` per KV head are kept in their
    original order and the rest are physically dropped. Decoding then continues from the original
    positions, whether the forward came from ``generate`` or from a direct ``model(...)`` call.
    Sliding-window layers (Gemma-3 style) already hold only a window and are left alone.

    Assisted decoding and prompt lookup put candidate tokens into the prefill forward (``generate``
    asks for their logits, ``logits_to_keep = candidates + 1``): only the prompt before them is
    compressed, and they are run again over the compressed prompt, so their logits and entries are
    those of a forward after compression and ``generate`` can crop the rejected ones.

    A chunked prefill is evicted after every chunk (:meth:`chunked_prefill`); see ``decode_every`` and
    ``triggers`` for eviction after the prefill. What ``generate`` does not pass to the model
    (``prefill_chunk_size``, candidates) comes from a thin wrapper on ``model.generate``
    (:mod:`.generate_call`), never guessed; query capture is per thread; :meth:`close` removes the hooks.

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
        Decode-time eviction: every ``decode_every`` tokens added after the prefill (generated tokens,
        later questions), score the stored entries again and evict back to ``budget`` (an ``int`` as
        it is; a fraction of each row's prompt length), always keeping the scorer's
        ``decode_recent_tokens`` newest entries (Judge Q: half of each layer's budget). The cache
        then never stores more than ``max(budget, kept prompt) + decode_every - 1 + T`` entries per
        KV head, ``T`` the tokens of the largest forward after the prefill (so ``+ decode_every``
        when decoding token by token; a 10-token question right after ``decode_every - 1`` decoded
        tokens reaches the bound). ``None`` (default): evict once, at the prefill, as the paper does.
    triggers : sequence of Trigger
        More decode-time triggers (:class:`~judgeq_cache.schedule.Trigger` plug-ins, each one class;
        ``decode_every=N`` is ``DecodeEvery(N)``): after the prefill, the cache evicts as above
        whenever one of them says so.
    **scorer_options
        Passed to the scorer's constructor (e.g. ``window_size=16``).

    Attributes
    ----------
    kept_indices : dict[int, Tensor]
        Logical positions kept by each evicted layer at its last eviction, ``[B, Hkv, k]`` in original
        order (prompt positions after a one-shot prefill). In a padded
        batch whose rows keep different counts, ``k`` is the largest; a row that keeps fewer repeats its
        first kept position in its leading (masked) filler slots.
    prompt_length : int
        Tokens in the compressed prompt (0 before prefill; in a chunked prefill, the chunks so far).

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
        self._evictable = [i for i, layer in enumerate(self.layers) if isinstance(layer, EvictableLayer)]
        if not self._evictable:
            raise TypeError(
                "this model has no full-attention layers to evict (all layers are sliding-window)"
            )
        self._model = model
        self._base_model = model.base_model
        self._attn_names = attention_implementations(model)
        self._attention_modules = attention_modules(self._base_model)
        self._attention_by_layer = {m.layer_idx: m for m in self._attention_modules}
        self._hidden_states: dict[int, torch.Tensor] = {}
        self._closed = False
        self._cache_kwarg = utils.cache_kwarg(self._base_model)
        self.auto_compress = auto_compress
        self.kept_indices: dict[int, torch.Tensor] = {}
        self.prompt_length = 0
        self.compression_seconds = 0.0
        self._prefill: PrefillRecord | None = None
        self._capture: AttentionCapture | None = None
        self._window: dict[int, torch.Tensor] | None = None
        self._compressed = False
        self._dry = False
        self._drafts: Drafts | None = None
        self._logits_to_keep: Any = None
        self._forward_depth = 0
        self._prefill_failed = False
        self._chunks: ChunkedPrefill | None = None
        self._manual_chunks = False
        self._triggers: list[Trigger] = make_triggers(decode_every, triggers)
        self._decode_scores = QueryScores()
        self._decode_budgets: list[list[int]] | None = None
        self._step: PrefillRecord | None = None
        hooks.attach(self, model, self._base_model)

    # ------------------------------------------------------------------ cache API
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self._dry:  # scoring pass: attend over stored + new, store nothing
            return peek_layer(self.layers[layer_idx], key_states, value_states)
        if self._prefill is None or self._forward_depth == 0:
            raise closed_error() if self._closed else another_model_error()
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)

    def get_mask_sizes(self, query: int | torch.Tensor, layer_idx: int, *args, **kwargs) -> tuple[int, int]:
        layer = self.layers[layer_idx] if layer_idx < len(self.layers) else None
        if isinstance(layer, EvictableLayer) and self._ragged:
            # One mask serves all full-attention layers: size it for the longest; the attention hook
            # right-slices it per layer (see attention_masks.fit_attention_mask).
            stored = max(self.layers[i].stored_length for i in self._evictable)
            return stored + query_length(query), layer.get_seq_length() - stored
        return super().get_mask_sizes(query, layer_idx, *args, **kwargs)

    @property
    def _ragged(self) -> bool:
        lengths = {self.layers[i].stored_length for i in self._evictable}
        return len(lengths) > 1

    def kv_bytes(self) -> int:
        """Bytes of keys and values stored right now, all layers."""
        return utils.kv_bytes(self)

    def reset(self) -> None:
        super().reset()
        self.kept_indices = {}
        self.prompt_length = 0
        self.compression_seconds = 0.0
        self._prefill_failed = False
        self._hidden_states = {}
        self._prefill = None
        self._drafts = None
        self._window = None
        self._compressed = False
        self._chunks = None
        self._decode_budgets = None
        self._decode_scores.clear()
        for trigger in self._triggers:
            trigger.reset()

    @property
    def decode_every(self) -> int | None:
        """Tokens between decode-time evictions (None: evict once, at the prefill)."""
        every = [t.every for t in self._triggers if isinstance(t, DecodeEvery)]
        return every[0] if every else None

    @property
    def triggers(self) -> tuple[Trigger, ...]:
        """When the compressed cache evicts again (``decode_every=N`` is ``DecodeEvery(N)``)."""
        return tuple(self._triggers)

    def close(self) -> None:
        """Release the model: when no other open cache of it is left, every hook this package put on
        it (forward hooks, attention hooks, the ``generate`` wrapper) is removed. The cache can no
        longer be used with the model afterwards. Also done on leaving ``with EvictionCache(...) as
        cache:``."""
        self._closed = True
        hooks.detach(self, self._base_model)

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
        for shared in (self._model, self._base_model, self.scorer, *self._attention_modules):
            memo[id(shared)] = shared
        twin = type(self).__new__(type(self))
        memo[id(self)] = twin
        for name, value in vars(self).items():
            object.__setattr__(twin, name, copy.deepcopy(value, memo))
        if not self._closed:
            hooks.attach(twin, self._model, self._base_model)
        return twin

    # ------------------------------------------------------------------ public surface
    @property
    def is_compressed(self) -> bool:
        """Whether the compression step is done (whether or not it evicted anything)."""
        return self._compressed

    @property
    def evictable_layers(self) -> tuple[int, ...]:
        """Indices of the full-attention layers this cache scores and evicts."""
        return tuple(self._evictable)

    @property
    def cache_kwarg(self) -> str:
        """The forward argument this cache is passed as (``"cache"`` on transformers >= 5.24)."""
        return self._cache_kwarg

    @property
    def prefill_mask(self) -> torch.Tensor | None:
        """``[B, N]`` bool over the prefilled prompt, ``False`` on padding (None before the prefill);
        the cache's own tensor, to read, not to modify."""
        return None if self._prefill is None else self._prefill.key_mask

    def query_capture(
        self, query_slice: slice, causal_offset: int, num_out: int, key_mask: torch.Tensor | None
    ) -> AttentionCapture:
        """A context manager scoring ``query_slice`` of every evictable layer's attention calls (see
        :class:`~judgeq_cache.capture.QueryPlan`); ``.scores`` holds ``{layer: [B, Hkv, num_out]}``."""
        plan = QueryPlan(query_slice, causal_offset, num_out, key_mask, self._layer_set())
        return AttentionCapture(self._attention_modules, plan)

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
        self._prefill = load_layers(self.layers, keys_values, key_mask, position_ids)
        self.prompt_length = self._prefill.length

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
        if self._compressed and budget is None and scorer is None and not scorer_options:
            return copy.deepcopy(self)
        if self._compressed:
            raise RuntimeError(
                "fork needs a prefilled, not yet compressed cache to take another budget or scorer; "
                "fork() without arguments branches a compressed cache as it is"
            )
        self._check_uncompressed_prefill("fork")
        twin = EvictionCache(
            self._model,
            self.budget if budget is None else budget,
            self.scorer if scorer is None else scorer,
            auto_compress=False,
            **scorer_options,
        )
        twin.layers = [copy_layer(layer) for layer in self.layers]
        twin._prefill, twin._drafts, twin._window = self._prefill, self._drafts, self._window
        twin._hidden_states = dict(self._hidden_states)
        twin.prompt_length = self.prompt_length
        return twin

    def skip_compression(self) -> None:
        """Finish a prefilled cache without evicting anything (the full-cache baseline): it counts as
        compressed, later forwards append, and :meth:`compress` refuses."""
        self._check_uncompressed_prefill("skip_compression")
        self._compressed = True
        self._drafts = None

    @staticmethod
    def stack(caches: Sequence[EvictionCache]) -> EvictionCache:
        """One compressed cache whose batch rows are ``caches``' rows, in order, to decode them in one
        forward (rows never interact: the result equals decoding each alone). The caches must be
        compressed, built for one model from prompts of one length, and store the same number of
        entries in each layer; they are left as they are. The result has no ``kept_indices``."""
        return stack_caches(
            caches, lambda first: EvictionCache(first._model, first.budget, first.scorer, auto_compress=False)
        )

    def _check_uncompressed_prefill(self, what: str) -> None:
        if self._prefill is None or self._compressed:
            raise RuntimeError(f"{what} needs a prefilled, not yet compressed cache")
        if self._chunks is not None:
            raise RuntimeError(f"{what} cannot run inside a chunked prefill (after a chunk was evicted)")

    def _layer_set(self) -> frozenset[int]:
        return frozenset(self._evictable)


# The public import path (``from judgeq_cache.cache import EvictionCache``), also for pickling.
EvictionCache.__module__ = "judgeq_cache.cache"
