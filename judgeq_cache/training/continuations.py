"""Continuation training prompts: book excerpts whose futures are how the text goes on.

The fact prompts (:mod:`.facts`) teach the soft tokens to keep what a later *question* needs. Under
decode-time eviction (``decode_every``) the cache is re-scored while the model writes, and what matters
then is what the *continuation* attends to: the text being continued, and earlier passages the model
copies or refers back to. These prompts teach that:

* **prompt**: plain bundled book text (no chat template), from a paragraph start at a random character
  offset, ``min_tokens``..``max_tokens`` tokens;
* **futures** (the target is their mean attention over the prompt):
  the model's own greedy continuation (``new_tokens`` tokens, generated here with a full cache) and the
  book's real next ``new_tokens`` tokens.

Excerpts never overlap :data:`RESERVED`: the decode benchmark's test prompts
(``benchmarks/bounded_memory.py``, README) and its dev prompts (``scripts/decode_sweep.py``).

What is task-matched, said plainly: the *shape* of the decode benchmark (continue an excerpt of the same
two books); not its excerpts.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import torch
from torch import nn
from transformers import DynamicCache

from ..data import load_corpus
from ..utils import cache_kwarg
from .facts import TokenPrompt

__all__ = ["RESERVED", "RESERVED_CHARS", "continuation_prompts", "overlaps_reserved"]

#: Character offsets of excerpts that evaluation uses: the decode benchmark's six test prompts and the
#: two dev prompts of the decode sweep. Training excerpts keep :data:`RESERVED_CHARS` away from each.
RESERVED: Mapping[str, tuple[int, ...]] = {
    "moby_dick": (0, 300_000, 600_000, 900_000),
    "brown": (0, 300_000, 1_500_000, 2_500_000),
}
#: Characters reserved after each offset (a 1,536-token test excerpt spans about 8,000).
RESERVED_CHARS = 20_000

#: Characters read per wanted token (generous: the excerpt is cut to the token count afterwards).
_CHARS_PER_TOKEN = 6


def overlaps_reserved(corpus: str, start: int, end: int) -> bool:
    """Whether characters ``[start, end)`` of ``corpus`` come near an evaluation excerpt."""
    return any(start < r + RESERVED_CHARS and r < end for r in RESERVED.get(corpus, ()))


@torch.no_grad()
def continuation_prompts(
    model: nn.Module,
    tokenizer,
    num_prompts: int,
    *,
    min_tokens: int = 800,
    max_tokens: int = 2200,
    new_tokens: int = 64,
    corpora: tuple[str, ...] = ("brown", "moby_dick"),
    seed: int = 0,
    id_prefix: str = "continue",
    progress: bool = True,
) -> list[TokenPrompt]:
    """``num_prompts`` book excerpts whose futures are the model's greedy continuation and the real text.

    Deterministic for a given ``seed`` and model (greedy decoding). Generation runs on the model's
    device with a plain ``DynamicCache``.
    """
    if min_tokens < 64 or max_tokens < min_tokens:
        raise ValueError(f"need 64 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be at least 1, got {new_tokens}")
    from tqdm.auto import tqdm

    device = model.get_input_embeddings().weight.device
    out = []
    for i in tqdm(range(num_prompts), desc="continuations", disable=not progress):
        rng = random.Random(f"{id_prefix}:{seed}:{i}")
        corpus = corpora[i % len(corpora)]
        text = load_corpus(corpus)
        length = rng.randint(min_tokens, max_tokens)
        span = (length + new_tokens) * _CHARS_PER_TOKEN
        for _ in range(1000):
            start = text.find("\n\n", rng.randrange(max(1, len(text) - span))) + 2
            if start >= 2 and not overlaps_reserved(corpus, start, start + span):
                break
        else:
            raise ValueError(f"no excerpt of {corpus} avoids the reserved evaluation spans")
        ids = tokenizer.encode(text[start : start + span], add_special_tokens=False)
        prompt, real = ids[:length], ids[length : length + new_tokens]
        if len(real) < new_tokens:
            raise ValueError(f"{corpus} has fewer than {length + new_tokens} tokens after character {start}")
        generated = model.generate(
            torch.tensor([prompt], device=device),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            **{cache_kwarg(model): DynamicCache(config=model.config)},
        )[0, length:].tolist()
        out.append(
            TokenPrompt(
                f"{id_prefix}-{seed}-{i}",
                prompt,
                [generated, real],
                meta={"layout": "continue", "corpus": corpus, "offset": start},
            )
        )
    return out
