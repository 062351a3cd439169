"""Bounded KV memory: eviction after every prefill chunk and every ``decode_every`` tokens.

Peaks are read from the attention weights each eager attention call returns (the keys it attended
over), independently of the cache's own bookkeeping; logits are checked against a full cache with
exactly the evicted entries masked out (``reference.masked_logits_per_step``).
"""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, cache_kwargs, make_model
from reference import keep_masks, masked_logits_per_step
from test_cache import build_cache, prompt

from judgeq_cache import Budget
from judgeq_cache.cache import eviction
from judgeq_cache.cache.capture import attention_modules

SCORERS = [
    "judgeq",
    "judgeq-hybrid",
    "snapkv",
    "tova",
    "streamingllm",
    "h2o",
    "pyramidkv",
    "random",
    "oracle",
]
CHUNK, BUDGET, LENGTH = 16, 8, 60


def record_keys_attended(model) -> tuple[dict[int, list[int]], list]:
    """``{layer: [keys attended by each attention call]}`` of the model's own forwards, read from
    eager's attention weights (the scoring pass, a decoder forward nested in another, is left out:
    its appended tokens are never stored)."""
    seen: dict[int, list[int]] = {}
    depth = []

    def hook(module, args, output):
        weights = output[1] if isinstance(output, tuple) else None
        if weights is not None and len(depth) == 1:
            seen.setdefault(module.layer_idx, []).append(weights.shape[-1])

    def leave(*args):
        depth.pop()

    handles = [m.register_forward_hook(hook) for m in attention_modules(model)]
    handles.append(model.model.register_forward_pre_hook(lambda *a: depth.append(1)))
    handles.append(model.model.register_forward_hook(leave))
    return seen, handles


def bound(cache, budget: int, length: int) -> dict[int, int]:
    """Entries a layer may keep (pyramidkv spreads the budget over layers; the mean stays ``budget``)."""
    layers = cache.evictable_layers
    return dict(zip(layers, cache.scorer.layer_budgets(Budget(budget), length, len(layers))))


def left_padded(lengths, seed=5):
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros((len(lengths), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, width - n :] = torch.randint(3, 128, (n,), generator=gen)
        mask[i, width - n :] = 1
    return ids, mask


# --------------------------------------------------------------------------- chunked prefill


@pytest.mark.parametrize("scorer", SCORERS)
def test_chunked_prefill_never_stores_more_than_budget_plus_chunk(scorer):
    model = make_model("llama")
    ids = prompt(length=LENGTH)
    cache = build_cache(model, scorer, BUDGET, future_ids=ids[0, :4])
    seen, handles = record_keys_attended(model)
    try:
        out = model.generate(
            ids, max_new_tokens=3, do_sample=False, prefill_chunk_size=CHUNK, **cache_kwargs(model, cache)
        )
    finally:
        for h in handles:
            h.remove()
    limits = bound(cache, BUDGET, LENGTH)
    for layer, counts in seen.items():
        assert len(counts) == 4 + 2, "the prompt did not arrive in 4 chunks"
        assert counts[0] == CHUNK
        assert max(counts) <= limits[layer] + CHUNK, (layer, counts)
        assert counts[3] == limits[layer] + LENGTH - 3 * CHUNK  # the last, short chunk over a full budget
        assert cache.layers[layer].stored_length == limits[layer] + 2  # two decode steps appended
    assert cache.get_seq_length() == out.shape[1] - 1 == LENGTH + 2  # positions stay logical
    assert cache.prompt_length == LENGTH and cache.is_compressed


@pytest.mark.parametrize("scorer", ["judgeq", "snapkv", "h2o", "streamingllm"])
def test_chunked_prefill_that_keeps_everything_equals_plain_generate_padded_batch(scorer):
    model = make_model("llama")
    ids, mask = left_padded((LENGTH, 37))
    plain = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    cache = build_cache(model, scorer, LENGTH, future_ids=ids[0, :4])
    got = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=5,
        do_sample=False,
        prefill_chunk_size=CHUNK,
        **cache_kwargs(model, cache),
    )
    assert torch.equal(got, plain) and not cache.kept_indices


