"""EvictionCache / JudgeQCache on tiny random models of every supported architecture."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, cache_kwargs, make_model
from reference import keep_masks, masked_logits, one_pass_soft_attention
from transformers import DynamicCache
from transformers.cache_utils import DynamicSlidingWindowLayer

from judgeq_cache import EvictionCache, JudgeQAdapter, JudgeQCache
from judgeq_cache.cache import prefill_record
from judgeq_cache.cache.layers import EvictableLayer

SCORERS = ["judgeq", "judgeq-hybrid", "snapkv", "streamingllm", "h2o", "pyramidkv", "random", "oracle"]


def build_cache(model, scorer: str, budget, future_ids=None, **options):
    if scorer == "judgeq-hybrid":  # a quarter of the score from the last prompt query's attention
        scorer = "judgeq"
        options = {"window_weight": 0.25, "window_size": 1, **options}
    if scorer == "judgeq":
        return JudgeQCache(model, JudgeQAdapter.init_for(model, num_soft_tokens=6, seed=1), budget, **options)
    if scorer == "oracle":
        return EvictionCache(model, budget, "oracle", future_ids=future_ids, **options)
    if scorer == "snapkv" or scorer == "pyramidkv":
        options.setdefault("window_size", 8)
        options.setdefault("recent_tokens", 8)
    return EvictionCache(model, budget, scorer, **options)


def prompt(batch=1, length=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, 128, (batch, length), generator=gen)


@pytest.mark.parametrize("scorer", SCORERS)
def test_budget_at_least_prompt_is_identical_to_dynamic_cache(arch, scorer):
    model = make_model(arch)
    ids = prompt()
    expected = model.generate(
        ids, max_new_tokens=6, do_sample=False, **cache_kwargs(model, DynamicCache(config=model.config))
    )
    cache = build_cache(model, scorer, budget=ids.shape[1] + 5, future_ids=ids[0, :4])
    got = model.generate(ids, max_new_tokens=6, do_sample=False, **cache_kwargs(model, cache))
    assert torch.equal(got, expected)
    assert not cache.kept_indices  # nothing was evicted


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("budget", [0.5, 7])
def test_logits_equal_full_cache_with_evicted_entries_masked(arch, scorer, budget):
    """Compress, then feed a 3-token question and a 1-token step: logits equal the masked reference."""
    model = make_model(arch)
    ids = prompt(batch=2, length=36)
    question, step = prompt(batch=2, length=3, seed=1), prompt(batch=2, length=1, seed=2)
    cache = build_cache(model, scorer, budget, future_ids=question[0])
    with torch.no_grad():
        prefill = model(input_ids=ids, **cache_kwargs(model, cache)).logits
        got = [model(input_ids=x, **cache_kwargs(model, cache)).logits for x in (question, step)]
    assert cache.kept_indices, "nothing was evicted"
    keep = keep_masks(cache.kept_indices, ids.shape[1])
    expected = masked_logits(model, {"input_ids": ids}, [{"input_ids": question}, {"input_ids": step}], keep)
    plain = model(input_ids=ids).logits
    torch.testing.assert_close(prefill, plain, atol=1e-5, rtol=1e-5)  # the scoring pass left the logits alone
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("scorer", ["judgeq", "snapkv", "h2o"])
def test_shared_heads_keep_the_same_positions_in_every_head(scorer):
    model = make_model("qwen2")  # 2 KV heads
    ids = prompt(batch=2, length=64)
    step = prompt(batch=2, length=1, seed=2)
    per_head = build_cache(model, scorer, 0.5, shared_heads=False)
    shared = build_cache(model, scorer, 0.5, shared_heads=True)
    with torch.no_grad():
        model(input_ids=ids, **cache_kwargs(model, per_head))
        model(input_ids=ids, **cache_kwargs(model, shared))
        got = model(input_ids=step, **cache_kwargs(model, shared)).logits
    for idx in shared.kept_indices.values():
        assert torch.equal(idx, idx[:, :1].expand_as(idx))
    if scorer != "h2o":  # (its heavy hitters coincide across heads on this tiny model)
        assert any(not torch.equal(i, i[:, :1].expand_as(i)) for i in per_head.kept_indices.values())
    expected = masked_logits(
        model, {"input_ids": ids}, [{"input_ids": step}], keep_masks(shared.kept_indices, 64)
    )
    torch.testing.assert_close(got, expected[0], atol=2e-5, rtol=2e-5)


def test_judgeq_two_pass_scores_equal_one_pass_reference(arch):
    model = make_model(arch)
    ids = prompt(batch=2, length=30)
    adapter = JudgeQAdapter.init_for(model, num_soft_tokens=5, seed=3)
    cache = JudgeQCache(model, adapter, budget=0.5, auto_compress=False)
    with torch.no_grad():
        model(input_ids=ids, **cache_kwargs(model, cache))
        two_pass = cache.appended_attention(cache.scorer.appended_inputs(2, model))
    one_pass = one_pass_soft_attention(model, ids, adapter.rows.detach())
    assert set(two_pass) == {i for i, layer in enumerate(cache.layers) if isinstance(layer, EvictableLayer)}
    for layer, scores in two_pass.items():
        torch.testing.assert_close(scores, one_pass[layer], atol=1e-5, rtol=1e-4)
    assert cache.get_seq_length() == ids.shape[1]  # soft tokens stored nothing


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_fused_soft_pass_equals_the_models_own_attention(arch, attn, monkeypatch):
    """The appended pass takes its attention output from the scoring softmax (one softmax, not two):
    same scores as letting the model's attention function run, on a left-padded batch."""
    from judgeq_cache.cache import capture

    model = make_model(arch, attn=attn)
    ids = prompt(batch=2, length=30)
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    adapter = JudgeQAdapter.init_for(model, num_soft_tokens=5, seed=3)
    calls = []
    real = capture.fusable

    def counted(*args):
        calls.append(real(*args))
        return calls[-1]

    def soft_scores(fuse):
        monkeypatch.setattr(capture, "fusable", counted if fuse else lambda *a: False)
        cache = JudgeQCache(model, adapter, budget=0.5, auto_compress=False)
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, **cache_kwargs(model, cache))
            return cache.appended_attention(cache.scorer.appended_inputs(2, model))

    unfused, fused = soft_scores(False), soft_scores(True)
    assert calls and all(calls)  # every scored layer took the fused path
    for layer, scores in unfused.items():
        torch.testing.assert_close(fused[layer], scores, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("budget", [0.25, 0.5, 10])
def test_kv_bytes_shrink_to_kept_fraction_and_order_is_kept(budget):
    model = make_model("llama")
    ids = prompt(length=40)
    full = DynamicCache(config=model.config)
    model(input_ids=ids, **cache_kwargs(model, full))
    cache = EvictionCache(model, budget, "snapkv", window_size=8)
    with torch.no_grad():
        model(input_ids=ids, **cache_kwargs(model, cache))
    kept = round(budget * 40) if isinstance(budget, float) else budget
    full_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in full.layers)
    assert cache.kv_bytes() == full_bytes * kept // 40
    for layer_idx, idx in cache.kept_indices.items():
        assert torch.all(idx[..., 1:] > idx[..., :-1]), "kept entries must stay in original order"
        gathered = full.layers[layer_idx].keys.gather(2, idx[..., None].expand(-1, -1, -1, 16))
        torch.testing.assert_close(cache.layers[layer_idx].keys, gathered)
    assert cache.get_seq_length() == 40


