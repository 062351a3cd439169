"""Selection path, TOVA, needle recall, retrieval training data and prepared examples (tiny models)."""

from __future__ import annotations

import pytest
import torch
from conftest import cache_kwargs, make_model
from test_eval import tiny_model, tiny_tokenizer

from judgeq_cache import EvictionCache, JudgeQAdapter, JudgeQCache
from judgeq_cache.eval import SETTINGS, build_prompt, make_samples
from judgeq_cache.eval.needles import needle_positions
from judgeq_cache.hitrate import needle_recall, token_positions
from judgeq_cache.scorers import LayerInputs
from judgeq_cache.training import TrainConfig, alignment_loss, evaluate_hit_rates, train
from judgeq_cache.training.facts import FACT_KINDS, LAYOUTS, fact_prompts
from judgeq_cache.training.objective import LOSSES
from judgeq_cache.training.prepared import load_prepared, prepare_to_disk


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_tova_keeps_the_top_of_the_last_querys_head_averaged_attention():
    """Reference: eager attention probabilities of the last prompt query, averaged over every query
    head (kvpress's TOVAPress), the same top-k in each KV head, the last token always kept."""
    model = make_model("llama", attn="eager")
    ids = torch.randint(3, 128, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    cache = EvictionCache(model, 10, "tova")
    with torch.no_grad():
        model(ids, use_cache=True, **cache_kwargs(model, cache))
    for layer, attn in enumerate(out.attentions):
        scores = attn[0, :, -1, :].mean(0)  # [N]
        scores[-1] = float("inf")
        expected = scores.topk(10).indices.sort().values
        kept = cache.kept_indices[layer][0]
        assert all(torch.equal(kept[h], expected) for h in range(kept.shape[0]))


def test_select_is_the_caches_selection_path():
    """Scorer.select on the captured attention gives exactly what the cache kept."""
    model = make_model("qwen3")
    ids = torch.randint(3, 128, (1, 48), generator=torch.Generator().manual_seed(2))
    cache = EvictionCache(model, 12, "snapkv", window_size=8, shared_heads=True)
    base = EvictionCache(model, 12, "snapkv", window_size=8, auto_compress=False)
    capture = base.query_capture(slice(40, None), 40, 48, None)
    with torch.no_grad(), capture:
        model(ids, use_cache=True, **cache_kwargs(model, base))
    with torch.no_grad():
        model(ids, use_cache=True, **cache_kwargs(model, cache))
    for layer in cache.evictable_layers:
        keys = base.layers[layer].keys
        inputs = LayerInputs(
            layer_idx=layer,
            keys=keys,
            values=keys,
            attention=capture.scores[layer],
            key_mask=torch.ones(1, 48, dtype=torch.bool),
            budget=12,
        )
        assert torch.equal(cache.scorer.select(inputs), cache.kept_indices[layer])


def test_needle_recall_and_token_positions(tok):
    text = "aaa bbb 1234 ccc 1234 dd"
    positions = token_positions(tok, text, ["1234"])
    assert tok.decode([tok.encode(text, add_special_tokens=False)[p] for p in positions]).count("1234") == 2
    kept = {0: torch.tensor([[[0, 1, 2]]]), 1: torch.tensor([[[1, 2, 3], [4, 5, 6]]])}
    # [1, 2]: layer 0 keeps both; layer 1 head 0 both, head 1 none -> (1 + 0.5) / 2
    assert needle_recall(kept, [1, 2]) == pytest.approx(0.75)
    assert needle_recall(kept, [2, 3]) == pytest.approx((0.5 + (1.0 + 0.0) / 2) / 2)
    with pytest.raises(ValueError, match="needle"):
        needle_recall(kept, [])


@pytest.mark.parametrize("setting", SETTINGS)
def test_needle_positions_point_at_the_answers(tok, setting):
    sample = make_samples("needle_multiquery", 1, 300, tok)[0]
    ids = build_prompt(tok, sample, setting).compressed[0]
    found = tok.decode(ids[needle_positions(tok, sample, setting)])
    assert all(answer in found for answer in sample.answers)


def test_fact_prompts_are_deterministic_differ_from_eval_needles_and_locate_values(tok):
    prompts = fact_prompts(tok, 6, min_tokens=200, max_tokens=300, seed=3)
    again = fact_prompts(tok, 6, min_tokens=200, max_tokens=300, seed=3)
    assert [p.prompt_ids for p in prompts] == [p.prompt_ids for p in again]
    assert {p.meta["layout"] for p in prompts} == set(LAYOUTS)
    for p in prompts:
        text = tok.decode(p.prompt_ids)
        assert "magic number" not in text and "code word" not in text and "hotel room" not in text
        assert p.needles and all(n < len(p.prompt_ids) for n in p.needles)
        assert 200 <= len(p.prompt_ids) <= 400
        if p.meta["layout"] == "later":  # one future per fact: its question and answer
            assert len(p.futures) == len(p.meta["facts"])
            assert "?" in tok.decode(p.futures[0])
        else:
            assert len(p.futures) == 1 and "?" not in tok.decode(p.futures[0])
    assert len(FACT_KINDS) >= 10
    with pytest.raises(ValueError, match="layouts"):
        fact_prompts(tok, 1, layouts=("sideways",))


def test_prepared_examples_equal_in_memory_targets_and_resume(tmp_path, tok):
    model = tiny_model()
    prompts = fact_prompts(tok, 2, min_tokens=100, max_tokens=140, seed=1)
    examples = prepare_to_disk(model, prompts, tmp_path, progress=False)
    # the same target computed in memory, from a fresh prefill
    prompt = prompts[0]
    cache = EvictionCache(model, 1, "random", auto_compress=False)
    ids = torch.tensor([prompt.prompt_ids])
    with torch.no_grad():
        model(ids, use_cache=True, **cache_kwargs(model, cache))
        expected = cache.appended_attention({"input_ids": torch.tensor([prompt.futures[0]])})
    n = len(prompt.futures)
    for layer, t in examples[0].target.items():
        if n == 1:
            torch.testing.assert_close(t, expected[layer])
        assert t.shape == (1, 2, len(prompt.prompt_ids))
        assert bool(((t.sum(-1) > 0.5) & (t.sum(-1) <= 1 + 1e-5)).all())  # the rest: the futures themselves
    # a loaded prefill scores like the live cache (KV stored in fp16)
    adapter = JudgeQAdapter.init_for(model, 4)
    live = JudgeQCache(model, adapter, 0.5, auto_compress=False)
    with torch.no_grad():
        model(ids, use_cache=True, **cache_kwargs(model, live))
        want = live.appended_attention(live.scorer.appended_inputs(1, model))
        loaded = examples[0].prefilled(model, JudgeQCache(model, adapter, 0.5, auto_compress=False))
        got = loaded.appended_attention(loaded.scorer.appended_inputs(1, model))
    for layer in want:
        torch.testing.assert_close(got[layer], want[layer], atol=2e-3, rtol=0.05)
    # resume: existing files are not rewritten
    stamp = examples[0].path.stat().st_mtime_ns
    prepare_to_disk(model, prompts, tmp_path, progress=False)
    assert examples[0].path.stat().st_mtime_ns == stamp
    assert load_prepared(examples[1].path).needles == prompts[1].needles


@pytest.mark.parametrize("kind", LOSSES)
def test_every_loss_is_zero_at_the_target_and_positive_elsewhere(kind):
    t = {0: torch.softmax(torch.randn(2, 3, 20), -1)}
    p = {0: torch.softmax(torch.randn(2, 3, 20), -1)}
    mask = torch.ones(2, 20)
    if kind == "topk":  # its optimum is the target cut to its top entries
        top = t[0].topk(2, dim=-1).indices
        t = {0: torch.zeros_like(t[0]).scatter(-1, top, t[0].gather(-1, top))}
        t = {0: t[0] / t[0].sum(-1, keepdim=True)}
    assert alignment_loss(t, t, mask, kind).item() == pytest.approx(0.0, abs=1e-5)
    assert alignment_loss(p, t, mask, kind).item() > 0


def test_training_on_prepared_examples_reports_needle_recall(tmp_path, tok):
    model = tiny_model()
    prompts = fact_prompts(tok, 3, min_tokens=100, max_tokens=140, seed=2)
    examples = prepare_to_disk(model, prompts, tmp_path / "data", progress=False)
    cfg = TrainConfig(num_soft_tokens=4, max_steps=3, batch_size=1, grad_accum=2, loss="topk", save_every=0)
    adapter, report = train(
        model, tok, None, tmp_path / "out", cfg, train_examples=examples[:2], heldout_examples=examples[2:]
    )
    final = report["final"]
    for name in ("judgeq", "snapkv", "tova", "streamingllm", "oracle"):
        assert 0.0 <= final[f"needle_recall/{name}@10%"] <= 1.0
    metrics = evaluate_hit_rates(model, adapter, examples[2:], (0.5,), cfg)
    assert "hit_rate/tova@50%" in metrics


def test_metric_agreement_separates_a_predictive_metric_from_noise():
    from judgeq_cache.eval.records import Record
    from judgeq_cache.eval.stats import metric_agreement

    def record(i, score, recall, hit):
        return Record(
            task="t",
            index=i,
            setting="s",
            method="m",
            budget="25%",
            source="x",
            answer="",
            references=[],
            score=score,
            kept_fraction=0.25,
            kv_bytes=0,
            seconds=0.0,
            prompt_tokens=10,
            hit_rate=hit,
            extra={"needle_recall": recall},
        )

    rows = [record(i, float(i % 2), 0.2 + 0.6 * (i % 2), 0.5) for i in range(20)]
    good = metric_agreement(rows, "needle_recall")
    assert good.auc == 1.0 and good.correlation == pytest.approx(1.0) and good.n == 20
    assert metric_agreement(rows, "hit_rate").auc == 0.5
    assert metric_agreement(rows[:3], "needle_recall") is None


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_hybrid_judgeq_mixes_the_last_querys_attention_and_prefill_sharing_agrees(arch):
    """window_weight mixes the last prompt query's attention (captured in the prefill) into the soft
    tokens' scores: the cache keeps the top of exactly that mix, and a SharedPrefill copy keeps the same."""
    from judgeq_cache.cache.prefill import SharedPrefill

    model = make_model(arch)
    adapter = JudgeQAdapter.init_for(model, 4)
    ids = torch.randint(3, 128, (1, 50), generator=torch.Generator().manual_seed(4))
    options = dict(window_size=1, window_weight=0.5, shared_heads=True, pooling_kernel=1, recent_tokens=0)
    cache = JudgeQCache(model, adapter, 10, **options)
    with torch.no_grad():
        model(ids, use_cache=True, **cache_kwargs(model, cache))
    # reference: soft attention from a auto_compress=False copy, last-query attention from a capture
    ref = JudgeQCache(model, adapter, 10, auto_compress=False)
    capture = ref.query_capture(slice(49, None), 49, 50, None)
    with torch.no_grad(), capture:
        model(ids, use_cache=True, **cache_kwargs(model, ref))
    soft = ref.appended_attention(ref.scorer.appended_inputs(1, model))
    for layer in cache.evictable_layers:
        mix = (0.5 * soft[layer] + 0.5 * capture.scores[layer]).mean(1)[0]
        mix[:4] = float("inf")  # sinks
        expected = mix.topk(10).indices.sort().values
        assert torch.equal(cache.kept_indices[layer][0, 0], expected)
    shared = SharedPrefill(model, ids, window_size=(32, 1))
    copy = shared.cache(10, "judgeq", adapter=adapter, **options)
    for layer in cache.evictable_layers:
        assert torch.equal(copy.kept_indices[layer], cache.kept_indices[layer])
    with pytest.raises(ValueError, match="window_size"):
        JudgeQCache(model, adapter, 10, window_weight=0.5, window_size=0)


def test_continuation_prompts_continue_the_book_and_avoid_the_evaluation_excerpts(tok):
    """Futures: the model's own greedy continuation (checked against generate run alone) and the book's
    real next tokens; excerpts keep clear of the decode benchmark's test and dev prompts."""
    import sys
    from pathlib import Path

    from transformers import DynamicCache

    from judgeq_cache.data import load_corpus
    from judgeq_cache.training.continuations import RESERVED, continuation_prompts, overlaps_reserved

    model = tiny_model()
    kw = {"min_tokens": 100, "max_tokens": 140, "new_tokens": 8, "seed": 1, "progress": False}
    prompts = continuation_prompts(model, tok, 4, **kw)
    again = continuation_prompts(model, tok, 4, **kw)
    assert [p.prompt_ids for p in prompts] == [p.prompt_ids for p in again]
    for p in prompts:
        assert 100 <= len(p.prompt_ids) <= 140 and p.needles == []
        generated, real = p.futures
        assert len(generated) == len(real) == 8
        with torch.no_grad():
            alone = model.generate(
                torch.tensor([p.prompt_ids]),
                do_sample=False,
                max_new_tokens=8,
                min_new_tokens=8,
                **cache_kwargs(model, DynamicCache(config=model.config)),
            )[0, len(p.prompt_ids) :]
        assert generated == alone.tolist()
        text = load_corpus(p.meta["corpus"])[p.meta["offset"] :]
        assert text.startswith(tok.decode(p.prompt_ids)[:90])
        assert not overlaps_reserved(p.meta["corpus"], p.meta["offset"], p.meta["offset"] + 1)
    assert {p.meta["corpus"] for p in prompts} == {"brown", "moby_dick"}
    # every excerpt the decode benchmark reports (docs/lab_notes.md) and tunes on (decode sweep) is reserved
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "scripts"))
    from decode_sweep import DEV_PROMPTS

    readme = (root / "docs" / "lab_notes.md").read_text()  # where the decode benchmark's command lives
    tested = [s.split(":") for s in readme.split("--decode-prompts ")[1].split()[0].split(",")]
    for corpus, offset in [*DEV_PROMPTS.values(), *((c, int(o)) for c, o in tested)]:
        assert offset in RESERVED[corpus]
        assert overlaps_reserved(corpus, offset, offset + 1)
    with pytest.raises(ValueError, match="new_tokens"):
        continuation_prompts(model, tok, 1, new_tokens=0)


