"""A model dispatched by accelerate with a ``device_map`` (layers offloaded to disk and CPU) evicts exactly
as the same model loaded without one, and keeps everything at a budget of at least the prompt."""

from __future__ import annotations

import pytest
import torch
from conftest import cache_kwargs, make_model

from judgeq_cache import EvictionCache, JudgeQAdapter, JudgeQCache

pytest.importorskip("accelerate", reason="device_map loading needs accelerate")

from transformers import AutoModelForCausalLM  # noqa: E402

#: Hidden layer 1 and the head on disk, the rest on the CPU (on a CPU-only machine, "cpu" is the main
#: device; "disk" weights stay on the meta device and accelerate's hooks load them for each forward).
LAYERS_ON_DISK = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "cpu",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "disk",
}
#: The input embedding offloaded too: no real tensor to read the device or the weights from.
EMBEDDING_ON_DISK = {**LAYERS_ON_DISK, "model.embed_tokens": "disk", "model.layers.0": "disk"}
MAPS = {"layers-on-disk": LAYERS_ON_DISK, "embedding-on-disk": EMBEDDING_ON_DISK}
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def reference():
    return make_model("llama")


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    reference.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=list(MAPS))
def dispatched(request, checkpoint, tmp_path_factory):
    offload = tmp_path_factory.mktemp(f"offload-{request.param}")
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, device_map=MAPS[request.param], offload_folder=offload, attn_implementation="eager"
    ).eval()
    assert model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"  # really offloaded
    return model


def make_cache(model, scorer: str, budget, **options):
    if scorer == "judgeq":  # built from the model itself: the dispatched one has its embedding on disk
        adapter = JudgeQAdapter.init_for(model, num_soft_tokens=6, seed=1)
        return JudgeQCache(model, adapter, budget, **options)
    return EvictionCache(model, budget, scorer, window_size=8, **options)


def prompt(batch=1, length=40, seed=0):
    return torch.randint(3, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def generate(model, ids, cache=None, attention_mask=None):
    extra = {} if cache is None else cache_kwargs(model, cache)
    return model.generate(
        ids, attention_mask=attention_mask, max_new_tokens=NEW_TOKENS, do_sample=False, **extra
    )


@pytest.mark.parametrize("scorer", ["snapkv", "judgeq"])
def test_budget_at_least_prompt_equals_plain_generate(dispatched, reference, scorer):
    ids = prompt()
    cache = make_cache(dispatched, scorer, budget=ids.shape[1])
    got = generate(dispatched, ids, cache)
    assert torch.equal(got, generate(reference, ids))
    assert not cache.kept_indices  # nothing was evicted


@pytest.mark.parametrize("scorer", ["snapkv", "judgeq"])
@pytest.mark.parametrize("budget", [12, 0.25])
def test_evicted_output_equals_model_without_device_map(dispatched, reference, scorer, budget):
    ids = prompt()
    expected_cache = make_cache(reference, scorer, budget)
    expected = generate(reference, ids, expected_cache)
    cache = make_cache(dispatched, scorer, budget)
    got = generate(dispatched, ids, cache)
    assert torch.equal(got, expected)
    assert cache.kept_indices.keys() == expected_cache.kept_indices.keys() == {0, 1, 2}
    for layer, kept in cache.kept_indices.items():
        assert torch.equal(kept, expected_cache.kept_indices[layer])
    assert cache.get_seq_length() == expected_cache.get_seq_length()


def test_padded_batch_with_decode_time_eviction(dispatched, reference):
    """Left padding (masks over logical positions) and a decode-time eviction through the hooks."""
    ids = torch.cat([prompt(length=40, seed=3), prompt(length=40, seed=4)])
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    ids[1, :9] = 0
    caches = [make_cache(m, "judgeq", 0.3, decode_every=3) for m in (reference, dispatched)]
    expected, got = (generate(m, ids, c, mask) for m, c in zip((reference, dispatched), caches))
    assert torch.equal(got, expected)
    for layer, kept in caches[1].kept_indices.items():
        assert torch.equal(kept, caches[0].kept_indices[layer])


def test_adapter_reads_an_offloaded_embedding(checkpoint, reference, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, device_map=EMBEDDING_ON_DISK, offload_folder=tmp_path, attn_implementation="eager"
    )
    assert model.get_input_embeddings().weight.device.type == "meta"
    for init in ("vocab", "mean"):
        got = JudgeQAdapter.init_for(model, num_soft_tokens=4, seed=2, init=init)
        expected = JudgeQAdapter.init_for(reference, num_soft_tokens=4, seed=2, init=init)
        torch.testing.assert_close(got.rows, expected.rows)
        assert got.config.model_signature == expected.config.model_signature
        expected.check_compatible(model)  # the fingerprint compares real weights, not meta ones
