"""Regression tests for issue 23's cache defects (problems 1, 3, 4, 6 and 8) and issue 24's
``reset()``/``compression_seconds`` bug. Each fails on c3096c1."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import cache_kwargs, make_model
from test_bounded import record_keys_attended
from transformers import DynamicCache

from judgeq_cache import Budget, EvictionCache


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


def _ids(n: int = 30, seed: int = 0, rows: int = 1) -> torch.Tensor:
    return torch.randint(3, 128, (rows, n), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- 1: a direct call's logits_to_keep


@pytest.mark.parametrize("keep", [2, 5, 29, 30])
def test_direct_prefill_with_logits_to_keep_gives_the_models_own_logits_and_keeps_the_budget(model, keep):
    ids = _ids()
    with torch.no_grad():
        want = model(
            input_ids=ids, logits_to_keep=keep, **cache_kwargs(model, DynamicCache(config=model.config))
        )
        cache = EvictionCache(model, 8)
        got = model(input_ids=ids, logits_to_keep=keep, **cache_kwargs(model, cache))
    assert torch.equal(got.logits, want.logits)
    assert cache.prompt_length == 30 and cache.is_compressed
    assert all(layer.keys.shape[-2] == 8 for layer in cache.layers)


# ---------------------------------------------------------------- 3: the decode_every bound


def test_decode_every_bound_for_multi_token_forwards_is_the_documented_one(model):
    """``max(budget, kept prompt) + N - 1 + T`` for forwards of up to ``T`` tokens (``+ N`` when
    decoding token by token); reached when a T-token question follows N - 1 decoded tokens."""
    budget, every = 8, 4
    cache = EvictionCache(model, budget, "snapkv", window_size=4, decode_every=every)
    seen, handles = record_keys_attended(model)
    sizes = [30, 1, 1, 1, 10, 5, 1, 1, 10]
    try:
        with torch.no_grad():
            for i, n in enumerate(sizes):
                model(input_ids=_ids(n, seed=i), **cache_kwargs(model, cache))
    finally:
        for h in handles:
            h.remove()
    peaks = [max(seen[layer][i] for layer in seen) for i in range(len(sizes))]
    for i, n in enumerate(sizes[1:], 1):
        assert peaks[i] <= budget + every - 1 + n, (i, peaks)
    assert peaks[4] == budget + every - 1 + 10  # the bound is reached
    doc = " ".join(EvictionCache.__doc__.split())
    assert "+ N - 1 + T" in doc.replace("decode_every", "N").replace("``", "")


# ---------------------------------------------------------------- 4: deepcopy and fork


@pytest.mark.parametrize("branch", ["deepcopy", "fork"])
def test_a_compressed_cache_branches_for_prefix_reuse(model, branch):
    ids, question = _ids(), _ids(5, seed=9)
    cache = EvictionCache(model, 8, "snapkv", window_size=4)
    with torch.no_grad():
        model(input_ids=ids, **cache_kwargs(model, cache))
    twin = copy.deepcopy(cache) if branch == "deepcopy" else cache.fork()
    assert twin.is_compressed and twin.budget == cache.budget
    assert all(a.keys.data_ptr() != b.keys.data_ptr() for a, b in zip(twin.layers, cache.layers))
    for layer, kept in cache.kept_indices.items():
        assert torch.equal(twin.kept_indices[layer], kept)
    with torch.no_grad():
        got = model(input_ids=question, **cache_kwargs(model, twin)).logits
        assert cache.get_seq_length() == 30  # the source is untouched
        want = model(input_ids=question, **cache_kwargs(model, cache)).logits
    assert torch.equal(got, want)
    assert twin.get_seq_length() == cache.get_seq_length() == 35


# ---------------------------------------------------------------- 6: chunked prefill, left padding


def _manual_chunks(model, cache, ids, mask, sizes) -> torch.Tensor:
    with torch.no_grad(), cache.chunked_prefill():
        start = 0
        for n in sizes:
            end = start + n
            out = model(
                input_ids=ids[:, start:end], attention_mask=mask[:, :end], **cache_kwargs(model, cache)
            )
            start = end
    return out.logits[:, -1]


@pytest.mark.parametrize("pad", [3, 8, 11])
def test_a_padded_row_of_a_chunked_prefill_equals_the_row_alone_with_the_same_chunk_boundaries(model, pad):
    """The documented rule: a left-padded row gets what it gets alone when chunked at the same
    positions, so its first chunk is ``chunk - pad % chunk`` real tokens (the whole promise when the
    padding is a multiple of the chunk)."""
    chunk, n = 8, 32
    ids = _ids(n, seed=3, rows=2)
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    batch = EvictionCache(model, 6, "snapkv", window_size=4)
    got = _manual_chunks(model, batch, ids, mask, [chunk] * (n // chunk))
    real = ids[1:, pad:]
    first = chunk - pad % chunk
    sizes = [first] + [chunk] * ((n - pad - first) // chunk)
    alone = EvictionCache(model, 6, "snapkv", window_size=4)
    want = _manual_chunks(model, alone, real, torch.ones_like(real), [s for s in sizes if s])
    torch.testing.assert_close(got[1:], want, rtol=1e-5, atol=1e-5)
    doc = EvictionCache.chunked_prefill.__doc__
    assert "multiple of the chunk" in " ".join(doc.split())


# ---------------------------------------------------------------- 8: small


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_retry_after_an_exception_in_the_prefill_says_reset(model, error):
    cache = EvictionCache(model, 8, "snapkv", window_size=4)
    layer = model.model.layers[1]

    def fail(*args):
        raise error("interrupted")

    handle = layer.register_forward_pre_hook(fail)
    with pytest.raises(error), torch.no_grad():
        model(input_ids=_ids(), **cache_kwargs(model, cache))
    handle.remove()
    with pytest.raises(RuntimeError, match=r"call cache.reset\(\)"), torch.no_grad():
        model(input_ids=_ids(), **cache_kwargs(model, cache))
    cache.reset()
    with torch.no_grad():
        model(input_ids=_ids(), **cache_kwargs(model, cache))
    assert cache.is_compressed and cache.layers[0].keys.shape[-2] == 8


@pytest.mark.parametrize("value", [np.int64(8), np.int32(8), np.float64(0.25), np.float32(0.25)])
def test_integer_and_float_like_budgets_are_accepted(model, value):
    assert Budget.parse(value) == Budget.parse(int(value) if float(value) >= 1 else float(value))
    EvictionCache(model, value)


# ---------------------------------------------------------------- issue 24: reset and the timing


def test_reset_forgets_the_previous_runs_compression_time(model):
    cache = EvictionCache(model, 8)
    ids = _ids(40)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=1, prefill_chunk_size=8, **cache_kwargs(model, cache))
    first = cache.compression_seconds
    assert first > 0
    cache.reset()
    assert cache.compression_seconds == 0.0
    with torch.no_grad(), cache.chunked_prefill():
        for start in (0, 8, 16):
            model(input_ids=ids[:, start : start + 8], **cache_kwargs(model, cache))
    assert cache.compression_seconds > 0  # this run's chunks only (the += starts from 0 again)