def _chunked_run(model, cache, ids, mask, question):
    """Manual loop: chunks inside ``chunked_prefill()``, then a 3-token question and one step; the
    logits of every forward and the entries kept before it."""
    logits, keeps = [], []
    steps = []
    with torch.no_grad(), cache.chunked_prefill():
        for start in range(0, ids.shape[1], CHUNK):
            end = min(start + CHUNK, ids.shape[1])
            steps.append({"input_ids": ids[:, start:end], "attention_mask": mask[:, :end]})
            keeps.append(keep_masks(cache.kept_indices, start) if cache.kept_indices else {})
            logits.append(model(**steps[-1], **cache_kwargs(model, cache)).logits)
    assert cache.is_compressed
    full_mask = torch.cat([mask, torch.ones_like(question)], dim=1)
    with torch.no_grad():
        for q in (question[:, :3], question[:, 3:]):
            seen = cache.get_seq_length()
            steps.append({"input_ids": q, "attention_mask": full_mask[:, : seen + q.shape[1]]})
            keeps.append(keep_masks(cache.kept_indices, ids.shape[1]))
            logits.append(model(**steps[-1], **cache_kwargs(model, cache)).logits)
    real = [
        s["attention_mask"][:, -s["input_ids"].shape[1] :].bool() for s in steps
    ]  # padding queries: garbage
    return logits, masked_logits_per_step(model, steps, keeps), real


@pytest.mark.parametrize(
    "scorer", ["judgeq", "judgeq-hybrid", "snapkv", "tova", "streamingllm", "h2o", "pyramidkv"]
)
@pytest.mark.parametrize("padded", [False, True])
def test_each_chunk_sees_exactly_what_was_kept_before_it(scorer, padded):
    """After each chunk the next forward equals the full cache with exactly the evicted entries masked
    out (left padding: a 0.25 fraction of each row's real tokens seen so far, so rows keep different
    counts and the short row's first chunk is all padding)."""
    model = make_model("llama")
    ids, mask = left_padded((LENGTH, 30 if padded else LENGTH))
    budget = 0.25 if padded else BUDGET
    question = prompt(batch=2, length=4, seed=9)
    cache = build_cache(model, scorer, budget, future_ids=question[0])
    got, expected, real = _chunked_run(model, cache, ids, mask, question)
    assert cache.kept_indices
    for t, (g, e, r) in enumerate(zip(got, expected, real)):
        torch.testing.assert_close(g[r], e[r], atol=3e-5, rtol=3e-5, msg=lambda m, t=t: f"forward {t}: {m}")
    if padded:  # a fraction of each row's real tokens: round(0.25 * 60) and round(0.25 * 30)
        layer = cache.layers[1]  # (pyramidkv: its middle layer keeps the mean budget)
        assert layer.visible[:, : layer.compressed_length].sum(-1).tolist() == [15, 8]


@pytest.mark.parametrize("arch_name", ARCHS)
def test_chunks_are_exact_on_every_architecture_with_sdpa(arch_name):
    """sdpa's own mask shortcuts, sliding-window layers (Gemma-3), q_norm (Qwen3): same reference."""
    model = make_model(arch_name, attn="sdpa")
    ids, mask = left_padded((LENGTH, 30))
    question = prompt(batch=2, length=4, seed=9)
    got, expected, real = _chunked_run(model, build_cache(model, "judgeq", 0.25), ids, mask, question)
    for t, (g, e, r) in enumerate(zip(got, expected, real)):
        torch.testing.assert_close(g[r], e[r], atol=3e-5, rtol=3e-5, msg=lambda m, t=t: f"forward {t}: {m}")


def test_fractional_budget_is_a_fraction_of_the_tokens_seen_so_far():
    model = make_model("llama")
    ids = prompt(length=LENGTH)
    cache = build_cache(model, "snapkv", 0.25)
    kept = []
    with torch.no_grad(), cache.chunked_prefill():
        for start in range(0, LENGTH, CHUNK):
            model(input_ids=ids[:, start : start + CHUNK], **cache_kwargs(model, cache))
            kept.append(cache.layers[0].stored_length)
    assert kept == [4, 8, 12, 15]  # round(0.25 * 16), ... round(0.25 * 60): the one-shot count at the end
    one_shot = build_cache(model, "snapkv", 0.25)
    with torch.no_grad():
        model(input_ids=ids, **cache_kwargs(model, one_shot))
    assert one_shot.layers[0].stored_length == 15