@pytest.mark.parametrize("scorer", ["judgeq", "snapkv", "streamingllm", "h2o"])
def test_batched_left_padding_matches_each_row_alone(scorer):
    model = make_model("llama")
    rows = [prompt(length=30, seed=5)[0], prompt(length=22, seed=6)[0]]
    width = max(len(r) for r in rows)
    ids = torch.zeros((2, width), dtype=torch.long)
    mask = torch.zeros((2, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    budget = 12
    batched = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=6,
        do_sample=False,
        **cache_kwargs(model, build_cache(model, scorer, budget)),
    )
    cache = build_cache(model, scorer, budget)
    model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False, **cache_kwargs(model, cache)
    )
    for layer_idx, idx in cache.kept_indices.items():
        pads = width - torch.tensor([len(r) for r in rows])
        assert torch.all(idx >= pads[:, None, None]), f"layer {layer_idx} kept padding"
    for i, r in enumerate(rows):
        alone = model.generate(
            input_ids=r[None],
            max_new_tokens=6,
            do_sample=False,
            **cache_kwargs(model, build_cache(model, scorer, budget)),
        )
        assert torch.equal(batched[i, width:], alone[0, len(r) :]), f"row {i} differs from running it alone"


def test_short_row_keeps_all_its_tokens_and_masks_padding():
    """Budget above a row's real length: all its real tokens are kept, kept padding stays masked."""
    model = make_model("llama")
    long, short = prompt(length=30, seed=7)[0], prompt(length=6, seed=8)[0]
    ids = torch.zeros((2, 30), dtype=torch.long)
    mask = torch.zeros((2, 30), dtype=torch.long)
    ids[0], mask[0] = long, 1
    ids[1, 24:], mask[1, 24:] = short, 1
    batched = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=5,
        do_sample=False,
        **cache_kwargs(model, EvictionCache(model, 10, "streamingllm")),
    )
    alone = model.generate(input_ids=short[None], max_new_tokens=5, do_sample=False)
    assert torch.equal(batched[1, 30:], alone[0, 6:])


