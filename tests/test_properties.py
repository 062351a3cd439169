"""Property tests (hypothesis) for the eviction invariants over shapes, budgets, padding and GQA."""

from __future__ import annotations

import torch
from conftest import cache_kwargs, make_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import keep_masks, masked_logits

from judgeq_cache import EvictionCache, JudgeQAdapter, JudgeQCache
from judgeq_cache.cache.budget import Budget

_MODELS: dict = {}


def model_for(gqa: tuple[int, int]):
    if gqa not in _MODELS:
        _MODELS[gqa] = make_model("llama", num_heads=gqa[0], num_kv_heads=gqa[1])
    return _MODELS[gqa]


@st.composite
def scenarios(draw):
    gqa = draw(st.sampled_from([(4, 4), (4, 2), (4, 1), (6, 2)]))
    batch = draw(st.integers(1, 3))
    length = draw(st.integers(2, 48))
    real = [draw(st.integers(1, length)) for _ in range(batch)]
    real[0] = length  # at least one row is unpadded
    budget = draw(st.one_of(st.integers(1, 60), st.floats(0.01, 0.99)))
    scorer = draw(st.sampled_from(["judgeq", "snapkv", "h2o", "streamingllm", "random", "pyramidkv"]))
    seed = draw(st.integers(0, 2**16))
    return gqa, real, length, budget, scorer, seed


def build(model, scorer, budget):
    if scorer == "judgeq":
        return JudgeQCache(model, JudgeQAdapter.init_for(model, 3), budget)
    options = {"window_size": 4, "recent_tokens": 2} if scorer in ("snapkv", "pyramidkv") else {}
    return EvictionCache(model, budget, scorer, **options)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_eviction_invariants(case):
    gqa, real, length, budget, scorer, seed = case
    model = model_for(gqa)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (len(real), length), generator=gen)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(real):
        mask[row, length - n :] = 1
    cache = build(model, scorer, budget)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, **cache_kwargs(model, cache))
        step = torch.randint(3, 128, (len(real), 1), generator=gen)
        got = model(
            input_ids=step,
            attention_mask=torch.cat([mask, torch.ones_like(step)], 1),
            **cache_kwargs(model, cache),
        ).logits

    # The budget applies to each row's real length; rows are stored with the widest row's count.
    per_row = [cache.scorer.layer_budgets(Budget.parse(budget), n, len(cache.layers)) for n in real]
    pads = torch.tensor([length - n for n in real])
    for layer_idx, layer in enumerate(cache.layers):
        row_budgets = [min(b[layer_idx], length) for b in per_row]
        width = max(row_budgets)
        assert layer.get_seq_length() == length + 1
        idx = cache.kept_indices.get(layer_idx)
        if idx is None:
            assert width >= length and all(k >= n for k, n in zip(row_budgets, real))
            assert layer.stored_length == length + 1
            continue
        assert layer.stored_length == width + 1
        assert idx.shape == (len(real), gqa[1], width)
        assert idx.min() >= 0 and idx.max() < length
        for row, k in enumerate(row_budgets):
            kept = idx[row, :, width - k :]
            assert torch.all(kept[..., 1:] > kept[..., :-1]), "kept entries must stay in original order"
            assert torch.all(kept >= pads[row]), "a row keeping at most its real length never keeps padding"
            fillers = idx[row, :, : width - k]
            assert torch.all(fillers == kept[..., :1]), "filler slots repeat the row's first kept entry"
            visible = torch.ones(width, dtype=torch.bool) if layer.visible is None else layer.visible[row]
            assert visible.tolist() == [False] * (width - k) + [True] * k

    if cache.kept_indices:
        keep = keep_masks(cache.kept_indices, length)
        step_mask = torch.cat([mask, torch.ones_like(step)], 1)
        (expected,) = masked_logits(
            model,
            {"input_ids": ids, "attention_mask": mask},
            [{"input_ids": step, "attention_mask": step_mask}],
            keep,
        )
        torch.testing.assert_close(got, expected, atol=3e-5, rtol=3e-5)