def test_manual_chunks_then_generate_continues_like_compress_once_ask_many():
    model = make_model("llama")
    ids, question = prompt(length=LENGTH), prompt(length=4, seed=9)
    cache = build_cache(model, "judgeq", BUDGET)
    with torch.no_grad(), cache.chunked_prefill():
        for start in range(0, LENGTH, CHUNK):
            model(input_ids=ids[:, start : start + CHUNK], **cache_kwargs(model, cache))
    stored = cache.layers[0].stored_length
    out = model.generate(
        torch.cat([ids, question], 1), max_new_tokens=3, do_sample=False, **cache_kwargs(model, cache)
    )
    assert out.shape[1] == LENGTH + 4 + 3
    assert cache.layers[0].stored_length == stored + 4 + 2  # the question and the answer were appended
    assert cache.get_seq_length() == LENGTH + 4 + 2


@pytest.mark.parametrize("scorer", SCORERS)
def test_issue_14_chunked_scenario_3000_tokens_chunk_512_budget_256(scorer):
    """The issue's criterion at its own size: at most 768 entries per layer at any forward (PyramidKV:
    its layer budgets average 256, so its layers average at most 768)."""
    model = make_model("llama", max_position_embeddings=4096)
    ids = prompt(length=3000)
    cache = build_cache(model, scorer, 256, future_ids=ids[0, :8])
    seen, handles = record_keys_attended(model)
    try:
        model.generate(
            ids, max_new_tokens=2, do_sample=False, prefill_chunk_size=512, **cache_kwargs(model, cache)
        )
    finally:
        for h in handles:
            h.remove()
    peaks = {layer: max(counts) for layer, counts in seen.items()}
    limits = bound(cache, 256, 3000)
    assert all(peaks[layer] <= limits[layer] + 512 for layer in peaks)
    assert sum(peaks.values()) / len(peaks) <= 768
    if scorer != "pyramidkv":
        assert max(peaks.values()) == 768


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("scorer", ["judgeq", "snapkv", "streamingllm"])
def test_issue_14_decode_scenario_400_tokens_every_32_budget_128(scorer):
    model = make_model("llama", max_position_embeddings=1024)
    ids = prompt(length=100)
    cache = build_cache(model, scorer, 128, decode_every=32)
    seen, handles = record_keys_attended(model)
    try:
        model.generate(
            ids, max_new_tokens=400, min_new_tokens=400, do_sample=False, **cache_kwargs(model, cache)
        )
    finally:
        for h in handles:
            h.remove()
    assert max(max(counts) for counts in seen.values()) == 160


@pytest.mark.parametrize("scorer", SCORERS)
@pytest.mark.parametrize("length", [6, 30])
def test_decode_every_never_stores_more_than_budget_plus_every(scorer, length):
    model = make_model("llama")
    ids = prompt(length=length)
    budget, every, new = 12, 4, 40
    cache = build_cache(model, scorer, budget, future_ids=ids[0, :4], decode_every=every)
    seen, handles = record_keys_attended(model)
    try:
        model.generate(
            ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, **cache_kwargs(model, cache)
        )
    finally:
        for h in handles:
            h.remove()
    limits, at_prefill = bound(cache, budget, 1 << 40), bound(cache, budget, length)
    for layer, counts in seen.items():
        assert counts[0] == length  # the prefill itself (one-shot)
        # a layer keeps its budget, or what the prefill kept when that was less than the prompt
        assert max(counts[1:]) <= max(limits[layer], at_prefill[layer]) + every, (layer, counts)
        assert max(counts[1:]) >= limits[layer]  # it did fill up to the budget
    assert cache.get_seq_length() == length + new - 1


