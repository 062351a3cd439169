"""Synthetic long-context tasks (RULER-style) over the bundled public-domain text.

Every sample is seeded and deterministic: the same ``(task, index, length, seed, corpus)`` gives the
same text on every machine. ``length`` is the target size of the context in *model tokens* (measured
with the tokenizer you pass).

The embedded SmolLM2-135M model retrieves exact strings reliably but cannot tell apart several
needles written in the same sentence pattern, so distractor needles use *other relations* (code
words, room numbers, ...), multiple values share one sentence, and answers get enough new tokens.
``kv_retrieval`` and ``common_words`` keep RULER's literal formats: small models usually fail them
even with the full cache, and the report marks such tasks as measuring nothing.
"""

from __future__ import annotations

import functools
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..data import corpus_paragraphs
from .words import CITIES, CODE_WORDS, distinct, random_key, random_number

__all__ = ["SYNTHETIC_TASKS", "Sample", "make_samples"]


@dataclass
class Sample:
    """One evaluation example.

    Attributes
    ----------
    task : str
    index : int
    context : str
        The long text (compressed in every setting).
    question : str
        The query (after the context, or before it in the question-first setting).
    answers : list[str]
        Reference strings.
    instruction : str
        Text before the context (task description without the query).
    answer_prefix : str
        Start of the assistant turn (never contains the query, so question-first stays honest).
    metric : str
        Name in :data:`judgeq_cache.eval.metrics.METRICS`.
    max_new_tokens : int
    meta : dict
    """

    task: str
    index: int
    context: str
    question: str
    answers: list[str]
    instruction: str = ""
    answer_prefix: str = ""
    metric: str = "string_match_all"
    max_new_tokens: int = 24
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sample_id(self) -> str:
        return f"{self.task}/{self.index}"


class _Builder:
    """Fills a context to ``length`` tokens with corpus paragraphs and inserts needles at depths."""

    def __init__(self, tokenizer, corpus: str, rng: random.Random, depth: float | None = None):
        self.tokenizer = tokenizer
        self.paragraphs = corpus_paragraphs(corpus)
        self.rng = rng
        self.depth = depth

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def haystack(self, budget: int) -> list[str]:
        """Consecutive paragraphs from a seeded start, cut to about ``budget`` tokens."""
        out: list[str] = []
        used = 0
        start = self.rng.randrange(len(self.paragraphs))
        i = start
        while used < budget:
            para = self.paragraphs[i % len(self.paragraphs)]
            n = self.count(para) + 1
            if used + n > budget:
                words = para.split()
                keep = max(1, int(len(words) * (budget - used) / n))
                para = " ".join(words[:keep])
                n = self.count(para) + 1
            out.append(para)
            used += n
            i += 1
            if i - start > len(self.paragraphs):
                break
        return out

    def with_needles(self, length: int, needles: list[str], depths: list[float] | None = None) -> str:
        """Haystack of ``length`` tokens in total with ``needles`` inserted between paragraphs."""
        needle_tokens = sum(self.count(n) + 1 for n in needles)
        paras = self.haystack(max(1, length - needle_tokens))
        if depths is None:
            depths = sorted(self.rng.uniform(0.05, 0.95) for _ in needles)
            if self.depth is not None:  # the first needle at a chosen depth, the others random
                depths = [self.depth, *depths[1:]]
        slots = [min(len(paras), round(d * len(paras))) for d in depths]
        for slot, needle in sorted(zip(slots, needles), key=lambda p: -p[0]):
            paras.insert(slot, needle)
        return "\n".join(paras)