def _snapkv_compressed_context():
    """A llama model, a 40-token context prefilled into a SnapKV cache at budget 0.25, and a 4-token question."""
    model = make_model("llama")
    ctx, question = prompt(length=40), prompt(length=4, seed=9)
    cache = EvictionCache(model, 0.25, "snapkv", window_size=8)
    with torch.no_grad():
        model(input_ids=ctx, **cache_kwargs(model, cache))
    return model, ctx, question, cache


def test_direct_calls_compress_once_then_questions_continue_positions():
    """kvpress-style: compress a context with model(...), then ask with explicit and implicit positions."""
    model, ctx, question, cache = _snapkv_compressed_context()
    with torch.no_grad():
        assert cache.is_compressed and cache.get_seq_length() == 40
        implicit = model(input_ids=question, **cache_kwargs(model, cache)).logits
    keep = keep_masks(cache.kept_indices, 40)
    (expected,) = masked_logits(model, {"input_ids": ctx}, [{"input_ids": question}], keep)
    torch.testing.assert_close(implicit, expected, atol=2e-5, rtol=2e-5)

    cache2 = EvictionCache(model, 0.25, "snapkv", window_size=8)
    with torch.no_grad():
        model(input_ids=ctx, position_ids=torch.arange(40)[None], **cache_kwargs(model, cache2))
        explicit = model(
            input_ids=question, position_ids=torch.arange(40, 44)[None], **cache_kwargs(model, cache2)
        ).logits
    torch.testing.assert_close(explicit, implicit)


def test_generate_on_full_ids_after_compression_slices_by_logical_length():
    """generate's multi-turn path slices input_ids with get_seq_length(): it must be the logical length."""
    model, ctx, question, cache = _snapkv_compressed_context()
    full_ids = torch.cat([ctx, question], dim=1)
    out = model.generate(input_ids=full_ids, max_new_tokens=4, do_sample=False, **cache_kwargs(model, cache))
    assert out.shape[1] == 48
    assert cache.get_seq_length() == 47


def test_multi_turn_generate_reuses_the_compressed_cache():
    model = make_model("llama")
    turn1 = prompt(length=40)
    cache = EvictionCache(model, 0.5, "h2o")
    out1 = model.generate(turn1, max_new_tokens=4, do_sample=False, **cache_kwargs(model, cache))
    stored_after_turn1 = cache.layers[0].stored_length
    turn2 = torch.cat([out1, prompt(length=5, seed=3)], dim=1)
    out2 = model.generate(turn2, max_new_tokens=4, do_sample=False, **cache_kwargs(model, cache))
    assert torch.equal(out2[:, : turn2.shape[1]], turn2)
    assert cache.get_seq_length() == turn2.shape[1] + 3
    assert (
        cache.layers[0].stored_length == stored_after_turn1 + 5 + 4
    )  # turn 2 was appended, not re-compressed
    # Same answer as a reference that never evicts what the first compression kept.
    keep = keep_masks(cache.kept_indices, 40)
    steps = [{"input_ids": out1[:, 40:43]}, {"input_ids": turn2[:, 43:]}]
    cache_ref = EvictionCache(model, 0.5, "h2o")
    with torch.no_grad():
        model(input_ids=turn1, **cache_kwargs(model, cache_ref))
        got = [model(**s, **cache_kwargs(model, cache_ref)).logits for s in steps]
    for g, e in zip(got, masked_logits(model, {"input_ids": turn1}, steps, keep)):
        torch.testing.assert_close(g, e, atol=2e-5, rtol=2e-5)