def _span_reference(scores: list[float], budget: int, r: int, pool: int) -> list[int]:
    """Span-aware top-k written out with Python lists: max-pool, the budget // (2 * (2r + 1)) best
    anchors (earliest on ties), their spans first (by pooled score, then position), then the rest."""
    n = len(scores)
    pooled = [max(scores[max(0, i - pool // 2) : i + pool // 2 + 1]) for i in range(n)]
    by_score = sorted(range(n), key=lambda i: (-pooled[i], i))
    anchors = by_score[: budget // (2 * (2 * r + 1))]
    spans = {j for a in anchors for j in range(max(0, a - r), min(n, a + r + 1))}
    order = [i for i in by_score if i in spans] + [i for i in by_score if i not in spans]
    return sorted(order[:budget])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("budget", "r", "pool"), [(14, 3, 1), (22, 2, 3), (12, 5, 7), (9, 1, 1)])
def test_span_aware_selection_keeps_whole_spans_around_the_best_anchors(seed, budget, r, pool):
    from judgeq_cache.scorers.positional import StreamingLLMScorer

    g = torch.Generator().manual_seed(seed)
    n = 48
    scores = torch.rand((1, 2, n), generator=g).round(decimals=2)  # ties, as after max-pooling
    scorer = StreamingLLMScorer(span_tokens=r, pooling_kernel=pool, sink_tokens=0, recent_tokens=0)
    scorer.score = lambda inputs: scores  # type: ignore[method-assign]
    keys = torch.zeros((1, 2, n, 4))
    inputs = LayerInputs(
        layer_idx=0,
        keys=keys,
        values=keys,
        attention=None,
        key_mask=torch.ones((1, n), dtype=torch.bool),
        budget=budget,
    )
    kept = scorer.select(inputs)
    for head in range(2):
        assert kept[0, head].tolist() == _span_reference(scores[0, head].tolist(), budget, r, pool)
    # span_tokens=0 is the plain top-k
    plain = StreamingLLMScorer(pooling_kernel=pool, sink_tokens=0, recent_tokens=0)
    plain.score = lambda inputs: scores  # type: ignore[method-assign]
    assert plain.select(inputs)[0, 0].tolist() == _span_reference(scores[0, 0].tolist(), budget, 0, pool)