@pytest.mark.parametrize("scorer", ["judgeq", "judgeq-hybrid", "snapkv", "tova", "streamingllm", "h2o"])
def test_decode_steps_see_exactly_what_was_kept(scorer, monkeypatch):
    """Feed tokens one by one (and a 3-token question): each forward equals the full cache with the
    entries evicted so far masked out."""
    model = make_model("llama")
    ids, tokens = prompt(batch=2, length=20), prompt(batch=2, length=14, seed=4)
    cache = build_cache(model, scorer, 10, future_ids=ids[0, :4], decode_every=3)
    evictions = []
    original = eviction.evict_layer

    def spy(*args, **kwargs):
        kept = original(*args, **kwargs)
        evictions.append(kept is not None)
        return kept

    monkeypatch.setattr(eviction, "evict_layer", spy)
    steps, keeps, got = [{"input_ids": ids}], [{}], []
    last = ({}, 0)
    with torch.no_grad():
        got.append(model(**steps[0], **cache_kwargs(model, cache)).logits)
        last = (keep_masks(cache.kept_indices, 20), 20)
        pieces = [tokens[:, :3]] + [tokens[:, i : i + 1] for i in range(3, 14)]
        for piece in pieces:
            steps.append({"input_ids": piece})
            keeps.append(last[0])
            before = len(evictions)
            got.append(model(**steps[-1], **cache_kwargs(model, cache)).logits)
            if any(evictions[before:]):
                seen = cache.get_seq_length()
                last = (keep_masks(cache.kept_indices, seen), seen)
    assert sum(evictions) >= 3, "decode-time eviction did not run"
    expected = masked_logits_per_step(model, steps, keeps)
    for t, (g, e) in enumerate(zip(got, expected)):
        torch.testing.assert_close(g, e, atol=3e-5, rtol=3e-5, msg=f"forward {t}")


@pytest.mark.parametrize("scorer", ["judgeq", "snapkv", "streamingllm"])
def test_decode_every_at_a_huge_budget_equals_plain_generate(scorer):
    model = make_model("llama")
    ids, mask = left_padded((30, 19))
    plain = {}
    modes = {"greedy": {}, "beams": {"num_beams": 3}, "sampling": {"do_sample": True, "top_k": 10}}
    for name, options in modes.items():
        for with_cache in (False, True):
            extra = {}
            if with_cache:
                extra = cache_kwargs(
                    model, build_cache(model, scorer, 1000, future_ids=ids[0, :4], decode_every=2)
                )
            torch.manual_seed(0)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=8,
                **{"do_sample": False, **options},
                **extra,
            )
            if with_cache:
                assert torch.equal(out, plain[name]), name
            plain[name] = out


@pytest.mark.parametrize("scorer", ["judgeq", "snapkv", "h2o"])
@pytest.mark.parametrize(("arch_name", "attn"), [("llama", "eager"), ("gemma3", "sdpa")])
def test_decode_eviction_in_a_padded_batch_matches_each_row_alone(scorer, arch_name, attn):
    model = make_model(arch_name, attn=attn)
    ids, mask = left_padded((30, 19))
    run = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False)
    batched = model.generate(
        input_ids=ids,
        attention_mask=mask,
        **run,
        **cache_kwargs(model, build_cache(model, scorer, 10, decode_every=4)),
    )
    for i in range(2):
        row = ids[i : i + 1, mask[i].bool()]
        alone = model.generate(
            row, **run, **cache_kwargs(model, build_cache(model, scorer, 10, decode_every=4))
        )
        assert torch.equal(batched[i, 30:], alone[0, row.shape[1] :]), f"row {i}"


@pytest.mark.parametrize("scorer", ["judgeq", "snapkv", "h2o"])
def test_beam_search_and_sampling_with_decode_eviction_stay_bounded(scorer):
    model = make_model("llama")
    ids = prompt(batch=2, length=20)
    for options in ({"num_beams": 3}, {"do_sample": True, "top_k": 10}):
        cache = build_cache(model, scorer, 10, decode_every=4)
        torch.manual_seed(0)
        out = model.generate(
            ids, max_new_tokens=16, min_new_tokens=16, **options, **cache_kwargs(model, cache)
        )
        assert out.shape == (2, 36)
        for layer in cache.evictable_layers:
            assert cache.layers[layer].stored_length <= 10 + 4
            kept = cache.kept_indices[layer]
            assert kept.shape[0] == cache.layers[layer].keys.shape[0]
            assert torch.all(kept[..., 1:] > kept[..., :-1]) and int(kept.max()) < 35


def test_rows_repeated_after_compression_carry_their_state_into_decode_eviction():
    """Compress once, repeat the rows for beam search (as transformers needs for a filled cache): the
    prompt record and kept positions follow the layers' rows, and decode eviction runs on them."""
    model = make_model("llama")
    ctx, question = prompt(batch=2, length=30), prompt(batch=2, length=4, seed=3)
    cache = build_cache(model, "snapkv", 10, decode_every=4)
    with torch.no_grad():
        model(input_ids=ctx, **cache_kwargs(model, cache))
    first = cache.kept_indices[0].clone()
    cache.batch_repeat_interleave(2)
    assert cache.prefill_mask.shape[0] == 4 and torch.equal(cache.kept_indices[0][::2], first)
    out = model.generate(
        torch.cat([ctx, question], 1),
        num_beams=2,
        max_new_tokens=12,
        min_new_tokens=12,
        **cache_kwargs(model, cache),
    )
    assert out.shape == (2, 46)
    assert cache.kept_indices[0].shape == (4, 2, 10) and cache.layers[0].stored_length <= 10 + 4


