"""Issue 23: eight deliberate breakages that survived the whole suite, each caught here.

Every expected value is built apart from the code under test: plain Python top-k and pooling, an
eager forward with ``output_attentions`` for attention, each prompt run alone for batch rows.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch
from conftest import cache_kwargs, make_model
from reference import attention_after

from judgeq_cache import EvictionCache
from judgeq_cache.scorers import LayerInputs, Scorer

# --------------------------------------------------------------------------- independent references


def python_top_k(values: list[float], k: int) -> list[int]:
    """Indices of the ``k`` largest ``values`` (ties: lower index first), ascending."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return sorted(order[:k])


def python_max_pool(values: list[float], kernel: int) -> list[float]:
    half = kernel // 2
    return [max(values[max(0, i - half) : i + half + 1]) for i in range(len(values))]


@torch.no_grad()
def eager_future_attention(model, prompt: torch.Tensor, future: torch.Tensor) -> dict[int, torch.Tensor]:
    """``{layer: [B, Hkv, N]}``: mean attention of the ``future`` tokens' queries over the ``prompt``
    keys, from one eager forward over ``prompt + future`` (query heads of a KV group averaged)."""
    n = prompt.shape[1]
    out = model(input_ids=torch.cat([prompt, future], dim=1), output_attentions=True, use_cache=False)
    return attention_after(out.attentions, n, model.config.num_key_value_heads)


class GivenScores(Scorer):
    """A scorer whose scores are the ``attention`` it is handed (so the test chooses them)."""

    name: ClassVar[str] = "given"

    def score(self, inputs: LayerInputs) -> torch.Tensor:
        return inputs.attention


def _inputs(scores: torch.Tensor, budget: int) -> LayerInputs:
    return LayerInputs(
        layer_idx=0,
        keys=scores[..., None],
        values=scores[..., None],
        attention=scores,
        key_mask=torch.ones(scores.shape[0], scores.shape[-1], dtype=torch.bool),
        budget=budget,
    )


# --------------------------------------------------------------------------- 1. pooling in Scorer.select


