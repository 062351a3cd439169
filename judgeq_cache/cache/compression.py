"""When and how an :class:`~judgeq_cache.cache.EvictionCache` compresses its prompt.

:class:`PromptCompression` is the part of the cache that reacts to forwards (the hook protocol of
:mod:`judgeq_cache.hooks`): the first forward into the empty cache is recorded as the prefill (the
prompt's queries are captured if the scorer reads them), and when it returns the prompt is scored
and evicted, the drafts of assisted decoding run again over the compressed prompt. The same path
(:meth:`~PromptCompression._evict_stored`) runs after each chunk of a chunked prefill and every
``decode_every`` tokens; :mod:`judgeq_cache.triggers` says when. It also holds the scoring pass
(:meth:`~PromptCompression.appended_attention`, run in :meth:`~PromptCompression.dry_run` mode) and
:meth:`~PromptCompression.compress`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..scorers import Scorer
from . import eviction, triggers
from .attention_masks import fit_attention_mask
from .budget import Budget
from .capture import AttentionCapture, QueryPlan
from .guards import another_model_error, check_generate_mode, uses_candidates
from .layers import EvictableLayer
from .prefill_record import (
    Drafts,
    PrefillRecord,
    read_prefill_call,
    rerun_drafts,
    set_aside_drafts,
)
from .schedule import Trigger

logger = logging.getLogger(__name__)


class PromptCompression(triggers.EvictionTriggers):
    """Mixin of :class:`~judgeq_cache.cache.EvictionCache`: the prefill's lifecycle and compression.

    The state it reads and writes (annotated below) is set up by ``EvictionCache.__init__``; it also
    calls the cache's ``get_seq_length``, ``query_capture``, ``_ragged`` and ``_check_uncompressed_prefill``.
    """

    layers: list[Any]
    budget: Budget
    scorer: Scorer
    auto_compress: bool
    kept_indices: dict[int, torch.Tensor]
    prompt_length: int
    compression_seconds: float
    _model: nn.Module
    _base_model: nn.Module
    _evictable: list[int]
    _attn_names: set[str]
    _attention_modules: list[nn.Module]
    _cache_kwarg: str
    _prefill: PrefillRecord | None
    _drafts: Drafts | None
    _capture: AttentionCapture | None
    _window: dict[int, torch.Tensor] | None  # last prompt queries' attention for hybrid scorers
    _compressed: bool
    _dry: bool
    _logits_to_keep: Any
    _forward_depth: int
    _prefill_failed: bool
    _hidden_states: dict[int, torch.Tensor]
    _attention_by_layer: dict[int, nn.Module]
    _chunks: triggers.ChunkedPrefill | None
    _manual_chunks: bool
    _triggers: list[Trigger]
    _decode_scores: triggers.QueryScores
    _decode_budgets: list[list[int]] | None
    _step: PrefillRecord | None

    def on_model_call(self, module: nn.Module, kwargs: dict[str, Any] | None) -> None:
        """The head's forward starts (``kwargs``) or ends (None): remember its ``logits_to_keep``."""
        if module is self._model:
            self._logits_to_keep = None if kwargs is None else kwargs.get("logits_to_keep")

    def on_forward_start(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """The decoder's forward starts; the first one into the empty cache is the prefill, later ones
        are prefill chunks (in a chunked prefill) or tokens added after it."""
        if module is not self._base_model:
            raise another_model_error()
        if self._forward_depth and not self._dry:
            self._abandon_forward()  # the last forward never returned (a KeyboardInterrupt skips hooks)
        if self._prefill_failed and not self._dry:
            raise RuntimeError(
                "the prefill forward into this cache raised an exception and left it half filled; "
                "call cache.reset() before running the prompt again"
            )
        self._forward_depth += 1
        if self._dry:
            return
        if self._prefill is None and self.get_seq_length() == 0:
            self._start_prefill(args, kwargs)
        elif self._prefill is not None and (self._chunks is not None or self._compressed):
            self._start_step(args, kwargs)

    def _start_prefill(self, args: tuple, kwargs: dict[str, Any]) -> None:
        # Only a generate call that verifies candidates puts them at the end of the prefill forward;
        # a direct call's logits_to_keep selects logits and nothing else.
        candidates = uses_candidates(self._model)
        prefill, drafts = read_prefill_call(args, kwargs, self._logits_to_keep if candidates else None)
        if self._manual_chunks:
            self._chunks = triggers.ChunkedPrefill(None)
        else:
            self._chunks = triggers.generate_chunks(self._model, prefill.length)
        chunked = self._chunks is not None
        would_evict = chunked or eviction.any_evicts(self._row_budgets(prefill), prefill)
        evicts = self.auto_compress and would_evict
        if evicts or self._triggers:
            count = 0 if drafts is None else drafts.count
            check_generate_mode(
                self._model, self.layers, count, chunked=chunked, evicts_later=bool(self._triggers)
            )
        self._prefill, self._drafts = prefill, drafts
        self.prompt_length = n = prefill.length
        need = self.scorer.queries()
        # A hybrid scorer's window is captured even with auto_compress=False: a later compress() needs it.
        if (evicts and need.prompt) or (need.hybrid and would_evict):
            window = n if need.every_query else min(need.last or n, n)
            key_mask = prefill.forward_key_mask(drafts)
            self._capture = self.query_capture(slice(n - window, n), n - window, n, key_mask).__enter__()

    def _abandon_forward(self) -> None:
        """Forget a forward that raised past the hooks: its capture ends, a prefill counts as failed."""
        self._forward_depth = 0
        capture, self._capture, self._step = self._capture, None, None
        if capture is not None:
            capture.__exit__(None, None, None)
        if self._prefill is not None and not self._compressed:
            self._prefill_failed = True

    def on_forward_end(self, module: nn.Module, succeeded: bool, output: Any = None) -> None:
        """The decoder's forward returned (or raised): compress after the prefill (after each chunk of
        a chunked prefill), evict when decode-time eviction is due."""
        if module is not self._base_model:
            return
        self._forward_depth = max(0, self._forward_depth - 1)
        if self._dry or self._prefill is None:
            return
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.__exit__(None, None, None)
        step, self._step = self._step, None
        captured = capture.scores if capture is not None and succeeded else None
        appended = self.scorer.queries().appended
        if self._compressed:
            if succeeded and step is not None:
                self._after_decode_step(step, captured)
            return
        if appended:
            self._window = captured
        if not succeeded:
            self._prefill_failed = True  # half filled: only reset() can make it usable again
            return
        if self._chunks is not None:
            self._after_chunk(None if appended else captured)
            return
        if self.auto_compress:
            with torch.no_grad():
                hidden = self._compress(None if appended else captured)
                if hidden is not None and output is not None:
                    # The drafts' hidden states, recomputed over the compressed prompt (see _compress).
                    last = output[0] if isinstance(output, tuple) else output.last_hidden_state
                    last[:, -hidden.shape[1] :] = hidden.to(last.dtype)

    def on_attention_call(self, module: nn.Module, kwargs: dict[str, Any], hidden: Any) -> None:
        """An attention module of the model is called: fit its mask to its layer's stored entries."""
        layer_idx = getattr(module, "layer_idx", None)
        if not isinstance(layer_idx, int) or layer_idx >= len(self.layers):
            return
        layer = self.layers[layer_idx]
        if isinstance(layer, EvictableLayer) and isinstance(hidden, torch.Tensor):
            fit_attention_mask(layer, kwargs, hidden, self._ragged, self._attn_names)
            prefill = not (self._dry or self._compressed or self._chunks is not None)
            if prefill and self.scorer.needs_hidden_states and layer_idx in self._evictable:
                self._hidden_states[layer_idx] = hidden.detach()  # kvpress-style scorers read them

    # ------------------------------------------------------------------ scoring and eviction
    def _row_budgets(self, prefill: PrefillRecord) -> list[list[int]]:
        """Entries kept per KV head, ``[layer][row]``: the budget applies to each row's real length."""
        return eviction.row_budgets(self.scorer, self.budget, prefill, len(self._evictable))

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
        self._check_uncompressed_prefill("appended_attention")
        return self._appended_scores(inputs, {i: self._stored_mask(i) for i in self._evictable})

    def _appended_scores(
        self, inputs: dict[str, torch.Tensor], masks: dict[int, torch.Tensor]
    ) -> dict[int, torch.Tensor]:
        """:meth:`appended_attention` over whatever the cache stores now (``masks``: ``{layer: [B,
        stored]}``, ``False`` on padding and fillers), scoring the stored entries."""
        record = self._prefill
        count = next(iter(inputs.values())).shape[1]
        seen = self.get_seq_length()
        ones = record.key_mask.new_ones((record.key_mask.shape[0], seen - record.length + count))
        logical_mask = torch.cat([record.key_mask, ones], dim=-1)  # what the model's mask code indexes
        key_masks = {i: torch.cat([m, ones[:, -count:].to(m.device)], dim=-1) for i, m in masks.items()}
        plan = QueryPlan(slice(None), None, None, key_masks, self._layer_set(), exclude_tail=count, fuse=True)
        capture = AttentionCapture(self._attention_modules, plan)
        with self.dry_run(), capture:
            self._base_model(
                **inputs,
                attention_mask=logical_mask.long(),
                position_ids=record.next_positions(count, seen),
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

    def compress(
        self,
        attention: dict[int, torch.Tensor] | None = None,
        window: dict[int, torch.Tensor] | None = None,
    ) -> None:
        """Score the prefilled prompt and keep the top entries per KV head (done automatically after
        prefill unless ``auto_compress=False``). ``attention`` overrides the captured attention;
        ``window`` is the last prompt queries' attention for scorers that mix it in
        (:meth:`~judgeq_cache.scorers.Scorer.captured_window`)."""
        self._compress(attention, window)

    def _compress(
        self, attention: dict[int, torch.Tensor] | None, window: dict[int, torch.Tensor] | None = None
    ) -> torch.Tensor | None:
        """:meth:`compress`; returns the drafts' hidden states recomputed over the compressed prompt
        (``[B, c, hidden]``) when the prefill forward carried candidate tokens, else None."""
        if self._prefill is None:
            raise RuntimeError("nothing to compress: run the prompt through the model with this cache first")
        if self._compressed:
            raise RuntimeError("this cache was already compressed")
        window = self._window if window is None else window
        start = time.perf_counter()
        prefill = self._prefill
        budgets = self._row_budgets(prefill)
        hidden = None
        if eviction.any_evicts(budgets, prefill):
            drafts = set_aside_drafts(self.layers, prefill, self._drafts)
            self._evict_stored(budgets, attention, window)
            self._compressed = True
            if drafts is not None:
                hidden = rerun_drafts(self._base_model, self._cache_kwarg, self, drafts)
        self._compressed = True
        self._drafts = None
        self._hidden_states = {}
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

    def _stored_mask(self, layer_idx: int, new: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, stored (+ new)]`` bool over a layer's stored entries (and ``new`` tokens' mask)."""
        mask = eviction.stored_key_mask(self.layers[layer_idx], self._prefill)
        return mask if new is None else torch.cat([mask, new.to(mask.device)], dim=-1)

    def _evict_stored(
        self,
        budgets: list[list[int]],
        attention: dict[int, torch.Tensor] | None,
        window: dict[int, torch.Tensor] | None = None,
        scorer: Scorer | None = None,
    ) -> None:
        """The one eviction path of every trigger: each evictable layer keeps ``budgets`` (``[layer][row]``)
        of the entries it stores now, chosen by ``scorer`` (default: the cache's; ``attention``: captured
        scores over the stored entries; the scoring pass runs here for scorers with appended tokens;
        ``window``: the last queries' attention that hybrid scorers mix in)."""
        scorer = self.scorer if scorer is None else scorer
        masks = {i: self._stored_mask(i) for i in self._evictable}
        due = [
            (i, rows)
            for i, rows in zip(self._evictable, budgets)
            if eviction.evicts(rows, masks[i].sum(-1).tolist(), self.layers[i].stored_length)
        ]
        if not due:
            return
        need = scorer.queries()
        if attention is None and need.appended:
            rows = self._prefill.key_mask.shape[0]
            attention = self._appended_scores(scorer.appended_inputs(rows, self._base_model), masks)
        if attention is None and need.any:
            raise RuntimeError(
                f"scorer {scorer.name!r} needs the prompt's queries, which are captured during the "
                "prefill forward; with auto_compress=False pass them to compress(attention=...)"
            )
        for layer_idx, rows in due:
            layer = self.layers[layer_idx]
            positions = eviction.stored_positions(layer, self.kept_indices.get(layer_idx))
            scores = None if attention is None else attention.get(layer_idx)
            recent = None if window is None else window.get(layer_idx)
            hidden = self._hidden_states.get(layer_idx)
            if hidden is not None and hidden.shape[1] != layer.stored_length:
                hidden = hidden[:, : layer.stored_length] if not self._compressed else None
            kept = eviction.evict_layer(
                layer_idx,
                layer,
                rows,
                scorer,
                scores,
                masks[layer_idx],
                recent,
                module=self._attention_by_layer.get(layer_idx),
                hidden_states=hidden,
            )
            if kept is None:
                continue
            if positions is None:  # a stacked cache: the positions of its kept slots are not known
                self.kept_indices.pop(layer_idx, None)
            else:
                self.kept_indices[layer_idx] = positions.gather(-1, kept.to(positions.device))