def test_chunked_generate_with_compress_false_then_compress_equals_one_shot():
    """auto_compress=False: the chunks are stored whole (with the hybrid Judge Q's last-query window of the
    last chunk) and a later compress() selects exactly what a one-shot prefill selects."""
    model = make_model("llama")
    ids = prompt(length=LENGTH)
    later = build_cache(model, "judgeq-hybrid", BUDGET, auto_compress=False)
    model.generate(
        ids, max_new_tokens=1, do_sample=False, prefill_chunk_size=CHUNK, **cache_kwargs(model, later)
    )
    assert later.layers[0].stored_length == LENGTH and not later.is_compressed
    later.compress()
    one_shot = build_cache(model, "judgeq-hybrid", BUDGET)
    with torch.no_grad():
        model(input_ids=ids, **cache_kwargs(model, one_shot))
    assert one_shot.scorer.window_weight > 0  # the hybrid: its window came from the last chunk
    for layer, kept in one_shot.kept_indices.items():
        assert torch.equal(later.kept_indices[layer], kept)


@pytest.mark.parametrize("scorer", ["judgeq", "snapkv", "h2o", "random"])
def test_decode_recent_tokens_are_kept_at_decode_evictions_only(scorer):
    """``decode_recent_tokens``: the newest stored entries survive every decode-time eviction; the
    prefill's selection is the one ``recent_tokens`` makes."""
    model = make_model("llama")
    ids, tokens = prompt(length=30), prompt(length=8, seed=4)
    caches = {
        recent: build_cache(model, scorer, 16, decode_every=4, decode_recent_tokens=recent)
        for recent in (None, 10)
    }
    cache = caches[10]
    with torch.no_grad():
        for c in caches.values():
            model(input_ids=ids, **cache_kwargs(model, c))
        for layer in cache.evictable_layers:
            assert torch.equal(caches[None].kept_indices[layer], cache.kept_indices[layer])
        for step in range(8):
            before = {layer: kept.clone() for layer, kept in cache.kept_indices.items()}
            model(input_ids=tokens[:, step : step + 1], **cache_kwargs(model, cache))
            if step in (3, 7):  # an eviction just ran: the 10 newest entries stored before it are kept
                added = torch.arange(31 + step - 4, 31 + step)
                for layer in cache.evictable_layers:
                    stored = torch.cat([before[layer][0, 0], added])
                    assert torch.isin(stored[-10:], cache.kept_indices[layer]).all(), (step, layer)
            if step == 7:  # every token added since the prompt (8, fewer than 10) is still stored
                for layer in cache.evictable_layers:
                    assert torch.isin(torch.arange(30, 38), cache.kept_indices[layer]).all()


def test_decode_recent_tokens_must_not_be_negative():
    with pytest.raises(ValueError, match="decode_recent_tokens must be >= 0"):
        build_cache(make_model("llama"), "snapkv", 8, decode_recent_tokens=-1)


@pytest.mark.parametrize(("budget", "fraction", "count"), [(16, 0.5, 8), (0.5, 0.25, 3)])
def test_decode_recent_tokens_as_a_fraction_of_each_layers_budget(budget, fraction, count):
    """A float ``decode_recent_tokens`` is that fraction of the decode budget (an ``int`` budget, or a
    fractional one resolved on the prompt: 0.5 of 25 tokens keeps 12, a quarter is 3), rounded down:
    it keeps exactly what the equivalent count keeps at every decode-time eviction."""
    model = make_model("llama")
    ids, tokens = prompt(length=25), prompt(length=12, seed=4)
    caches = [
        build_cache(model, "judgeq", budget, decode_every=4, decode_recent_tokens=recent)
        for recent in (fraction, count, count + 1)
    ]
    kept = []
    with torch.no_grad():
        for cache in caches:
            model(input_ids=ids, **cache_kwargs(model, cache))
            for step in range(12):
                model(input_ids=tokens[:, step : step + 1], **cache_kwargs(model, cache))
            kept.append(cache.kept_indices)
    assert all(torch.equal(kept[0][layer], kept[1][layer]) for layer in kept[0])
    assert any(not torch.equal(kept[0][layer], kept[2][layer]) for layer in kept[0])  # the count matters


