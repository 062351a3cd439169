"""Bad input gets a clear error that names the fix."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import cache_kwargs, make_model
from torch import nn

from judgeq_cache import EvictionCache, JudgeQAdapter, JudgeQCache


@pytest.fixture(scope="module")
def model():
    return make_model("llama")


@pytest.mark.parametrize("budget", [0, -3, 0.0, 1.0, 1.5, math.nan, -0.2])
def test_bad_budgets_raise_value_error(model, budget):
    with pytest.raises(ValueError, match="budget"):
        EvictionCache(model, budget)


@pytest.mark.parametrize("budget", ["512", None, True, [1]])
def test_budget_of_wrong_type_raises_type_error(model, budget):
    with pytest.raises(TypeError, match="budget must be an int"):
        EvictionCache(model, budget)


def test_unknown_scorer(model):
    with pytest.raises(ValueError, match="unknown scorer 'snapk'"):
        EvictionCache(model, 8, "snapk")


def test_adapter_for_another_hidden_size(model):
    other = make_model("llama", num_heads=2, num_kv_heads=1)  # hidden 32, model hidden 64
    adapter = JudgeQAdapter.init_for(other, 4)
    with pytest.raises(ValueError, match="hidden size 32 .* 64 wide"):
        JudgeQCache(model, adapter, 8)


def test_judgeq_cache_needs_an_adapter(model):
    with pytest.raises(TypeError, match="JudgeQAdapter"):
        JudgeQCache(model, torch.zeros(4, 64), 8)


def test_model_without_standard_attention():
    class Plain(nn.Module):
        config = None

    with pytest.raises(TypeError, match="PreTrainedModel"):
        EvictionCache(Plain(), 8)

    model = make_model("llama")
    for layer in model.model.layers:  # hide the standard attention modules
        layer.self_attn.layer_idx = None
    with pytest.raises(TypeError, match="standard attention"):
        EvictionCache(model, 8)


def test_empty_prompt(model):
    cache = EvictionCache(model, 8)
    with pytest.raises(ValueError, match="empty prompt"):
        model(input_ids=torch.zeros((1, 0), dtype=torch.long), **cache_kwargs(model, cache))


def test_four_d_mask_is_rejected_with_the_fix(model):
    cache = EvictionCache(model, 8)
    ids = torch.randint(3, 128, (1, 12))
    with pytest.raises(ValueError, match="2-D attention_mask"):
        model(input_ids=ids, attention_mask=torch.ones(1, 1, 12, 12), **cache_kwargs(model, cache))


def test_budget_larger_than_prompt_keeps_everything(model):
    cache = EvictionCache(model, 10_000)
    ids = torch.randint(3, 128, (1, 12))
    with torch.no_grad():
        model(input_ids=ids, **cache_kwargs(model, cache))
    assert cache.is_compressed and not cache.kept_indices
    assert cache.layers[0].stored_length == 12


def test_oracle_without_future_tokens(model):
    cache = EvictionCache(model, 4, "oracle")
    with pytest.raises(ValueError, match="future_ids"):
        model(input_ids=torch.randint(3, 128, (1, 12)), **cache_kwargs(model, cache))


def test_bad_scorer_options(model):
    with pytest.raises(ValueError, match="pooling_kernel"):
        EvictionCache(model, 4, "snapkv", pooling_kernel=4)
    with pytest.raises(TypeError):
        EvictionCache(model, 4, "snapkv", windw_size=3)


def test_crop_cannot_recover_evicted_entries(model):
    cache = EvictionCache(model, 4, "streamingllm")
    with torch.no_grad():
        model(input_ids=torch.randint(3, 128, (1, 12)), **cache_kwargs(model, cache))
        model(input_ids=torch.randint(3, 128, (1, 3)), **cache_kwargs(model, cache))
    cache.crop(-2)
    assert cache.get_seq_length() == 13 and cache.layers[0].stored_length == 5
    with pytest.raises(ValueError, match="compressed"):
        cache.crop(-5)


def test_cache_used_with_another_model_instance_is_an_error(model):
    other = make_model("llama", seed=1)
    cache = EvictionCache(model, 4)
    with pytest.raises(RuntimeError, match="another model instance"):
        other(input_ids=torch.randint(3, 128, (1, 12)), **cache_kwargs(other, cache))


def test_cache_rejected_by_another_model_that_another_cache_hooked(model):
    """The issue's repro: m2 carries hooks (from its own cache), then gets a cache built for m."""
    other = make_model("llama", seed=1)
    EvictionCache(other, budget=4)  # installs the hooks on `other`
    cache = JudgeQCache(model, JudgeQAdapter.init_for(model, 4), 20)
    ids = torch.randint(3, 128, (1, 30))
    with pytest.raises(RuntimeError, match="another model instance"):
        other.generate(ids, max_new_tokens=3, **cache_kwargs(other, cache))
    assert cache.get_seq_length() == 0  # nothing was stored