def test_beam_search_and_sampling_run():
    model = make_model("llama")
    ids = prompt(batch=2, length=30)
    beams = model.generate(
        ids,
        num_beams=3,
        max_new_tokens=5,
        do_sample=False,
        **cache_kwargs(model, EvictionCache(model, 0.5, "snapkv")),
    )
    assert beams.shape == (2, 35)
    torch.manual_seed(0)
    sampled = model.generate(
        ids,
        do_sample=True,
        top_k=10,
        max_new_tokens=5,
        **cache_kwargs(model, EvictionCache(model, 0.5, "snapkv")),
    )
    assert sampled.shape == (2, 35)
    # Beam search with an unlimited budget equals beam search with a plain cache.
    plain = model.generate(ids, num_beams=3, max_new_tokens=5, do_sample=False)
    same = model.generate(
        ids,
        num_beams=3,
        max_new_tokens=5,
        do_sample=False,
        **cache_kwargs(model, EvictionCache(model, 1000, "snapkv")),
    )
    assert torch.equal(plain, same)


def test_sliding_window_layers_are_left_alone():
    model = make_model("gemma3")
    ids = prompt(length=40)
    cache = EvictionCache(model, 0.25, "snapkv", window_size=8)
    model.generate(ids, max_new_tokens=3, do_sample=False, **cache_kwargs(model, cache))
    assert sorted(cache.kept_indices) == [1]
    assert not isinstance(cache.layers[0], EvictableLayer)
    assert cache.layers[0].keys.shape[-2] == 7  # the sliding window, untouched
    assert cache.layers[1].stored_length == 10 + 2
    assert cache.get_seq_length() == 42


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scorer", ["judgeq", "snapkv", "h2o"])
def test_dtypes(dtype, scorer):
    model = make_model("qwen3", attn="sdpa", dtype=dtype)
    ids = prompt(length=32)
    plain = model.generate(ids, max_new_tokens=4, do_sample=False)
    same = model.generate(
        ids, max_new_tokens=4, do_sample=False, **cache_kwargs(model, build_cache(model, scorer, 64))
    )
    assert torch.equal(plain, same)
    cache = build_cache(model, scorer, 0.25)
    out = model.generate(ids, max_new_tokens=4, do_sample=False, **cache_kwargs(model, cache))
    assert out.shape == (1, 36)
    assert cache.layers[0].keys.dtype == dtype


@pytest.mark.parametrize("arch_name", ARCHS)
def test_sdpa_matches_eager_eviction(arch_name):
    """Scores come from captured queries, not from the attention backend: both pick the same entries."""
    ids = prompt(length=32)
    kept = []
    for attn in ("eager", "sdpa"):
        model = make_model(arch_name, attn=attn)
        cache = build_cache(model, "judgeq", 0.25)
        with torch.no_grad():
            model(input_ids=ids, **cache_kwargs(model, cache))
        kept.append(cache.kept_indices)
    for layer in kept[0]:
        assert torch.equal(kept[0][layer], kept[1][layer])


# --------------------------------------------------------------------------- crop