def test_judgeq_protects_half_of_each_layers_budget_at_decode_time():
    scorer = build_cache(make_model("llama"), "judgeq", 8).scorer
    assert scorer.decode_recent_tokens == 0.5
    assert scorer.for_decoding().protected_counts(512) == (4, 256)
    assert scorer.for_decoding().protected_counts(256) == (4, 128)
    assert scorer.protected_counts(512) == (4, 8)  # the prefill keeps its own 8


@pytest.mark.parametrize("value", [0.0, 1.5])
def test_fractional_recent_tokens_must_lie_in_the_unit_interval(value):
    with pytest.raises(ValueError, match=r"fraction of each layer's budget and must lie in \(0, 1\]"):
        build_cache(make_model("llama"), "snapkv", 8, decode_recent_tokens=value)


def test_benchmark_token_nll_equals_one_forward_over_prompt_and_continuation():
    """The decode benchmark's teacher forcing (token by token through a cache) against the reference:
    one forward over prompt + continuation, cross-entropy of each continuation token."""
    import sys
    from pathlib import Path

    from transformers import DynamicCache

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bounded_memory import teacher_forced, token_nll

    model = make_model("llama")
    ids = torch.randint(3, 128, (1, 30), generator=torch.Generator().manual_seed(5))
    prompt, continuation = ids[:, :20], ids[:, 20:]
    nll, _ = token_nll(model, prompt, continuation, DynamicCache(config=model.config))
    with torch.no_grad():
        logits = model(ids).logits[0, 19:-1].float()
    expected = torch.nn.functional.cross_entropy(logits, continuation[0], reduction="none")
    torch.testing.assert_close(torch.tensor(nll), expected, rtol=1e-4, atol=1e-4)
    mean, _ = teacher_forced(model, prompt, continuation, DynamicCache(config=model.config))
    assert mean == pytest.approx(expected.mean().item(), abs=1e-4)


def test_benchmark_reuse_decode_takes_missing_methods_and_checks_the_full_rows(tmp_path):
    """``--reuse-decode``: an earlier run's rows fill in the methods this run did not measure (same
    prompts and budgets only); a full-cache row that disagrees is an argparse error, not a merge."""
    import argparse
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bounded_memory import decode_summary, reuse_decode_rows

    def row(prompt, method, budget, nll):
        ratios = {} if method == "full" else {f"{k}_vs_full": nll for k in ("nll", "nll_sampled", "nll_text")}
        return {
            "prompt": prompt,
            "method": method,
            "budget": budget,
            **dict.fromkeys(("nll", "nll_sampled", "nll_text"), nll),
            **ratios,
        }

    earlier = [row(p, "full", None, 1.0) for p in ("a:0", "b:0", "c:0")]
    earlier += [
        row(p, m, b, 1.1)
        for p in ("a:0", "b:0", "c:0")
        for m in ("judgeq", "streamingllm")
        for b in (256, 512)
    ]
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps({"decode": earlier}))
    now = [
        row("a:0", "full", None, 1.0),
        row("a:0", "judgeq", 512, 1.05),
        row("b:0", "full", None, 1.0),
        row("b:0", "judgeq", 512, 1.2),
    ]
    parser = argparse.ArgumentParser()
    merged = reuse_decode_rows(now, str(path), parser)
    assert [(r["prompt"], r["method"], r["budget"]) for r in merged] == [
        ("a:0", "full", None),
        ("a:0", "judgeq", 512),
        ("a:0", "streamingllm", 512),
        ("b:0", "full", None),
        ("b:0", "judgeq", 512),
        ("b:0", "streamingllm", 512),
    ]  # this run's judgeq rows win; budget 256 and prompt c:0 were not run now
    summary = {r["method"]: r for r in decode_summary(merged)}
    assert summary["judgeq"]["nll_below_streamingllm"] == 1
    now[2]["nll_sampled"] = 1.01
    with pytest.raises(SystemExit):
        reuse_decode_rows(now, str(path), parser)
