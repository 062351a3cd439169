"""Instruction training prompts (judgeq_cache.training.instructions): layouts, the model's own sampled
answers as futures, determinism, kept apart from the fidelity passages and templates, and usable by
the prepared-data route."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import make_model

from judgeq_cache.data import corpus_paragraphs
from judgeq_cache.eval.fidelity_prompts import DEV_TEMPLATES, MARGIN, TEST_TEMPLATES, in_fidelity_range
from judgeq_cache.training.instructions import TRAIN_TEMPLATES, _text, instruction_prompts, sampled_answer
from judgeq_cache.training.prepared import prepare_to_disk


@pytest.fixture(scope="module")
def tokenizer():
    from judgeq_cache.models import load_model

    return load_model("embedded")[1]


@pytest.fixture(scope="module")
def model(tokenizer):
    """A tiny random llama over the real tokenizer's vocabulary (end-of-turn never forced)."""
    model = make_model("llama", vocab_size=len(tokenizer))
    model.generation_config.eos_token_id = None
    return model


def test_templates_are_disjoint_from_the_fidelity_templates():
    assert len(set(TRAIN_TEMPLATES)) == len(TRAIN_TEMPLATES)
    assert not set(TRAIN_TEMPLATES) & (set(DEV_TEMPLATES) | set(TEST_TEMPLATES))


def test_training_text_never_comes_near_a_fidelity_passage(tokenizer):
    """Many random excerpts (short ones reach everywhere): none within MARGIN paragraphs of a range,
    and the excerpt text is exactly those paragraphs (so checking indices checks the text)."""
    for corpus in ("brown", "moby_dick"):
        paragraphs = corpus_paragraphs(corpus)
        rng = random.Random(0)
        for _ in range(300):
            text, (start, end) = _text(tokenizer, corpus, rng, 80)
            assert not any(in_fidelity_range(corpus, i, MARGIN) for i in range(start, end))
            assert text.startswith(paragraphs[start][:30])


def test_prompts_layouts_and_sampled_futures(model, tokenizer):
    prompts = instruction_prompts(
        model, tokenizer, 6, min_tokens=100, max_tokens=160, new_tokens=5, progress=False
    )
    assert [p.meta["layout"] for p in prompts] == ["after", "before", "later"] * 2
    for p in prompts:
        text = tokenizer.decode(p.prompt_ids)
        instruction = p.meta["instruction"]
        assert instruction in TRAIN_TEMPLATES
        assert len(p.futures) == 1 and not p.needles
        if p.meta["layout"] == "later":
            assert instruction not in text and instruction in tokenizer.decode(p.futures[0])
            asked = tokenizer.encode("\n\n" + instruction, add_special_tokens=False)
            assert p.futures[0][: len(asked)] == asked
            answer = p.futures[0][len(p.futures[0]) - 5 :]
        else:
            assert instruction in text
            answer = p.futures[0]
        assert len(answer) == 5
        assert not any(in_fidelity_range(p.meta["corpus"], i, MARGIN) for i in range(*p.meta["paragraphs"]))
    # deterministic, and skip_ids leaves prompts out without changing the others
    again = instruction_prompts(
        model,
        tokenizer,
        6,
        min_tokens=100,
        max_tokens=160,
        new_tokens=5,
        skip_ids={"instruct-0-1"},
        progress=False,
    )
    assert [p.id for p in again] == [p.id for i, p in enumerate(prompts) if i != 1]
    assert [(p.prompt_ids, p.futures) for p in again] == [
        (p.prompt_ids, p.futures) for i, p in enumerate(prompts) if i != 1
    ]


def test_sampled_answer_is_seeded_and_keeps_the_global_rng(model):
    ids = list(range(5, 25))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = sampled_answer(model, ids, 8, seed=7)
    after = torch.rand(1)
    assert a == sampled_answer(model, ids, 8, seed=7) and len(a) == 8
    assert a != sampled_answer(model, ids, 8, seed=8)
    assert torch.equal(before, after)  # the caller's random stream is untouched


def test_prompts_plug_into_the_prepared_route(model, tokenizer, tmp_path):
    prompts = instruction_prompts(
        model, tokenizer, 3, min_tokens=64, max_tokens=80, new_tokens=4, progress=False
    )
    examples = prepare_to_disk(model, prompts, tmp_path, progress=False)
    assert [e.id for e in examples] == [p.id for p in prompts]
    assert [e.input_ids[0].tolist() for e in examples] == [p.prompt_ids for p in prompts]
