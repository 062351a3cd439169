"""When and how an :class:`~judgeq_cache.cache.EvictionCache` compresses its prompt.

:class:`PromptCompression` is the part of the cache that reacts to forwards (the hook protocol of
:mod:`judgeq_cache.hooks`): the first forward into the empty cache is recorded as the prefill (the
prompt's queries are captured if the scorer reads them), and when it returns the prompt is scored
and evicted, the drafts of assisted decoding run again over the compressed prompt. It also holds the
scoring pass (:meth:`~PromptCompression.appended_attention`, run in :meth:`~PromptCompression.dry_run`
mode) and :meth:`~PromptCompression.compress`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from . import eviction
from .attention_masks import fit_attention_mask
from .budget import Budget
from .capture import AttentionCapture
from .guards import another_model_error, check_generate_mode
from .layers import EvictableLayer
from .prefill_record import Drafts, PrefillRecord, read_prefill_call, rerun_drafts, set_aside_drafts
from .scorers import Scorer

logger = logging.getLogger(__name__)


class PromptCompression:
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
    _cache_kwarg: str
    _prefill: PrefillRecord | None
    _drafts: Drafts | None
    _capture: AttentionCapture | None
    _window: dict[int, torch.Tensor] | None  # last prompt queries' attention for hybrid scorers
    _compressed: bool
    _dry: bool
    _logits_to_keep: Any
    _forward_depth: int

    def on_model_call(self, module: nn.Module, kwargs: dict[str, Any] | None) -> None:
        """The head's forward starts (``kwargs``) or ends (None): remember its ``logits_to_keep``."""
        if module is self._model:
            self._logits_to_keep = None if kwargs is None else kwargs.get("logits_to_keep")

    def on_forward_start(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """The decoder's forward starts; the first one into the empty cache is the prefill."""
        if module is not self._base_model:
            raise another_model_error()
        self._forward_depth += 1
        if self._dry or self._prefill is not None or self.get_seq_length() > 0:
            return
        prefill, drafts = read_prefill_call(args, kwargs, self._logits_to_keep)
        would_evict = eviction.any_evicts(self._row_budgets(prefill), prefill)
        evicts = self.auto_compress and would_evict
        if evicts:
            check_generate_mode(self._model, self.layers, 0 if drafts is None else drafts.count)
        self._prefill, self._drafts = prefill, drafts
        self.prompt_length = n = prefill.length
        source = self.scorer.query_source
        # A hybrid scorer's window is captured even with compress=False: a later compress() needs it.
        mixes_window = source == "appended" and self.scorer.captured_window() and would_evict
        if (evicts and source in ("window", "all")) or mixes_window:
            window = min(self.scorer.captured_window() or n, n) if source != "all" else n
            key_mask = prefill.forward_key_mask(drafts)
            self._capture = self.query_capture(slice(n - window, n), n - window, n, key_mask).__enter__()

    def on_forward_end(self, module: nn.Module, succeeded: bool, output: Any = None) -> None:
        """The decoder's forward returned (or raised): compress after the prefill."""
        if module is not self._base_model:
            return
        self._forward_depth = max(0, self._forward_depth - 1)
        if self._dry or self._prefill is None or self._compressed:
            return
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.__exit__(None, None, None)
        captured = capture.scores if capture is not None and succeeded else None
        appended = self.scorer.query_source == "appended"
        if appended:
            self._window = captured
        if succeeded and self.auto_compress:
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
        if isinstance(layer, EvictableLayer) and not self._dry and isinstance(hidden, torch.Tensor):
            fit_attention_mask(layer, kwargs, hidden, self._ragged, self._attn_names)

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
        prefill = self._prefill
        count = next(iter(inputs.values())).shape[1]
        ones = torch.ones(
            (prefill.key_mask.shape[0], count), dtype=torch.bool, device=prefill.key_mask.device
        )
        key_mask = torch.cat([prefill.key_mask, ones], dim=-1)
        capture = self.query_capture(slice(None), prefill.length, prefill.length, key_mask)
        with self.dry_run(), capture:
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

    def compress(
        self,
        attention: dict[int, torch.Tensor] | None = None,
        window: dict[int, torch.Tensor] | None = None,
    ) -> None:
        """Score the prefilled prompt and keep the top entries per KV head (done automatically after
        prefill unless ``compress=False``). ``attention`` overrides the captured attention;
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
                scores = None if attention is None else attention.get(layer_idx)
                layer = self.layers[layer_idx]
                kept = eviction.evict_layer(
                    layer_idx,
                    layer,
                    row_budgets,
                    self.scorer,
                    scores,
                    prefill.key_mask,
                    None if window is None else window.get(layer_idx),
                )
                if kept is not None:
                    self.kept_indices[layer_idx] = kept
            self._compressed = True
            if drafts is not None:
                hidden = rerun_drafts(self._base_model, self._cache_kwarg, self, drafts)
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
