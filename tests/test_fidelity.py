"""The fidelity measure (judgeq_cache.eval.fidelity): teacher-forced NLL through compressed caches
against independent one-forward references, the ratio at a budget that keeps everything, and the
dev/test prompt pools kept apart from each other and from the training data."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model
from reference import keep_masks, masked_logits

from judgeq_cache import JudgeQAdapter
from judgeq_cache.cache.prefill import SharedPrefill
from judgeq_cache.eval.fidelity import (
    answer_nll,
    fidelity_markdown,
    fidelity_rows,
    fidelity_summary,
    paired_rows,
)
from judgeq_cache.eval.fidelity_prompts import (
    DEV_TEMPLATES,
    FIDELITY_PARAGRAPHS,
    TEST_TEMPLATES,
    FidelityPrompt,
    fidelity_layout,
    fidelity_prompts,
    in_fidelity_range,
)
from judgeq_cache.eval.layouts import PromptLayout


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(seed))


def _ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")


@pytest.mark.parametrize("appended_tokens", [0, 5])
def test_full_cache_nll_equals_one_forward(appended_tokens):
    """Full cache: the per-token NLL equals one plain forward over prompt + appended + answer."""
    model = make_model("llama")
    prompt, appended, answer = _ids(40, 1), _ids(appended_tokens, 2), _ids(8, 3)
    shared = SharedPrefill(model, prompt, all_queries=False)
    got = answer_nll(model, shared.full_cache(), appended, answer, shared.logits[:, -1])
    ids = torch.cat([prompt, appended, answer], dim=1)
    with torch.no_grad():
        logits = model(ids).logits[0]
    start = prompt.shape[1] + appended_tokens - 1
    expected = _ce(logits[start : start + answer.shape[1]], answer[0])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scorer", ["snapkv", "tova", "streamingllm"])
def test_compressed_nll_equals_masked_reference(scorer):
    """Compressed cache: the NLL equals the full cache with exactly the evicted entries masked out of
    every layer (tests/reference.py), fed the appended tokens and the answer in one forward."""
    model = make_model("llama")
    prompt, appended, answer = _ids(48, 4), _ids(6, 5), _ids(10, 6)
    shared = SharedPrefill(model, prompt, all_queries=False)
    cache = shared.cache(12, scorer)
    got = answer_nll(model, cache, appended, answer, shared.logits[:, -1])
    feed = torch.cat([appended, answer[:, :-1]], dim=1)
    keep = keep_masks(cache.kept_indices, prompt.shape[1])
    (logits,) = masked_logits(model, {"input_ids": prompt}, [{"input_ids": feed}], keep)
    expected = _ce(logits[0, appended.shape[1] - 1 :], answer[0])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(
        got, answer_nll(model, shared.full_cache(), appended, answer, shared.logits[:, -1])
    )


def _prompt(i: int) -> FidelityPrompt:
    return FidelityPrompt(f"t-{i}", "dev", "brown", (0, 1), "unused", "unused")


@pytest.mark.parametrize("setting_appended", [0, 4])
def test_ratio_is_one_when_the_budget_keeps_everything(setting_appended):
    """At a budget >= the prompt length every method keeps the whole prompt: the ratio is 1."""
    model = make_model("llama")
    model.generation_config.eos_token_id = None  # random weights: a fixed-length answer
    layout = PromptLayout(_ids(30, 7), _ids(setting_appended, 8))
    adapters = {"judgeq": JudgeQAdapter.init_for(model, 4, seed=0)}
    methods = ["full", "judgeq", "tova", "snapkv", "streamingllm"]
    rows = fidelity_rows(
        model, None, _prompt(0), 0, "s", methods, [64], adapters, answer_tokens=6, layout=layout
    )
    assert [r.method for r in rows] == methods
    assert all(r.score == pytest.approx(1.0, abs=1e-6) for r in rows)
    assert all(r.extra["answer_tokens"] == 6 for r in rows)
    again = fidelity_rows(
        model, None, _prompt(0), 0, "s", ["full"], [64], adapters, answer_tokens=6, layout=layout
    )
    assert again[0].extra["nll"] == rows[0].extra["nll"]  # the sampled answer is seeded per prompt


def test_summary_and_paired_intervals():
    """The summary averages each cell; the paired interval is Judge Q minus the baseline on shared prompts."""
    model = make_model("llama")
    model.generation_config.eos_token_id = None
    adapters = {"judgeq": JudgeQAdapter.init_for(model, 4, seed=0)}
    rows = []
    for i in range(3):
        layout = PromptLayout(_ids(40, 10 + i), _ids(3, 20 + i))
        rows += fidelity_rows(
            model, None, _prompt(i), i, "s", ["full", "judgeq", "tova"], [0.25], adapters, answer_tokens=5, layout=layout
        )  # fmt: skip
    summary = {(r["method"], r["budget"]): r for r in fidelity_summary(rows)}
    tova = [r.score for r in rows if r.method == "tova"]
    assert summary[("tova", "25%")]["ratio_mean"] == pytest.approx(sum(tova) / 3)
    assert summary[("full", "full")]["ratio_mean"] == 1.0
    (pair,) = paired_rows(rows, ["judgeq"], ["tova"])
    judgeq = [r.score for r in rows if r.method == "judgeq"]
    assert pair["diff"] == pytest.approx(sum(judgeq) / 3 - sum(tova) / 3)
    assert pair["low"] <= pair["diff"] <= pair["high"] and pair["n"] == 3
    table = fidelity_markdown(fidelity_summary(rows), [pair])
    assert "| s | 25% | 3 |" in table and "judgeq − tova" in table


@pytest.fixture(scope="module")
def tokenizer():
    from judgeq_cache.models import load_model

    return load_model("embedded")[1]


def test_dev_and_test_pools_are_disjoint(tokenizer):
    """Dev and test share no paragraph range, no passage and no template; the layouts put the
    instruction after (query-agnostic, appended) or before (question-first) the passage."""
    ranges = {
        (c, i) for split in ("dev", "test") for c, spans in FIDELITY_PARAGRAPHS[split].items() for s, e in spans for i in range(s, e)
    }  # fmt: skip
    dev = {(c, i) for c, spans in FIDELITY_PARAGRAPHS["dev"].items() for s, e in spans for i in range(s, e)}
    test = {(c, i) for c, spans in FIDELITY_PARAGRAPHS["test"].items() for s, e in spans for i in range(s, e)}
    assert dev and test and not dev & test and len(ranges) == len(dev) + len(test)
    assert not set(DEV_TEMPLATES) & set(TEST_TEMPLATES)
    dev_prompts, test_prompts = (
        fidelity_prompts(tokenizer, "dev", 12),
        fidelity_prompts(tokenizer, "test", 12),
    )
    for p in dev_prompts + test_prompts:
        assert all((p.corpus, i) in (dev if p.split == "dev" else test) for i in range(*p.paragraphs))
    used = [set(range(*p.paragraphs)) for p in dev_prompts + test_prompts]
    assert sum(map(len, used)) == len(set().union(*used))  # no paragraph in two passages
    agnostic = fidelity_layout(tokenizer, dev_prompts[0], "query-agnostic")
    first = fidelity_layout(tokenizer, dev_prompts[0], "question-first")
    assert dev_prompts[0].instruction in tokenizer.decode(agnostic.appended[0])
    assert dev_prompts[0].instruction in tokenizer.decode(first.compressed[0][:40])
    assert first.appended.shape[1] == 0 and 1800 < agnostic.compressed.shape[1] < 2000


def test_fidelity_passages_are_not_in_the_fact_training_prompts(tokenizer):
    """No paragraph of a fidelity range occurs in the first 200 fact prompts (seed 0), a superset of
    every fact set trained on so far (144 + 16 bundled; 112 + 8 for the general adapter)."""
    from judgeq_cache.data import corpus_paragraphs
    from judgeq_cache.training.facts import fact_prompts

    prompts = fact_prompts(tokenizer, 200, min_tokens=800, max_tokens=2200, seed=0)
    for corpus in ("brown", "moby_dick"):
        text = "\x00".join(tokenizer.decode(p.prompt_ids) for p in prompts if p.meta["corpus"] == corpus)
        paragraphs = corpus_paragraphs(corpus)
        inside = [i for i in range(len(paragraphs)) if in_fidelity_range(corpus, i)]
        assert inside
        assert not [i for i in inside if paragraphs[i][:60] in text]
        # the check itself finds paragraphs that are used
        assert sum(paragraphs[i][:60] in text for i in range(len(paragraphs))) > 100