@pytest.mark.parametrize("kernel", [3, 5])
def test_select_pools_the_scores_before_the_top_k(kernel):
    """One spike and three lone runners-up: max pooling keeps the spike's neighbourhood."""
    values = [0.0] * 20
    values[6], values[0], values[8], values[19] = 10.0, 5.0, 4.9, 4.8
    values[12] = 3.0
    budget = kernel
    scorer = GivenScores(pooling_kernel=kernel, pooling="max")
    kept = scorer.select(_inputs(torch.tensor(values)[None, None], budget))
    want = python_top_k(python_max_pool(values, kernel), budget)
    assert kept[0, 0].tolist() == want
    assert want == list(range(6 - kernel // 2, 7 + kernel // 2))  # the spike's window, nothing else
    unpooled = GivenScores(pooling_kernel=1).select(_inputs(torch.tensor(values)[None, None], budget))
    assert unpooled[0, 0].tolist() == python_top_k(values, budget) != want


# --------------------------------------------------------------------------- 2. held-out hit rate


def test_heldout_hit_rate_ranks_the_prediction_not_the_target(monkeypatch):
    """The hit rate compares what the *prediction* keeps with the target's top-k."""
    import judgeq_cache.training.objective as objective

    gen = torch.Generator().manual_seed(0)
    n, heads, budget = 20, 2, 0.25
    k = round(budget * n)
    target = {0: torch.rand(1, heads, n, generator=gen), 1: torch.rand(1, heads, n, generator=gen)}
    pred = {0: torch.rand(1, heads, n, generator=gen), 1: torch.rand(1, heads, n, generator=gen)}
    example = SimpleNamespace(
        target=target,
        window={layer: torch.rand(1, heads, n, generator=gen) for layer in target},
        last=None,
        attention_mask=torch.ones(1, n, dtype=torch.long),
        lengths=[n],
        ids=["p0"],
    )
    monkeypatch.setattr(objective, "soft_attention", lambda model, adapter, ex, grad: (pred, None))
    rates = objective.evaluate_hit_rates(
        None, None, [example], budgets=(budget,), scorers={"given": (GivenScores(), "soft")}
    )
    overlaps = []
    for layer in target:
        for h in range(heads):
            mine = set(python_top_k(pred[layer][0, h].tolist(), k))
            critical = set(python_top_k(target[layer][0, h].tolist(), k))
            overlaps.append(len(mine & critical) / k)
    want = sum(overlaps) / len(overlaps)
    assert want < 0.9  # the prediction really differs from the target here
    assert rates["hit_rate/given@25%"] == pytest.approx(want)


# --------------------------------------------------------------------------- 3 + 6. the metrics


def test_string_match_all_ignores_case():
    from judgeq_cache.eval.metrics import score

    assert score("string_match_all", "The capital is PARIS.", ["paris"]) == 1.0
    assert score("string_match_all", "the capital is paris.", ["Paris"]) == 1.0
    assert score("string_match_all", "Paris and berlin", ["paris", "Berlin", "Rome"]) == pytest.approx(2 / 3)


def test_needle_metric_refuses_a_truncated_or_changed_answer():
    from test_eval import tiny_tokenizer

    from judgeq_cache.eval.metrics import score
    from judgeq_cache.eval.tasks import make_samples

    assert score("string_match_all", "The number is 748192.", ["7481923"]) == 0.0
    for sample in make_samples("needle_single", 3, 200, tiny_tokenizer(), seed=0):
        answer = sample.answers[0]
        assert score(sample.metric, f"It is {answer}.", sample.answers) == 1.0
        assert score(sample.metric, f"It is {answer[:-1]}.", sample.answers) == 0.0
        assert score(sample.metric, f"It is {answer[1:]}.", sample.answers) == 0.0


# --------------------------------------------------------------------------- 4. the reference kernel


@pytest.mark.parametrize("offset", [0, 30])
def test_reference_kernel_causal_positions_span_query_chunks(offset):
    """More queries than one chunk (300 > 256): every query keeps its absolute causal position."""
    from judgeq_cache.kernels import reference

    m = 300
    assert m > reference.QUERY_CHUNK
    gen = torch.Generator().manual_seed(offset)
    q = torch.randn(1, 4, m, 8, generator=gen)
    k = torch.randn(1, 2, offset + m, 8, generator=gen)
    v = torch.randn(1, 2, offset + m, 8, generator=gen)
    got, out = reference.attention_scores_and_output(q, k, v, scaling=0.3, causal_offset=offset)
    kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    logits = torch.einsum("bhqd,bhkd->bhqk", q, kk) * 0.3
    visible = torch.arange(offset + m)[None, :] <= (torch.arange(m) + offset)[:, None]
    probs = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)
    want = probs.view(1, 2, 2, m, offset + m).mean(dim=(2, 3))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(out, (probs @ vv).transpose(1, 2), atol=1e-5, rtol=1e-4)
    assert got[..., offset + 256 :].sum() > 0.01  # the keys only the second chunk sees


# --------------------------------------------------------------------------- 5. training targets


def test_every_batch_row_gets_its_own_response_target():
    """Each row's target is its own response's attention (an eager forward of that row alone)."""
    from test_training import make_tokenizer, small_config, text_prompts

    from judgeq_cache import JudgeQAdapter
    from judgeq_cache.training import ResponseStore, prepare_examples

    model = make_model("qwen2")
    adapter = JudgeQAdapter.init_for(model, 4, seed=0)
    store = ResponseStore(None)
    examples = prepare_examples(
        model, make_tokenizer(), text_prompts(3), adapter, small_config(batch_size=3), store, progress=False
    )
    checked = 0
    for ex in examples:
        for b, n in enumerate(ex.lengths):
            response = torch.tensor([store.records[ex.ids[b]]["response_ids"]])
            want = eager_future_attention(model, ex.input_ids[b : b + 1, -n:], response)
            for layer, t in ex.target.items():
                torch.testing.assert_close(t[b : b + 1, :, -n:], want[layer], atol=2e-5, rtol=1e-4)
            checked += 1
    assert checked == 3 and max(len(ex.ids) for ex in examples) > 1  # rows past row 0 were checked


# --------------------------------------------------------------------------- 7. the oracle scorer


def test_oracle_scores_are_the_future_tokens_attention():
    """The oracle's attention and kept set against an eager forward over prompt + future."""
    model = make_model("llama")
    gen = torch.Generator().manual_seed(3)
    prompt = torch.randint(3, 128, (1, 24), generator=gen)
    future = torch.randint(3, 128, (1, 6), generator=gen)
    want = eager_future_attention(model, prompt, future)
    options = dict(future_ids=future[0], pooling_kernel=1, sink_tokens=0, recent_tokens=0)
    probe = EvictionCache(model, 6, "oracle", auto_compress=False, **options)
    with torch.no_grad():
        model(input_ids=prompt, **cache_kwargs(model, probe))
        got = probe.appended_attention(probe.scorer.appended_inputs(1, model))
    for layer, scores in want.items():
        torch.testing.assert_close(got[layer], scores, atol=1e-6, rtol=1e-4)
    cache = EvictionCache(model, 6, "oracle", **options)
    with torch.no_grad():
        model(input_ids=prompt, **cache_kwargs(model, cache))
    compared = 0
    for layer, kept in cache.kept_indices.items():
        for h in range(kept.shape[1]):
            values = want[layer][0, h].tolist()
            ranked = sorted(values, reverse=True)
            if ranked[5] - ranked[6] < 1e-5:
                continue  # a near tie at the boundary: either choice is right
            assert kept[0, h].tolist() == python_top_k(values, 6), (layer, h)
            compared += 1
    assert compared >= 2


# --------------------------------------------------------------------------- 8. beam reorder


OPTIONS = dict(window_size=4, pooling_kernel=1, sink_tokens=0, recent_tokens=0)


def test_reorder_cache_reorders_the_kept_indices():
    """Two different prompts in one batch, rows swapped as beam search does: each row's kept indices
    are those of its prompt run alone."""
    model = make_model("llama")
    gen = torch.Generator().manual_seed(5)
    prompts = torch.randint(3, 128, (2, 30), generator=gen)
    alone = []
    for row in prompts:
        cache = EvictionCache(model, 8, "snapkv", **OPTIONS)
        with torch.no_grad():
            model(input_ids=row[None], **cache_kwargs(model, cache))
        alone.append(cache.kept_indices)
    batch = EvictionCache(model, 8, "snapkv", **OPTIONS)
    with torch.no_grad():
        model(input_ids=prompts, **cache_kwargs(model, batch))
    assert any(not torch.equal(alone[0][layer], alone[1][layer]) for layer in alone[0])
    batch.reorder_cache(torch.tensor([1, 0]))  # what beam search calls between steps
    for layer, kept in batch.kept_indices.items():
        assert torch.equal(kept[0], alone[1][layer][0]) and torch.equal(kept[1], alone[0][layer][0])
