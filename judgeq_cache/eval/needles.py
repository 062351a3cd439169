"""Where a sample's answer values sit in its compressed prompt (for the needle-recall metric)."""

from __future__ import annotations

from ..hitrate import token_positions
from .layouts import build_prompt, chat_parts
from .tasks import Sample

__all__ = ["needle_positions"]


def needle_positions(tokenizer, sample: Sample, setting: str) -> list[int]:
    """Positions in ``build_prompt(tokenizer, sample, setting).compressed`` of the tokens of the
    sample's answer strings inside its context (empty when an answer does not occur in the context,
    e.g. aggregation tasks)."""
    head, _ = chat_parts(tokenizer)
    instruction = sample.instruction + "\n\n" if sample.instruction else ""
    first = head + instruction + (sample.question + "\n\n" if setting == "question-first" else "")
    offset = len(tokenizer.encode(first, add_special_tokens=False)) if first else 0
    positions = [offset + t for t in token_positions(tokenizer, sample.context, list(sample.answers))]
    n = build_prompt(tokenizer, sample, setting).compressed.shape[1]
    return [p for p in positions if p < n]