def _task(instruction: str, answer_prefix: str, max_new_tokens: int) -> Callable[[Callable], Callable]:
    """Decorates a task generator that returns a sample's own fields (context, question, answers, meta)
    so that it also returns the task's fixed ones: ``instruction``, ``answer_prefix``, ``max_new_tokens``."""
    fixed = dict(instruction=instruction, answer_prefix=answer_prefix, max_new_tokens=max_new_tokens)

    def decorate(generate: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        @functools.wraps(generate)
        def fields(*args: Any, **kwargs: Any) -> dict[str, Any]:
            return {**generate(*args, **kwargs), **fixed}

        return fields

    return decorate


_NEEDLE_INSTRUCTION = (
    "Some special magic numbers and code words are hidden within the following text. "
    "Make sure to memorize them. I will quiz you about them afterwards."
)


def _magic(key: str, value: str) -> str:
    return f"The special magic number for {key} is: {value}."


def _distractors(rng: random.Random, keys: list[str]) -> list[str]:
    """Needles with other relations than "special magic number" (the model can tell them apart)."""
    forms = [
        lambda k: f"The secret code word of {k} is {rng.choice(CODE_WORDS)}.",
        lambda k: f"The hotel room of {k} is room {random_number(rng, 3)}.",
        lambda k: f"The home town of {k} is {rng.choice(CITIES)}.",
    ]
    return [forms[i % len(forms)](k) for i, k in enumerate(keys)]


@_task(_NEEDLE_INSTRUCTION, "The special magic number is", max_new_tokens=16)
def needle_single(b: _Builder, rng: random.Random, length: int) -> dict[str, Any]:
    key, value = random_key(rng), random_number(rng)
    return dict(
        context=b.with_needles(length, [_magic(key, value)]),
        question=f"What is the special magic number for {key} mentioned in the provided text?",
        answers=[value],
        meta={"key": key},
    )


@_task(_NEEDLE_INSTRUCTION, "The special magic number is", max_new_tokens=16)
def needle_multikey(b: _Builder, rng: random.Random, length: int) -> dict[str, Any]:
    keys = distinct(4, lambda: random_key(rng))
    value = random_number(rng)
    needles = [_magic(keys[0], value), *_distractors(rng, keys[1:])]
    rng.shuffle(needles)
    return dict(
        context=b.with_needles(length, needles),
        question=f"What is the special magic number for {keys[0]} mentioned in the provided text?",
        answers=[value],
        meta={"key": keys[0], "distractor_keys": keys[1:]},
    )


@_task(_NEEDLE_INSTRUCTION, "The special magic numbers are", max_new_tokens=48)
def needle_multivalue(b: _Builder, rng: random.Random, length: int) -> dict[str, Any]:
    key = random_key(rng)
    values = [random_number(rng) for _ in range(4)]
    needle = f"The special magic numbers for {key} are: {', '.join(values[:-1])} and {values[-1]}."
    return dict(
        context=b.with_needles(length, [needle]),
        question=f"What are all the special magic numbers for {key} mentioned in the provided text?",
        answers=values,
        meta={"key": key},
    )


@_task(_NEEDLE_INSTRUCTION, "The special magic number and the secret code word are", max_new_tokens=40)
def needle_multiquery(b: _Builder, rng: random.Random, length: int) -> dict[str, Any]:
    k1, k2 = distinct(2, lambda: random_key(rng))
    number, word = random_number(rng), rng.choice(CODE_WORDS)
    needles = [_magic(k1, number), f"The secret code word of {k2} is {word}."]
    return dict(
        context=b.with_needles(length, needles),
        question=(
            f"What is the special magic number for {k1} and what is the secret code word of {k2} "
            "mentioned in the provided text?"
        ),
        answers=[number, word],
        meta={"keys": [k1, k2]},
    )


def _uuid(rng: random.Random) -> str:
    h = "".join(rng.choice("0123456789abcdef") for _ in range(32))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@_task(
    "Extract the value corresponding to the specified key in the JSON object below.",
    "The value associated with the key is",
    max_new_tokens=40,
)
def kv_retrieval(b: _Builder, rng: random.Random, length: int) -> dict[str, Any]:
    """RULER's key-value retrieval: a JSON object of UUID keys and values; no prose."""
    pairs: list[tuple[str, str]] = []
    text = "{}"
    while True:
        pairs.append((_uuid(rng), _uuid(rng)))
        candidate = "{" + ", ".join(f'"{k}": "{v}"' for k, v in pairs) + "}"
        if b.count(candidate) > length and len(pairs) > 1:
            pairs.pop()
            break
        text = candidate
    key, value = pairs[rng.randrange(len(pairs))]
    return dict(
        context="JSON data:\n" + text,
        question=f'What is the value associated with the key "{key}" in the JSON object above?',
        answers=[value],
        meta={"pairs": len(pairs)},
    )


@_task(
    "Memorize and track the chain(s) of variable assignment hidden in the following text.",
    "The variables assigned that value are:",
    max_new_tokens=40,
)
def variable_tracking(b: _Builder, rng: random.Random, length: int, hops: int = 3) -> dict[str, Any]:
    """RULER's variable tracking: ``VAR X = 12345`` then ``VAR Y = VAR X`` ... spread over the text."""
    names = distinct(hops + 1, lambda: "".join(rng.choice(string.ascii_uppercase) for _ in range(5)))
    value = random_number(rng, 5)
    chain = [f"VAR {names[0]} = {value}."] + [
        f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, hops + 1)
    ]
    depths = sorted(rng.uniform(0.05, 0.95) for _ in chain)
    return dict(
        context=b.with_needles(length, chain, depths),
        question=f"Find all variables that are assigned the value {value} in the text above.",
        answers=names,
        meta={"value": value},
    )


