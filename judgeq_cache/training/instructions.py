"""General training prompts: generic instructions over long book text, answered by the model itself.

The paper trains the soft tokens on the model's own answers to general prompts. These prompts do
that over the bundled books, at the lengths eviction is used at:

* **text**: consecutive paragraphs of the bundled books (Brown and Moby-Dick, alternating) from a
  random start, ``min_tokens``..``max_tokens`` tokens;
* **instruction**: one of :data:`TRAIN_TEMPLATES` (summaries, lists of the people and places, what
  happens next, what the author argues, questions about what is in the text);
* **layouts**, cycled as the fact prompts' (:mod:`.facts`): ``after`` (text, then instruction, all
  compressed), ``before`` (instruction first), ``later`` (the text alone is compressed; the future is
  the instruction *and* the answer: compress first, ask later);
* **future**: the model's own answer, sampled at temperature 1 with a seed per prompt, generated
  here with a full cache (``new_tokens`` at most; it stops at the end-of-turn token).

Kept apart from the fidelity measure (:mod:`judgeq_cache.eval.fidelity_prompts`): no text comes
within :data:`~judgeq_cache.eval.fidelity_prompts.MARGIN` paragraphs of its dev/test passages, and
no template is one of its templates (``tests/test_instructions.py`` checks both).

What is task-matched, said plainly: the *kind* of request (the same families of generic
instructions over the same two books, at the same lengths and layouts); not the passages or the
wording.
"""

from __future__ import annotations

import random
from collections.abc import Collection

import torch
from torch import nn
from transformers import DynamicCache

from ..data import corpus_paragraphs
from ..eval.fidelity_prompts import MARGIN, in_fidelity_range
from ..eval.layouts import chat_parts
from ..utils import cache_kwarg
from .facts import TokenPrompt

__all__ = ["LAYOUTS", "TRAIN_TEMPLATES", "instruction_prompts", "sampled_answer"]

LAYOUTS = ("after", "before", "later")

TRAIN_TEMPLATES = (
    "Briefly recap what this excerpt is about.",
    "Who are the main figures in this excerpt? Give their names.",
    "Predict what comes next after this excerpt.",
    "Explain the writer's opinion in this excerpt.",
    "Make a bullet list of the things and places named in this excerpt.",
    "What is the tone of this excerpt?",
    "Pick the most important sentence of this excerpt and explain why it matters.",
    "Rewrite the opening of this excerpt in simpler words.",
    "What does the excerpt say happened first, and what happened last?",
    "Give this excerpt a title and explain your choice.",
    "Which details in this excerpt would a reader most likely remember?",
    "Describe the setting of this excerpt in two sentences.",
    "What is the relationship between the people in this excerpt?",
    "Write three questions a teacher could ask about this excerpt, with their answers.",
)


@torch.no_grad()
def sampled_answer(model: nn.Module, prompt_ids: list[int], new_tokens: int, seed: int) -> list[int]:
    """The model's own answer to ``prompt_ids``: sampled at temperature 1 (no top-k/top-p), seeded,
    at most ``new_tokens`` tokens, with a full ``DynamicCache``. The global RNG is left untouched."""
    device = model.get_input_embeddings().weight.device
    ids = torch.tensor([prompt_ids], device=device)
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(seed)
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=new_tokens,
            pad_token_id=model.generation_config.pad_token_id or model.generation_config.eos_token_id,
            **{cache_kwarg(model): DynamicCache(config=model.config)},
        )
    return out[0, ids.shape[1] :].tolist()


def _text(tokenizer, corpus: str, rng: random.Random, tokens: int) -> tuple[str, tuple[int, int]]:
    """About ``tokens`` tokens of whole paragraphs (the last one cut) from a random start whose run
    stays :data:`MARGIN` paragraphs away from every fidelity passage; and the paragraphs ``[start, end)``."""
    paragraphs = corpus_paragraphs(corpus)
    for _ in range(10_000):
        start = rng.randrange(len(paragraphs))
        pieces, used, i = [], 0, start
        while used < tokens and i < len(paragraphs) and not in_fidelity_range(corpus, i, MARGIN):
            pieces.append(paragraphs[i])
            used += len(tokenizer.encode(paragraphs[i], add_special_tokens=False)) + 1
            i += 1
        if used >= tokens:
            ids = tokenizer.encode("\n".join(pieces), add_special_tokens=False)[:tokens]
            return tokenizer.decode(ids), (start, i)
    raise ValueError(f"no run of {tokens} tokens of {corpus} avoids the fidelity passages")


def instruction_prompts(
    model: nn.Module,
    tokenizer,
    num_prompts: int,
    *,
    min_tokens: int = 800,
    max_tokens: int = 2200,
    new_tokens: int = 64,
    layouts: tuple[str, ...] = LAYOUTS,
    corpora: tuple[str, ...] = ("brown", "moby_dick"),
    seed: int = 0,
    id_prefix: str = "instruct",
    skip_ids: Collection[str] = (),
    progress: bool = True,
) -> list[TokenPrompt]:
    """``num_prompts`` generic-instruction prompts whose future is the model's own sampled answer.

    Deterministic for a given ``seed`` and model: prompt ``i`` does not depend on the others, so
    ``skip_ids`` (e.g. the prompts already prepared on disk) are left out without generating their
    answers. Plugs into :func:`judgeq_cache.training.prepared.prepare_to_disk` like the fact and
    continuation prompts.
    """
    unknown = set(layouts) - set(LAYOUTS)
    if unknown:
        raise ValueError(f"unknown layouts {sorted(unknown)}; choose from {LAYOUTS}")
    if min_tokens < 64 or max_tokens < min_tokens:
        raise ValueError(f"need 64 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be at least 1, got {new_tokens}")
    from tqdm.auto import tqdm

    head, tail = chat_parts(tokenizer)

    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False) if text else []

    out = []
    for i in tqdm(range(num_prompts), desc="instructions", disable=not progress):
        if f"{id_prefix}-{seed}-{i}" in skip_ids:
            continue
        rng = random.Random(f"{id_prefix}:{seed}:{i}")
        corpus = corpora[i % len(corpora)]
        text, span = _text(tokenizer, corpus, rng, rng.randint(min_tokens, max_tokens))
        instruction = rng.choice(TRAIN_TEMPLATES)
        layout = layouts[i % len(layouts)]
        if layout == "before":
            prompt = ids(head + instruction + "\n\n") + ids(text) + ids("\n\n" + tail.lstrip("\n"))
            asked = []
        elif layout == "after":
            prompt, asked = ids(head) + ids(text) + ids("\n\n" + instruction + tail), []
        else:
            prompt, asked = ids(head) + ids(text), ids("\n\n" + instruction + tail)
        answer = sampled_answer(model, prompt + asked, new_tokens, seed=rng.randrange(2**31))
        if not answer:
            raise ValueError(f"prompt {i}: the model's answer is empty")
        out.append(
            TokenPrompt(
                f"{id_prefix}-{seed}-{i}",
                prompt,
                [asked + answer],
                meta={
                    "layout": layout,
                    "corpus": corpus,
                    "paragraphs": list(span),
                    "instruction": instruction,
                },
            )
        )
    return out
