"""Plug-ins defined here and nowhere else: a toy trigger and a toy (kvpress-style) scorer, run
through ``generate`` as documented (issue 24 items 2 and 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from conftest import cache_kwargs, make_model
from test_bounded import record_keys_attended
from transformers import DynamicCache

from judgeq_cache import EvictionCache, Trigger
from judgeq_cache.cache.capture import attention_modules
from judgeq_cache.scorers import LayerInputs, Scorer


class EverySecondForward(Trigger):
    """Evict after every second forward into the compressed cache."""

    def __init__(self) -> None:
        self.forwards = 0

    def reset(self) -> None:
        self.forwards = 0

    def after_forward(self, tokens: int) -> bool:
        self.forwards += 1
        return self.forwards % 2 == 0


def _ids(n: int = 30, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(seed))


def test_a_toy_trigger_evicts_after_every_second_forward_in_generate():
    model = make_model("llama")
    trigger = EverySecondForward()
    cache = EvictionCache(model, 8, "snapkv", window_size=4, triggers=[trigger])
    assert cache.triggers == (trigger,) and cache.decode_every is None
    seen, handles = record_keys_attended(model)
    try:
        out = model.generate(_ids(), max_new_tokens=7, do_sample=False, **cache_kwargs(model, cache))
    finally:
        for h in handles:
            h.remove()
    # Prefill (30 keys), then 6 decode forwards: 9, 10 (evict to 8), 9, 10 (evict), 9, 10 (evict).
    for counts in seen.values():
        assert counts == [30, 9, 10, 9, 10, 9, 10]
    assert trigger.forwards == 6 and out.shape[1] == 37
    assert all(layer.keys.shape[-2] == 8 for layer in cache.layers)
    assert cache.get_seq_length() == 36
    cache.reset()
    assert trigger.forwards == 0


@dataclass(kw_only=True)
class HiddenKeyNormScorer(Scorer):
    """kvpress-style: a score from the module, the hidden states and the keys (no queries)."""

    name: ClassVar[str] = "toy-hidden-key-norm"
    needs_hidden_states: ClassVar[bool] = True

    def score(self, inputs: LayerInputs) -> torch.Tensor:
        assert inputs.module is not None and inputs.module.layer_idx == inputs.layer_idx
        hidden = inputs.hidden_states[..., :4].sum(dim=-1)[:, None, :]  # [B, 1, N]
        return inputs.keys.norm(dim=-1) + hidden


def test_a_toy_scorer_from_hidden_states_and_keys_keeps_its_own_top_k_in_generate():
    model = make_model("llama")
    ids = _ids(seed=4)
    # The reference: hidden states and keys of a plain DynamicCache prefill, top-8 by hand.
    inputs: dict[int, torch.Tensor] = {}
    handles = [
        m.register_forward_pre_hook(
            lambda mod, args, kwargs: inputs.__setitem__(mod.layer_idx, kwargs["hidden_states"]),
            with_kwargs=True,
        )
        for m in attention_modules(model)
    ]
    dynamic = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=ids, **cache_kwargs(model, dynamic))
    for h in handles:
        h.remove()
    cache = EvictionCache(model, 8, HiddenKeyNormScorer())
    model.generate(ids, max_new_tokens=3, do_sample=False, **cache_kwargs(model, cache))
    for layer, kept in cache.kept_indices.items():
        keys = dynamic.layers[layer].keys
        score = keys.norm(dim=-1) + inputs[layer][..., :4].sum(dim=-1)[:, None, :]
        want = score.topk(8, dim=-1).indices.sort(dim=-1).values
        assert torch.equal(kept, want), layer


def test_the_cache_holds_its_state_in_records_that_reset_fork_and_stack_rebuild():
    """No mixins: the cache is a ``DynamicCache`` with state records; ``reset()`` replaces the prompt's
    record whole (nothing of the last prompt survives), ``fork()`` and ``stack()`` build their own."""
    from judgeq_cache.cache.state import PromptState
    from judgeq_cache.cache.triggers import ChunkedPrefill, OneShot

    assert EvictionCache.__bases__ == (DynamicCache,)
    model = make_model("llama")
    cache = EvictionCache(model, 8, "streamingllm", auto_compress=False)
    with torch.no_grad():
        model(input_ids=_ids(), **cache_kwargs(model, cache))
    assert isinstance(cache.state.prefill_trigger, OneShot) and not cache.state.compressed
    twin = cache.fork(budget=6)
    assert twin.state is not cache.state and twin.state.prefill is cache.state.prefill
    assert twin.binding.model is cache.binding.model and twin.state.kept_indices == {}
    twin.compress()
    assert twin.state.compressed and twin.state.prefill_trigger is None and not cache.state.compressed
    assert all(k.shape[-1] == 6 for k in twin.kept_indices.values())
    stacked = EvictionCache.stack([twin, twin.fork()])
    assert stacked.state.compressed and stacked.state.prefill.key_mask.shape[0] == 2
    twin.reset()
    assert twin.state == PromptState() and twin.compression_seconds == 0.0
    chunked = EvictionCache(model, 8, "snapkv", window_size=4)
    with torch.no_grad(), chunked.chunked_prefill():
        for chunk in _ids().split(12, dim=-1):
            model(input_ids=chunk, **cache_kwargs(model, chunked))
            assert isinstance(chunked.state.prefill_trigger, ChunkedPrefill) and chunked.state.chunking
            assert max(layer.stored_length for layer in chunked.layers) == 8
    assert chunked.state.prefill_trigger is None and chunked.is_compressed