@pytest.mark.parametrize("budget", [0.5, 1000])
def test_crop_cuts_keys_and_values_alike_and_decodes_like_dynamic_cache(budget):
    """crop(-n) after generate: keys and values keep the same length and the next forward equals a plain
    DynamicCache cropped the same way (with the evicted entries masked out when something was evicted)."""
    model = make_model("llama")
    ids = prompt(length=40)
    cache = build_cache(model, "judgeq", budget)
    out = model.generate(ids, max_new_tokens=8, do_sample=False, **cache_kwargs(model, cache))
    stored = [layer.stored_length for layer in cache.layers]
    cache.crop(-3)
    for layer, before in zip(cache.layers, stored):
        assert layer.keys.shape[-2] == layer.values.shape[-2] == before - 3
    assert cache.get_seq_length() == 47 - 3
    step = out[:, 44:45]
    with torch.no_grad():
        got = model(input_ids=step, **cache_kwargs(model, cache)).logits
    keep = keep_masks(cache.kept_indices, 40)
    steps = [{"input_ids": out[:, 40:44]}, {"input_ids": step}]  # the kept generated tokens, then the step
    expected = masked_logits(model, {"input_ids": ids}, steps, keep)[-1]
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)
    if not cache.kept_indices:  # nothing evicted: exactly a DynamicCache cropped the same way
        plain = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=out[:, :47], **cache_kwargs(model, plain))
            plain.crop(-3)
            torch.testing.assert_close(got, model(input_ids=step, **cache_kwargs(model, plain)).logits)


@pytest.mark.parametrize("budget", [0.5, 1000])
def test_crop_zero_removes_nothing(budget):
    """transformers >= 5.20 reads crop(0) as "remove nothing" (generate calls it on some devices)."""
    model = make_model("llama")
    ids = prompt(length=40)
    cache = build_cache(model, "snapkv", budget)
    model.generate(ids, max_new_tokens=3, do_sample=False, **cache_kwargs(model, cache))
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    cache.crop(0)
    assert cache.get_seq_length() == 42
    for layer, (keys, values) in zip(cache.layers, before):
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)


# --------------------------------------------------------------------------- assisted decoding


def _repetitive_prompt(seed: int = 0) -> torch.Tensor:
    """A prompt that repeats a 10-token phrase, so prompt lookup finds candidates."""
    gen = torch.Generator().manual_seed(seed)
    phrase = torch.randint(3, 128, (1, 10), generator=gen)
    filler = [torch.randint(3, 128, (1, n), generator=gen) for n in (15, 5)]
    return torch.cat([phrase, filler[0], phrase, filler[1], phrase[:, :4]], dim=1)


def _draft_counts(monkeypatch) -> list[int]:
    counts: list[int] = []
    original = prefill_record.draft_count

    def spy(logits_to_keep, total):
        counts.append(original(logits_to_keep, total))
        return counts[-1]

    monkeypatch.setattr(prefill_record, "draft_count", spy)
    return counts


@pytest.mark.parametrize("arch_name", ["llama", "gemma3"])
@pytest.mark.parametrize("mode", ["assistant", "prompt_lookup"])
@pytest.mark.parametrize("scorer", ["judgeq", "snapkv"])
def test_assisted_and_prompt_lookup_decoding(arch_name, mode, scorer, monkeypatch):
    """The prefill forward carries candidate tokens: only the prompt is compressed, candidates are
    cropped. At a budget >= the prompt the output equals plain generate; at smaller budgets it equals
    generating with the same cache without assistance (verification is exact, so it must not change
    the tokens)."""
    model = make_model(arch_name)
    ids = _repetitive_prompt()
    n = ids.shape[1]
    if arch_name == "gemma3" and not hasattr(DynamicSlidingWindowLayer, "activate_past_recording"):
        # Before transformers could roll sliding layers back, plain assisted decoding fails on them
        # too; an evicting cache says so up front.
        cache = build_cache(model, scorer, 0.5)  # built before the call, as documented
        with pytest.raises(NotImplementedError, match="sliding-window layers"):
            model.generate(ids, max_new_tokens=4, prompt_lookup_num_tokens=3, **cache_kwargs(model, cache))
        return
    if mode == "assistant":
        assist = {"assistant_model": make_model(arch_name, seed=0)}  # same weights: drafts get accepted
    else:
        assist = {"prompt_lookup_num_tokens": 3}
    counts = _draft_counts(monkeypatch)
    plain = model.generate(ids, max_new_tokens=10, do_sample=False)
    assert torch.equal(plain, model.generate(ids, max_new_tokens=10, do_sample=False, **assist))
    for budget in (n, n + 10, 0.5, 12):
        cache = build_cache(model, scorer, budget)
        got = model.generate(ids, max_new_tokens=10, do_sample=False, **assist, **cache_kwargs(model, cache))
        assert counts[-1] > 0, "the prefill forward carried no candidates: the test tests nothing"
        assert cache.prompt_length == n and cache.get_seq_length() == got.shape[1] - 1
        if isinstance(budget, int) and budget >= n:
            assert torch.equal(got, plain), budget
            assert not cache.kept_indices
        else:
            assert cache.kept_indices
            alone = model.generate(
                ids,
                max_new_tokens=10,
                do_sample=False,
                **cache_kwargs(model, build_cache(model, scorer, budget)),
            )
            assert torch.equal(got, alone), budget


