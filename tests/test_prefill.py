"""SharedPrefill gives every scorer exactly what its own prefill would have."""

from __future__ import annotations

import pytest
import torch
from conftest import cache_kwargs, make_model

from judgeq_cache import EvictionCache, JudgeQAdapter
from judgeq_cache.cache.prefill import SharedPrefill


def prefilled(arch: str, seed: int):
    """A tiny model, a ``[2, 40]`` prompt, its SharedPrefill (window 8) and an untrained adapter."""
    model = make_model(arch)
    ids = torch.randint(3, 128, (2, 40), generator=torch.Generator().manual_seed(seed))
    return model, ids, SharedPrefill(model, ids, window_size=8), JudgeQAdapter.init_for(model, 4)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_shared_prefill_matches_a_dedicated_prefill_for_every_scorer(arch):
    model, ids, shared, adapter = prefilled(arch, seed=0)
    cases = [
        ("snapkv", {"window_size": 8}),
        ("pyramidkv", {"window_size": 8}),
        ("h2o", {}),
        ("streamingllm", {}),
        ("random", {}),
        ("judgeq", {"adapter": adapter}),
        ("oracle", {"future_ids": ids[0, :5]}),
    ]
    for scorer, options in cases:
        got = shared.cache(0.25, scorer, **options)
        expected = EvictionCache(model, 0.25, scorer, **options)
        with torch.no_grad():
            model(input_ids=ids, **cache_kwargs(model, expected))
        assert got.kept_indices.keys() == expected.kept_indices.keys()
        for layer in expected.kept_indices:
            assert torch.equal(got.kept_indices[layer], expected.kept_indices[layer]), (scorer, layer)
        a = shared.generate(got, max_new_tokens=4)
        expected = EvictionCache(model, 0.25, scorer, **options)
        b = model.generate(ids, max_new_tokens=4, do_sample=False, **cache_kwargs(model, expected))
        assert torch.equal(a, b[:, 40:]), scorer
    full = shared.generate(shared.full_cache(), max_new_tokens=4)
    assert torch.equal(full, model.generate(ids, max_new_tokens=4, do_sample=False)[:, 40:])


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_stacked_caches_decode_like_each_alone(arch):
    model, ids, shared, adapter = prefilled(arch, seed=1)
    caches = [
        shared.cache(0.25, "snapkv", window_size=8),
        shared.cache(0.25, "judgeq", adapter=adapter, shared_heads=True),
        shared.cache(0.25, "h2o"),
        shared.cache(0.25, "streamingllm"),
    ]
    together = shared.generate(shared.stack(caches), max_new_tokens=6)  # leaves `caches` as they were
    alone = torch.cat([shared.generate(c, max_new_tokens=6) for c in caches])
    assert together.shape == alone.shape and torch.equal(together, alone)
    with pytest.raises(ValueError, match="different numbers of entries"):
        shared.stack([caches[0], shared.cache(0.5, "snapkv", window_size=8)])
    decoding = EvictionCache(model, 0.25, "snapkv", window_size=8, decode_every=4)
    with torch.no_grad():
        model(input_ids=ids, **cache_kwargs(model, decoding))
    with pytest.raises(ValueError, match="decode-time eviction"):
        shared.stack([caches[0], decoding])


def test_window_mismatch_is_a_clear_error():
    model = make_model("llama")
    shared = SharedPrefill(model, torch.randint(3, 128, (1, 40)), window_size=8, all_queries=False)
    with pytest.raises(ValueError, match="window_size=32"):
        shared.cache(0.5, "snapkv")
    with pytest.raises(ValueError, match="all_queries=True"):
        shared.cache(0.5, "h2o")


def test_stacked_padded_caches_with_per_row_fractions_decode_like_each_alone():
    """Rows of a left-padded prompt keep different counts (a fraction of each real length): stacking
    must carry their filler masks along."""
    model = make_model("llama")
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 128, (2, 30), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :12] = 0
    shared = SharedPrefill(model, ids, mask, window_size=8)
    caches = [shared.cache(0.5, "snapkv", window_size=8), shared.cache(0.5, "streamingllm")]
    assert caches[0].layers[0].visible is not None  # 15 vs 9 entries: the short row has fillers
    together = shared.generate(shared.stack(caches), max_new_tokens=5)
    alone = torch.cat([shared.generate(c, max_new_tokens=5) for c in caches])
    assert torch.equal(together, alone)
    short = ids[1:, 12:]
    own = model.generate(
        short,
        max_new_tokens=5,
        do_sample=False,
        **cache_kwargs(model, EvictionCache(model, 0.5, "streamingllm")),
    )
    assert torch.equal(alone[3], own[0, 18:])
