"""What an :class:`~judgeq_cache.cache.EvictionCache` does when a forward of its model starts and ends.

The model's hooks (:mod:`.hooks`) call the cache's ``on_*`` methods, which hand over to these
functions. They read and write the cache's two state records (:mod:`.state`) and its layers; when
and how much to evict is decided by :mod:`.triggers`, how by :mod:`.compression`:

1. the first forward into the empty cache is the **prefill**: it is recorded (:mod:`.prefill_record`),
   and the prompt's queries are captured if the scorer reads them;
2. when it returns, the prompt is compressed (:func:`~.compression.compress`), or, in a chunked
   prefill, evicted after each chunk (:func:`~.triggers.after_chunk`);
3. every later forward adds tokens; the cache's triggers say when they are evicted again
   (:func:`~.triggers.after_decode_step`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import compression, eviction, triggers
from .attention_masks import fit_attention_mask
from .guards import another_model_error, check_generate_mode, uses_candidates
from .layers import EvictableLayer
from .prefill_record import read_prefill_call

if TYPE_CHECKING:
    from .eviction_cache import EvictionCache


def model_call(cache: EvictionCache, module: nn.Module, kwargs: dict[str, Any] | None) -> None:
    """The head's forward starts (``kwargs``) or ends (None): remember its ``logits_to_keep``."""
    if module is cache.binding.model:
        cache.forward.logits_to_keep = None if kwargs is None else kwargs.get("logits_to_keep")


def forward_start(cache: EvictionCache, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    """The decoder's forward starts; the first one into the empty cache is the prefill, later ones
    are prefill chunks (in a chunked prefill) or tokens added after it."""
    if module is not cache.binding.base_model:
        raise another_model_error()
    state, forward = cache.state, cache.forward
    if forward.depth and not forward.scoring_pass:
        abandon_forward(cache)  # the last forward never returned (a KeyboardInterrupt skips hooks)
    if state.failed and not forward.scoring_pass:
        raise RuntimeError(
            "the prefill forward into this cache raised an exception and left it half filled; "
            "call cache.reset() before running the prompt again"
        )
    forward.depth += 1
    if forward.scoring_pass:
        return
    if state.prefill is None and cache.get_seq_length() == 0:
        start_prefill(cache, args, kwargs)
    elif state.prefill is not None and (state.chunking or state.compressed):
        triggers.start_step(cache, args, kwargs)


def start_prefill(cache: EvictionCache, args: tuple, kwargs: dict[str, Any]) -> None:
    """Record the prefill forward and open the capture of the queries the scorer needs from it."""
    state, model = cache.state, cache.binding.model
    # Only a generate call that verifies candidates puts them at the end of the prefill forward;
    # a direct call's logits_to_keep selects logits and nothing else.
    candidates = uses_candidates(model)
    prefill, drafts = read_prefill_call(args, kwargs, cache.forward.logits_to_keep if candidates else None)
    if cache.forward.manual_chunks:
        trigger = triggers.ChunkedPrefill(None)
    else:
        trigger = triggers.generate_chunks(model, prefill.length) or triggers.OneShot()
    state.prefill_trigger = trigger
    chunked = state.chunking
    would_evict = chunked or eviction.any_evicts(compression.row_budgets(cache, prefill), prefill)
    evicts = cache.auto_compress and would_evict
    if evicts or cache.triggers:
        count = 0 if drafts is None else drafts.count
        check_generate_mode(model, cache.layers, count, chunked=chunked, evicts_later=bool(cache.triggers))
    state.prefill, state.drafts = prefill, drafts
    state.prompt_length = n = prefill.length
    need = cache.scorer.queries()
    # A hybrid scorer's window is captured even with auto_compress=False: a later compress() needs it.
    if (evicts and need.prompt) or (need.hybrid and would_evict):
        window = n if need.every_query else min(need.last or n, n)
        key_mask = prefill.forward_key_mask(drafts)
        cache.forward.capture = cache.query_capture(slice(n - window, n), n - window, n, key_mask).__enter__()


def abandon_forward(cache: EvictionCache) -> None:
    """Forget a forward that raised past the hooks: its capture ends, a prefill counts as failed."""
    forward = cache.forward
    forward.depth = 0
    capture, forward.capture, forward.step = forward.capture, None, None
    if capture is not None:
        capture.__exit__(None, None, None)
    if cache.state.prefill is not None and not cache.state.compressed:
        cache.state.failed = True


def forward_end(cache: EvictionCache, module: nn.Module, succeeded: bool, output: Any = None) -> None:
    """The decoder's forward returned (or raised): compress after the prefill (after each chunk of
    a chunked prefill), evict when a trigger says so."""
    if module is not cache.binding.base_model:
        return
    state, forward = cache.state, cache.forward
    forward.depth = max(0, forward.depth - 1)
    if forward.scoring_pass or state.prefill is None:
        return
    capture, forward.capture = forward.capture, None
    if capture is not None:
        capture.__exit__(None, None, None)
    step, forward.step = forward.step, None
    captured = capture.scores if capture is not None and succeeded else None
    appended = cache.scorer.queries().appended
    if state.compressed:
        if succeeded and step is not None:
            triggers.after_decode_step(cache, step, captured)
        return
    if appended:
        state.last_queries = captured
    if not succeeded:
        state.failed = True  # half filled: only reset() can make it usable again
        return
    if state.prefill_trigger is None:  # a loaded prefill, or chunks kept for a manual compress()
        return
    hidden = state.prefill_trigger.after_forward(cache, None if appended else captured)
    if hidden is not None and output is not None:
        # The drafts' hidden states, recomputed over the compressed prompt (see compress).
        last = output[0] if isinstance(output, tuple) else output.last_hidden_state
        last[:, -hidden.shape[1] :] = hidden.to(last.dtype)


def attention_call(cache: EvictionCache, module: nn.Module, kwargs: dict[str, Any], hidden: Any) -> None:
    """An attention module of the model is called: fit its mask to its layer's stored entries."""
    layer_idx = getattr(module, "layer_idx", None)
    if not isinstance(layer_idx, int) or layer_idx >= len(cache.layers):
        return
    layer = cache.layers[layer_idx]
    if isinstance(layer, EvictableLayer) and isinstance(hidden, torch.Tensor):
        fit_attention_mask(layer, kwargs, hidden, cache.ragged, cache.binding.attention_implementations)
        state, forward = cache.state, cache.forward
        prefill = not (forward.scoring_pass or state.compressed or state.chunking)
        if prefill and cache.scorer.needs_hidden_states and layer_idx in cache.binding.evictable:
            state.hidden_states[layer_idx] = hidden.detach()  # kvpress-style scorers read them