@_task(
    "Below is a numbered list of words. In these words, some appear more often than others.",
    "The most common words are:",
    max_new_tokens=64,
)
def common_words(b: _Builder, rng: random.Random, length: int, num_common: int = 10) -> dict[str, Any]:
    """RULER's common-words extraction: a numbered word list where ``num_common`` words repeat."""
    vocab = sorted(
        {w.strip(string.punctuation).lower() for p in b.paragraphs[:400] for w in p.split()} - {""}
    )
    vocab = [w for w in vocab if w.isalpha() and len(w) > 3]
    chosen = rng.sample(vocab, len(vocab))
    common, rare = chosen[:num_common], chosen[num_common:]
    probe = "\n".join(f"{i + 101}. {w}" for i, w in enumerate(chosen[:50]))
    per_item = (b.count(probe) + 1) / 50
    total = max(4 * num_common, int(length / per_item))
    reps = max(3, total // (3 * num_common))
    words = [w for w in common for _ in range(reps)]
    words += rare[: max(0, total - len(words))]
    rng.shuffle(words)
    return dict(
        context="\n".join(f"{i + 1}. {w}" for i, w in enumerate(words)),
        question=f"What are the {num_common} most common words in the above list?",
        answers=common,
        meta={"repeats": reps},
    )


#: Task name -> generator ``(builder, rng, length) -> Sample fields``.
SYNTHETIC_TASKS: dict[str, Callable[..., dict[str, Any]]] = {
    "needle_single": needle_single,
    "needle_multikey": needle_multikey,
    "needle_multivalue": needle_multivalue,
    "needle_multiquery": needle_multiquery,
    "kv_retrieval": kv_retrieval,
    "variable_tracking": variable_tracking,
    "common_words": common_words,
}


def make_samples(
    task: str,
    num_samples: int,
    length: int,
    tokenizer,
    *,
    seed: int = 0,
    corpus: str = "moby_dick",
    start: int = 0,
    depths: list[float] | None = None,
) -> list[Sample]:
    """``num_samples`` deterministic samples of ``task`` with contexts of about ``length`` tokens.

    Parameters
    ----------
    task : str
        A name in :data:`SYNTHETIC_TASKS`.
    num_samples, length : int
    tokenizer
        The evaluated model's tokenizer (lengths are measured in its tokens).
    seed : int
        Together with the task name and sample index, fixes every random choice.
    corpus : str
        Haystack text: ``"moby_dick"`` or ``"brown"``.
    start : int
        Index of the first sample.
    depths : list of float, optional
        Relative depth (0 = start, 1 = end of the context) of each sample's first needle, cycled
        over the samples (default: random in 5-95 %).
    """
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {sorted(SYNTHETIC_TASKS)}")
    if length < 16:
        raise ValueError(f"length must be at least 16 tokens, got {length}")
    samples = []
    for index in range(start, start + num_samples):
        rng = random.Random(f"{task}:{seed}:{index}:{length}:{corpus}")
        depth = None if not depths else depths[(index - start) % len(depths)]
        fields = SYNTHETIC_TASKS[task](_Builder(tokenizer, corpus, rng, depth), rng, length)
        samples.append(Sample(task=task, index=index, **fields))
    return samples