def test_prefilled_cache_rejected_by_another_model(model):
    cache = EvictionCache(model, 6)
    ids = torch.randint(3, 128, (1, 20))
    with torch.no_grad():
        model(input_ids=ids, **cache_kwargs(model, cache))
    hooked = make_model("llama", seed=3)
    EvictionCache(hooked, 4)
    for other in (make_model("llama", seed=2), hooked):  # never hooked / hooked by its own cache
        with pytest.raises(RuntimeError, match="another model instance"):
            other(input_ids=ids[:, :1], **cache_kwargs(other, cache))
    assert cache.get_seq_length() == 20


@pytest.mark.parametrize("scorer", ["snapkv", "judgeq"])
def test_decode_eviction_with_candidates_is_refused_up_front(model, scorer):
    def make(**options):
        if scorer == "judgeq":
            return JudgeQCache(model, JudgeQAdapter.init_for(model, 4), 0.5, **options)
        return EvictionCache(model, 0.5, scorer, **options)

    ids = torch.randint(3, 128, (1, 40))
    cache = make(decode_every=4)
    with pytest.raises(NotImplementedError, match="prompt lookup"):
        model.generate(ids, max_new_tokens=3, prompt_lookup_num_tokens=2, **cache_kwargs(model, cache))
    assert cache.get_seq_length() == 0 and not cache.is_compressed  # nothing ran
    # One chunk holds the whole prompt: an ordinary prefill, compressed as usual.
    one_chunk = model.generate(
        ids, max_new_tokens=3, do_sample=False, prefill_chunk_size=64, **cache_kwargs(model, make())
    )
    assert torch.equal(
        one_chunk, model.generate(ids, max_new_tokens=3, do_sample=False, **cache_kwargs(model, make()))
    )


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_decode_every_must_be_a_positive_int(model, bad):
    with pytest.raises(ValueError, match="decode_every must be a positive int"):
        EvictionCache(model, 8, decode_every=bad)


def test_manual_chunked_prefill_needs_an_empty_compressing_cache(model):
    ids = torch.randint(3, 128, (1, 20))
    with (
        pytest.raises(ValueError, match="auto_compress=True"),
        EvictionCache(model, 8, auto_compress=False).chunked_prefill(),
    ):
        pass
    cache = EvictionCache(model, 8)
    with torch.no_grad():
        model(input_ids=ids, **cache_kwargs(model, cache))
    with pytest.raises(RuntimeError, match="empty cache"), cache.chunked_prefill():
        pass


def test_chunked_prefill_that_keeps_everything_equals_plain_generate(model):
    ids = torch.randint(3, 128, (1, 40))
    cache = EvictionCache(model, 1000)
    out = model.generate(
        ids, max_new_tokens=4, do_sample=False, prefill_chunk_size=16, **cache_kwargs(model, cache)
    )
    assert torch.equal(out, model.generate(ids, max_new_tokens=4, do_sample=False))
    assert cache.get_seq_length() == 43 and not cache.kept_indices


def test_crop_positive_keeps_a_logical_prefix_and_refuses_evicted_entries(model):
    cache = EvictionCache(model, 4, "streamingllm")
    with torch.no_grad():
        model(input_ids=torch.randint(3, 128, (1, 12)), **cache_kwargs(model, cache))
        model(input_ids=torch.randint(3, 128, (1, 3)), **cache_kwargs(model, cache))
    cache.crop(14)  # transformers <= 5.19 meaning: keep the first 14 logical tokens
    layer = cache.layers[0]
    assert cache.get_seq_length() == 14 and layer.keys.shape[-2] == layer.values.shape[-2] == 6
    with pytest.raises(ValueError, match="only the 2 tokens added after compression"):
        cache.crop(11)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_judgeq_cache_rejects_adapter_rows_with_nan_or_inf(model, bad):
    adapter = JudgeQAdapter.init_for(model, 4)
    with torch.no_grad():
        adapter.rows[1, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        JudgeQCache(model, adapter, 8)
