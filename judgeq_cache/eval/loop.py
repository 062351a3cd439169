"""The one evaluation loop: prompt → prefill → compress → decode → record, over a backend.

A backend (ours in :mod:`.runner`, kvpress's in :mod:`.kvpress_runner`) knows how to prefill one
prompt once and answer every wanted ``(method, budget)`` job from it; :func:`run_backend` owns
everything around that: which prompts still need answers (``resume``), the prompt layout, scoring,
the record and the JSONL line. :func:`decode_in_batches` is the shared "compressed copies of equal
size decode as rows of one batch" step.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from .layouts import PromptLayout, build_prompt
from .metrics import score
from .records import Record, append_record, read_records, record_key
from .tasks import Sample

__all__ = ["Answer", "Backend", "check_known", "decode_answer", "decode_in_batches", "run_backend"]

#: Compressed copies decoded together in one batch (at most).
DECODE_BATCH = 16

Job = tuple[str, Any]  # (method, budget)


@dataclass
class Answer:
    """One job's answer to one prompt, before scoring."""

    ids: torch.Tensor
    kept_fraction: float
    kv_bytes: int
    seconds: float
    hit_rate: float | None = None
    adapter: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """What :func:`run_backend` needs from a method family."""

    #: ``Record.source`` of its answers, and the progress-bar label.
    source: str
    desc: str
    #: The model and tokenizer it answers with, and the token ids that end an answer.
    model: Any
    tokenizer: Any
    stop: set[int]

    def labels(self, method: str, budget: Any) -> tuple[str, str]:
        """The method and budget labels of a job's record key."""

    def answers(
        self, sample: Sample, setting: str, prompt: PromptLayout, wanted: list[Job]
    ) -> Iterator[tuple[Job, Answer]]:
        """Prefill ``prompt`` (``sample`` laid out for ``setting``) once and answer every ``wanted``
        job from it."""


def check_known(names: list[str], known: Iterable[str], what: str) -> None:
    """Raise ``ValueError`` naming the ``names`` that are not in ``known`` (``what``: "methods"...)."""
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; choose from {sorted(known)}")


def decode_answer(tokenizer, ids: torch.Tensor, stop: set[int]) -> tuple[torch.Tensor, str]:
    """Cut ``ids`` (``[T]``) at the first stop token; return the kept ids and their text."""
    ids = ids.flatten()
    for i, t in enumerate(ids.tolist()):
        if t in stop:
            ids = ids[:i]
            break
    return ids, tokenizer.decode(ids, skip_special_tokens=True).strip()


def run_backend(
    backend: Backend,
    samples: Sequence[Sample],
    settings: list[str],
    jobs: list[Job],
    *,
    output: str | os.PathLike | None,
    resume: bool,
    progress: bool,
) -> Iterator[Record]:
    """Answer every ``(sample, setting)`` prompt with the ``jobs`` whose records are not in ``output``
    yet (all of them unless ``resume``); yield each record and append it to ``output``."""
    tokenizer, stop = backend.tokenizer, backend.stop
    model_name = getattr(backend.model.config, "_name_or_path", "") or type(backend.model).__name__
    done = {r.key for r in read_records(output)} if resume and output is not None else set()
    prompts = [(s, setting) for s in samples for setting in settings]
    for sample, setting in tqdm(prompts, desc=backend.desc, unit="prompt", disable=not progress):
        key = (sample.task, sample.index, setting)
        wanted = [job for job in jobs if record_key(*key, *backend.labels(*job)) not in done]
        if not wanted:
            continue
        prompt = build_prompt(tokenizer, sample, setting)
        for (method, budget), answer in backend.answers(sample, setting, prompt, wanted):
            _, text = decode_answer(tokenizer, answer.ids, stop)
            record = Record(
                task=sample.task,
                index=sample.index,
                setting=setting,
                method=method,
                budget=backend.labels(method, budget)[1],
                source=backend.source,
                answer=text,
                references=list(sample.answers),
                score=score(sample.metric, text, sample.answers, **sample.meta.get("metric_kwargs", {})),
                kept_fraction=answer.kept_fraction,
                kv_bytes=answer.kv_bytes,
                seconds=answer.seconds,
                prompt_tokens=prompt.compressed.shape[1],
                hit_rate=answer.hit_rate,
                model=model_name,
                adapter=answer.adapter,
                extra=answer.extra,
            )
            if output is not None:
                append_record(output, record)
            yield record


def size_batches(caches: dict[Any, Any]) -> Iterator[list[Any]]:
    """Keys of ``caches`` grouped by the number of entries each stores per layer (only equal sizes
    can share a batch), in chunks of at most :data:`DECODE_BATCH`."""
    groups: dict[tuple[int, ...], list] = defaultdict(list)
    for key, cache in caches.items():
        groups[tuple(layer.keys.shape[-2] for layer in cache.layers)].append(key)
    for members in groups.values():
        for i in range(0, len(members), DECODE_BATCH):
            yield members[i : i + DECODE_BATCH]


def decode_in_batches(
    caches: dict[Job, Any], stack: Callable[[list[Any]], Any], decode: Callable[[Any], list[torch.Tensor]]
) -> Iterator[tuple[Job, torch.Tensor, float]]:
    """Decode compressed ``caches`` as rows of batches of equal size (rows never interact, so each
    row decodes exactly as alone); yields ``(job, answer ids, seconds)``, a batch's decode time split
    evenly over its rows. ``stack`` makes one cache of several, ``decode`` answers every row."""
    for chunk in size_batches(caches):
        start = time.perf_counter()
        rows = decode(stack([caches[job] for job in chunk]))
        share = (time.perf_counter() - start) / len(chunk)
        for job, ids in zip(chunk, rows):
            yield job, ids, share
