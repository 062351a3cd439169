"""Token layouts of a sample in the three evaluation settings (:class:`PromptLayout`).

* ``query-aware``: instruction, context, question — all compressed together.
* ``query-agnostic``: instruction and context are prefilled and compressed alone; the question is
  appended afterwards (kvpress's setting: the compressor does not know the question).
* ``question-first``: the question comes before the context; everything is compressed. Last-window
  scorers then see no query at the end of the prompt.

The token ids of the same text piece are identical across settings (each piece is tokenised
separately), so query-aware and query-agnostic differ only in where compression happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .tasks import Sample

if TYPE_CHECKING:
    import torch

__all__ = ["SETTINGS", "PromptLayout", "build_prompt", "chat_parts"]

SETTINGS = ("query-aware", "query-agnostic", "question-first")
_PLACEHOLDER = "\x00JUDGEQ_CONTENT\x00"


@dataclass
class PromptLayout:
    """``compressed``: ids prefilled and compressed ``[1, N]``; ``appended``: ids fed after
    compression ``[1, M]`` (empty unless query-agnostic)."""

    compressed: torch.Tensor
    appended: torch.Tensor

    @property
    def input_ids(self) -> torch.Tensor:
        import torch

        return torch.cat([self.compressed, self.appended], dim=1)


def chat_parts(tokenizer) -> tuple[str, str]:
    """Text before and after a single user message in the tokenizer's chat template (with the
    generation prompt); plain ``("", "\\n")`` for tokenizers without one."""
    if not getattr(tokenizer, "chat_template", None):
        return "", "\n"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": _PLACEHOLDER}], tokenize=False, add_generation_prompt=True
    )
    head, tail = text.split(_PLACEHOLDER)
    return head, tail


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) if text else []


def build_prompt(tokenizer, sample: Sample, setting: str) -> PromptLayout:
    """The token ids of ``sample`` laid out for ``setting`` (one of :data:`SETTINGS`)."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose from {SETTINGS}")
    import torch

    head, tail = chat_parts(tokenizer)
    instruction = sample.instruction + "\n\n" if sample.instruction else ""
    answer = tail + sample.answer_prefix
    if setting == "question-first":
        pieces = [head + instruction + sample.question + "\n\n", sample.context, "\n\n" + answer.lstrip("\n")]
        cut = 3
    else:
        pieces = [head + instruction, sample.context, "\n\n" + sample.question + answer]
        cut = 3 if setting == "query-aware" else 2
    ids = [_ids(tokenizer, p) for p in pieces]
    compressed = [t for piece in ids[:cut] for t in piece]
    appended = [t for piece in ids[cut:] for t in piece]
    return PromptLayout(
        torch.tensor([compressed], dtype=torch.long), torch.tensor([appended], dtype=torch.long).view(1, -1)
    )
