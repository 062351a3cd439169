"""Prompts of the fidelity measure (:mod:`.fidelity`): generic instructions over bundled book passages.

Three disjoint pools, so the measure never sees what Judge Q was trained on:

* **passages**: the dev and test passages are consecutive paragraphs of :func:`corpus_paragraphs`
  inside :data:`FIDELITY_PARAGRAPHS`, ranges of paragraph indices that the fact prompts
  (``fact_prompts(seed=0)``, the first 200: every adapter trained so far) never touch and that the
  instruction training prompts (:mod:`judgeq_cache.training.instructions`) avoid by construction
  (with :data:`MARGIN` paragraphs either side). ``tests/test_fidelity.py`` checks both.
* **instructions**: :data:`DEV_TEMPLATES` and :data:`TEST_TEMPLATES` share no template with each other
  or with the training templates (same kinds of request, other wording).
* dev and test use different paragraph ranges.

Two layouts, as the needle settings (:mod:`.layouts`):

* ``query-agnostic``: the passage alone is prefilled and compressed; the instruction comes after it;
* ``question-first``: the instruction, then the passage, compressed together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..data import corpus_paragraphs
from .layouts import PromptLayout, chat_parts

__all__ = [
    "DEV_TEMPLATES",
    "FIDELITY_PARAGRAPHS",
    "FIDELITY_SETTINGS",
    "MARGIN",
    "TEST_TEMPLATES",
    "FidelityPrompt",
    "fidelity_layout",
    "fidelity_prompts",
    "in_fidelity_range",
]

FIDELITY_SETTINGS = ("query-agnostic", "question-first")

#: Paragraph index ranges ``[start, end)`` of ``corpus_paragraphs(name)`` per split. Chosen as the
#: largest gaps between the paragraphs of ``fact_prompts(tokenizer, 200, min_tokens=800,
#: max_tokens=2200, seed=0)`` (2 paragraphs of margin inside each gap).
FIDELITY_PARAGRAPHS: Mapping[str, Mapping[str, tuple[tuple[int, int], ...]]] = {
    "dev": {"brown": ((3092, 3418),), "moby_dick": ((907, 1013),)},
    "test": {"brown": ((5385, 5686),), "moby_dick": ((74, 137), (2114, 2194))},
}
#: Paragraphs kept free on either side of each range by the training prompts.
MARGIN = 3

DEV_TEMPLATES = (
    "Summarise this passage in three sentences.",
    "List the people who appear in this text, with one line on each.",
    "What do you think happens right after the end of this passage?",
    "What point is the author trying to make in this text?",
    "Which places, objects or animals does this passage mention?",
    "Describe the mood of this passage and quote one phrase that shows it.",
)
TEST_TEMPLATES = (
    "Write a short summary of the text for someone who has not read it.",
    "Name every character or person mentioned in the passage and say what they do.",
    "Continue the story or argument for a few more sentences, in the same style.",
    "What is the main argument or message of this passage?",
    "List the locations and settings described in the text.",
    "What question does this passage leave unanswered? Explain briefly.",
)
_TEMPLATES = {"dev": DEV_TEMPLATES, "test": TEST_TEMPLATES}


def in_fidelity_range(corpus: str, index: int, margin: int = 0) -> bool:
    """Whether paragraph ``index`` of ``corpus`` lies in a dev or test range (widened by ``margin``)."""
    return any(
        start - margin <= index < end + margin
        for split in FIDELITY_PARAGRAPHS.values()
        for start, end in split.get(corpus, ())
    )


@dataclass(frozen=True)
class FidelityPrompt:
    """One passage with one instruction: ``passage`` is text of whole paragraphs (the last one cut to
    the token count); ``paragraphs`` the indices used."""

    id: str
    split: str
    corpus: str
    paragraphs: tuple[int, int]
    passage: str
    instruction: str


def fidelity_prompts(
    tokenizer, split: str, num_prompts: int, *, passage_tokens: int = 1900
) -> list[FidelityPrompt]:
    """``num_prompts`` non-overlapping passages of ``split`` (``"dev"`` or ``"test"``), alternating
    Brown and Moby-Dick, each ``passage_tokens`` tokens, with the split's templates cycled.

    Deterministic; raises ``ValueError`` when the split's ranges hold fewer passages.
    """
    if split not in FIDELITY_PARAGRAPHS:
        raise ValueError(f"unknown split {split!r}; choose from {sorted(FIDELITY_PARAGRAPHS)}")
    ranges = FIDELITY_PARAGRAPHS[split]
    cursors = {corpus: [list(r) for r in spans] for corpus, spans in ranges.items()}
    corpora = sorted(ranges)
    out = []
    for i in range(num_prompts):
        for corpus in corpora[i % len(corpora) :] + corpora[: i % len(corpora)]:
            found = _next_passage(tokenizer, corpus, cursors[corpus], passage_tokens)
            if found:
                break
        else:
            raise ValueError(f"the {split} ranges hold only {i} passages of {passage_tokens} tokens")
        (first, last), text = found
        templates = _TEMPLATES[split]
        out.append(
            FidelityPrompt(f"{split}-{i}", split, corpus, (first, last), text, templates[i % len(templates)])
        )
    return out


def _next_passage(tokenizer, corpus: str, spans: list[list[int]], tokens: int):
    """The next passage of ``tokens`` tokens from the first span with room; advances the cursor."""
    paragraphs = corpus_paragraphs(corpus)
    for span in spans:
        pieces, used, i = [], 0, span[0]
        while used < tokens and i < span[1]:
            pieces.append(paragraphs[i])
            used += len(tokenizer.encode(paragraphs[i], add_special_tokens=False)) + 1
            i += 1
        if used >= tokens:
            span[0] = i
            ids = tokenizer.encode("\n".join(pieces), add_special_tokens=False)[:tokens]
            return (i - len(pieces), i), tokenizer.decode(ids)
        span[0] = span[1]
    return None


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def fidelity_layout(tokenizer, prompt: FidelityPrompt, setting: str) -> PromptLayout:
    """Token ids of ``prompt`` in ``setting``: ``compressed`` (prefilled and compressed) and
    ``appended`` (fed after compression; empty for question-first)."""
    if setting not in FIDELITY_SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose from {FIDELITY_SETTINGS}")
    head, tail = chat_parts(tokenizer)
    if setting == "question-first":
        pieces = [head + prompt.instruction + "\n\n", prompt.passage, "\n\n" + tail.lstrip("\n")]
        compressed, appended = pieces, []
    else:
        compressed, appended = [head, prompt.passage], ["\n\n" + prompt.instruction + tail]

    def cat(parts: list[str]) -> torch.Tensor:
        return torch.tensor([[t for p in parts for t in _ids(tokenizer, p)]], dtype=torch.long).view(1, -1)

    return PromptLayout(cat(compressed), cat(appended))