def test_assisted_decoding_with_sampling_runs_and_crops():
    model = make_model("llama")
    ids = _repetitive_prompt()
    torch.manual_seed(0)
    cache = build_cache(model, "snapkv", 0.5)
    out = model.generate(
        ids,
        max_new_tokens=12,
        do_sample=True,
        top_k=5,
        assistant_model=make_model("llama", seed=3),
        **cache_kwargs(model, cache),
    )
    assert out.shape == (1, ids.shape[1] + 12)
    assert cache.get_seq_length() == out.shape[1] - 1
    layer = cache.layers[0]
    assert layer.keys.shape[-2] == layer.values.shape[-2] == layer.compressed_length + 11


# --------------------------------------------------------------------------- per-row fractions


def _left_padded(
    lengths: tuple[int, ...], seed: int = 5
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, 128, (n,), generator=gen) for n in lengths]
    width = max(lengths)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    return ids, mask, rows


@pytest.mark.parametrize("arch_name", ["llama", "qwen3"])
@pytest.mark.parametrize("scorer", ["judgeq", "snapkv"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("lengths", [(30, 22, 9), (30, 26)])
def test_fractional_budget_applies_to_each_rows_real_length(arch_name, scorer, attn, lengths):
    """A kept fraction in a left-padded batch: each row keeps round(fraction x its own length) and
    answers exactly as when run alone. (30, 26) leaves no padding in the kept window, so sdpa drops its
    mask and the filler slots must be masked from scratch.)"""
    model = make_model(arch_name, attn=attn)
    ids, mask, rows = _left_padded(lengths)
    width = ids.shape[1]
    cache = build_cache(model, scorer, 0.5)
    batched = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False, **cache_kwargs(model, cache)
    )
    widths = {idx.shape[-1] for idx in cache.kept_indices.values()}
    assert widths == {round(0.5 * max(lengths))}
    layer = cache.layers[0]
    kept_per_row = layer.visible.sum(-1).tolist()
    assert kept_per_row == [round(0.5 * n) for n in lengths]
    for i, r in enumerate(rows):
        alone_cache = build_cache(model, scorer, 0.5)
        alone = model.generate(
            input_ids=r[None], max_new_tokens=6, do_sample=False, **cache_kwargs(model, alone_cache)
        )
        assert torch.equal(batched[i, width:], alone[0, len(r) :]), f"row {i} differs from running it alone"
        # the real entries a row keeps are the ones it keeps alone
        for layer_idx, idx in cache.kept_indices.items():
            real = idx[i, :, idx.shape[-1] - kept_per_row[i] :] - (width - len(r))
            assert torch.equal(real, alone_cache.kept_indices[layer_idx][0])


def test_rows_with_fillers_survive_beam_search_reordering():
    model = make_model("llama")
    ids, mask, rows = _left_padded((30, 14))
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        num_beams=2,
        max_new_tokens=4,
        do_sample=False,
        **cache_kwargs(model, build_cache(model, "snapkv", 0.5)),
    )
    for i, r in enumerate(rows):
        alone = model.generate(
            input_ids=r[None],
            num_beams=2,
            max_new_tokens=4,
            do_sample=False,
            **cache_kwargs(model, build_cache(model, "snapkv", 0.5)),
        )
        assert torch.equal(out[i, 30:], alone[0, len(r) :])
