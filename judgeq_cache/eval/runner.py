"""Evaluate our scorers side by side: one shared prefill per sample and setting, every method and
budget decoded from a compressed copy of it, one JSONL line per answer."""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..adapter import JudgeQAdapter
from ..cache import EvictionCache
from ..hitrate import hit_rate, needle_recall
from ..prefill import SharedPrefill
from .layouts import PromptLayout as Prompt
from .layouts import build_prompt
from .metrics import score
from .needles import needle_positions
from .records import Record, append_record, budget_label, label_for, read_records, record_key
from .tasks import Sample

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "cache_kwarg", "decode_answer", "eos_ids", "evaluate", "kept_fraction"]

#: Our methods and the scorer options the harness uses for them ("full" = no eviction; ``scorer``
#: names the scorer of a variant, otherwise the method name is the scorer name).
METHODS: dict[str, dict[str, Any]] = {
    "full": {},
    "judgeq": {},
    "snapkv": {"window_size": 32},
    "pyramidkv": {"window_size": 32},
    "h2o": {},
    "streamingllm": {},
    "random": {},
    # The same positions kept in every KV head of a layer (see Scorer.shared_heads).
    # "judgeq" is JudgeQCache's default selection (shared heads + a quarter of the last query's
    # attention, chosen on a dev split); the soft tokens alone, shared and per head (the paper's):
    "judgeq-shared": {"scorer": "judgeq", "shared_heads": True, "window_weight": 0.0},
    "judgeq-perhead": {"scorer": "judgeq", "shared_heads": False, "window_weight": 0.0},
    "snapkv-shared": {"scorer": "snapkv", "window_size": 32, "shared_heads": True},
    # TOVA at prefill (kvpress's TOVAPress): last prompt query, heads averaged.
    "tova": {},
    # The ceiling: what the full cache's own continuation (appended question + its greedy answer)
    # attends to most, i.e. Judge Q's training target. Analysis only (it needs the answer first).
    "oracle": {},
    "oracle-shared": {"scorer": "oracle", "shared_heads": True},
}


#: Compressed copies decoded together in one batch (at most).
DECODE_BATCH = 16


def scorer_of(method: str) -> str:
    """The scorer a harness method runs (``"judgeq-shared"`` runs ``"judgeq"``)."""
    return METHODS.get(method, {}).get("scorer", method)


def size_batches(caches: dict[Any, Any]) -> Iterator[list[Any]]:
    """Keys of ``caches`` grouped by the number of entries each stores per layer (only equal sizes
    can share a batch), in chunks of at most :data:`DECODE_BATCH`."""
    groups: dict[tuple[int, ...], list] = defaultdict(list)
    for key, cache in caches.items():
        groups[tuple(layer.keys.shape[-2] for layer in cache.layers)].append(key)
    for members in groups.values():
        for i in range(0, len(members), DECODE_BATCH):
            yield members[i : i + DECODE_BATCH]


def cache_kwarg(model) -> str:
    """``"cache"`` on transformers >= 5.24, ``"past_key_values"`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def eos_ids(model, tokenizer) -> set[int]:
    """Token ids that end an answer."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def decode_answer(tokenizer, ids: torch.Tensor, stop: set[int]) -> tuple[torch.Tensor, str]:
    """Cut ``ids`` (``[T]``) at the first stop token; return the kept ids and their text."""
    ids = ids.flatten()
    for i, t in enumerate(ids.tolist()):
        if t in stop:
            ids = ids[:i]
            break
    return ids, tokenizer.decode(ids, skip_special_tokens=True).strip()


def kept_fraction(cache: EvictionCache, prompt_length: int) -> float:
    """Mean fraction of the compressed prompt kept over the evictable layers."""
    if not cache.kept_indices:
        return 1.0
    evictable = cache.evictable_layers
    kept = [
        cache.kept_indices[i].shape[-1] / prompt_length if i in cache.kept_indices else 1.0 for i in evictable
    ]
    return sum(kept) / len(kept)


def _answer_ids(model, shared: SharedPrefill, cache, prompt: Prompt, max_new_tokens: int) -> torch.Tensor:
    """Greedy answers ``[R, T]``, one row per batch row of ``cache`` (a single or stacked copy)."""
    if prompt.appended.shape[1] == 0:
        return shared.generate(cache, max_new_tokens)
    rows = cache.prefill_mask.shape[0]
    ids = prompt.input_ids.repeat(rows, 1)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=model.generation_config.pad_token_id or 0,
        **{cache_kwarg(model): cache},
    )
    return out[:, ids.shape[1] :]


def _method_cache(
    shared: SharedPrefill, method: str, budget, adapter: JudgeQAdapter | None, future: torch.Tensor | None
):
    if method == "full":
        return shared.full_cache()
    options = {k: v for k, v in METHODS.get(method, {}).items() if k != "scorer"}
    scorer = scorer_of(method)
    if scorer == "judgeq":
        if adapter is None:
            raise ValueError("the judgeq method needs an adapter")
        options["adapter"] = adapter
    elif scorer == "oracle":
        options["future_ids"] = future
    return shared.cache(budget, scorer, **options)


def evaluate(
    model,
    tokenizer,
    samples: Sequence[Sample],
    *,
    settings: Iterable[str],
    methods: Iterable[str],
    budgets: Iterable[int | float],
    adapter: JudgeQAdapter | None = None,
    adapter_label: str = "",
    output: str | os.PathLike | None = None,
    resume: bool = False,
    with_hit_rate: bool = True,
    progress: bool = True,
) -> Iterator[Record]:
    """Run ``methods`` x ``budgets`` on every sample in every setting; yield (and append) records.

    Parameters
    ----------
    model, tokenizer
        A causal LM and its tokenizer.
    samples
        From :func:`~judgeq_cache.eval.tasks.make_samples` or a benchmark loader.
    settings
        Names from :data:`~judgeq_cache.eval.prompts.SETTINGS`.
    methods
        Names from :data:`METHODS` (``"full"`` is decoded once per sample and setting).
    budgets
        Kept fractions (float) or entries per KV head (int).
    adapter
        The Judge Q adapter (needed for ``"judgeq"``); ``adapter_label`` is stored with each record.
    output
        JSONL file the records are appended to.
    resume
        Skip records whose key is already in ``output``.
    with_hit_rate
        Also compute the critical-KV hit rate against the oracle (the full cache's own answer).
    """
    settings, methods, budgets = list(settings), list(methods), list(budgets)
    check_known(methods, METHODS, "methods")
    stop = eos_ids(model, tokenizer)
    model_name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    jobs = [(m, b) for m in methods for b in ([None] if m == "full" else budgets)]

    def labels(method: str, budget: int | float | None) -> tuple[str, str]:
        return label_for(method, adapter_label), "full" if budget is None else budget_label(budget)

    for sample, setting, wanted in pending_prompts(
        samples, settings, jobs, labels, output=output, resume=resume, desc="eval", progress=progress
    ):
        prompt = build_prompt(tokenizer, sample, setting)
        n = prompt.compressed.shape[1]
        start = time.perf_counter()
        all_queries = any(scorer_of(m) == "h2o" for m, _ in wanted)
        shared = SharedPrefill(model, prompt.compressed, window_size=32, all_queries=all_queries)
        prefill_seconds = time.perf_counter() - start
        full = None  # (ids, kv_bytes, seconds) of the full cache, reused by the oracle
        needs_oracle = with_hit_rate or any(scorer_of(m) == "oracle" for m, _ in wanted)
        if needs_oracle or any(m == "full" for m, _ in wanted):
            full = _decode(model, shared, "full", None, adapter, prompt, sample, None)
        future = _future(prompt, full[0], stop, tokenizer) if needs_oracle else None
        critical = _critical(shared, future, budgets) if with_hit_rate else {}
        needles = needle_positions(tokenizer, sample, setting)
        answers = _decode_together(
            model, shared, [(m, b) for m, b in wanted if m != "full"], adapter, prompt, sample, future
        )
        for method, budget in wanted:
            ids, kv_bytes, cache, seconds = full if method == "full" else answers[(method, budget)]
            seconds += prefill_seconds
            _, text = decode_answer(tokenizer, ids, stop)
            hit = recall = None
            if method != "full" and budget in critical:
                hit = hit_rate(cache.kept_indices, critical[budget])
            if method != "full" and needles:
                recall = needle_recall(cache.kept_indices, needles)
            record = Record(
                task=sample.task,
                index=sample.index,
                setting=setting,
                method=method,
                budget="full" if budget is None else budget_label(budget),
                source="judgeq_cache",
                answer=text,
                references=list(sample.answers),
                score=score(sample.metric, text, sample.answers, **sample.meta.get("metric_kwargs", {})),
                kept_fraction=1.0 if method == "full" else kept_fraction(cache, n),
                kv_bytes=kv_bytes,
                seconds=seconds,
                prompt_tokens=n,
                hit_rate=hit,
                model=model_name,
                adapter=adapter_label if scorer_of(method) == "judgeq" else "",
                extra={"prefill_seconds": prefill_seconds}
                if recall is None
                else {"prefill_seconds": prefill_seconds, "needle_recall": recall},
            )
            if output is not None:
                append_record(output, record)
            yield record


def check_known(names: list[str], known: Iterable[str], what: str) -> None:
    """Raise ``ValueError`` naming the ``names`` that are not in ``known`` (``what``: "methods"...)."""
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; choose from {sorted(known)}")


def pending_prompts(
    samples: Sequence[Sample],
    settings: list[str],
    jobs: list[tuple[str, Any]],
    labels: Callable[[str, Any], tuple[str, str]],
    *,
    output: str | os.PathLike | None,
    resume: bool,
    desc: str,
    progress: bool,
) -> Iterator[tuple[Sample, str, list[tuple[str, Any]]]]:
    """Every ``(sample, setting)`` prompt, with its ``(method, budget)`` ``jobs`` whose records are not
    in ``output`` yet (all of them unless ``resume``), under a progress bar; prompts with none left are
    skipped. ``labels(method, budget)`` gives the method and budget labels of a job's record key."""
    done = {r.key for r in read_records(output)} if resume and output is not None else set()
    prompts = [(s, setting) for s in samples for setting in settings]
    for sample, setting in tqdm(prompts, desc=desc, unit="prompt", disable=not progress):
        wanted = [
            job for job in jobs if record_key(sample.task, sample.index, setting, *labels(*job)) not in done
        ]
        if wanted:
            yield sample, setting, wanted


def _decode(model, shared, method, budget, adapter, prompt, sample, future):
    """``(answer ids, kv bytes after compression, cache, seconds)`` of one method at one budget."""
    start = time.perf_counter()
    with torch.no_grad():
        cache = _method_cache(shared, method, budget, adapter, future)
        kv_bytes = cache.kv_bytes()
        ids = _answer_ids(model, shared, cache, prompt, sample.max_new_tokens)[0]
    return ids, kv_bytes, cache, time.perf_counter() - start


def _decode_together(model, shared, jobs, adapter, prompt, sample, future) -> dict[tuple[str, Any], tuple]:
    """:func:`_decode` for many ``(method, budget)`` jobs: each compresses its own copy, then copies
    that store the same number of entries per layer decode as rows of one batch (exactly as alone;
    see :meth:`SharedPrefill.stack`). A batch's decode time is split evenly over its rows."""
    built = {}
    for method, budget in jobs:
        start = time.perf_counter()
        with torch.no_grad():
            cache = _method_cache(shared, method, budget, adapter, future)
        built[(method, budget)] = (cache, cache.kv_bytes(), time.perf_counter() - start)
    out = {}
    for chunk in size_batches({job: cache for job, (cache, _, _) in built.items()}):
        start = time.perf_counter()
        stacked = shared.stack([built[job][0] for job in chunk])
        rows = _answer_ids(model, shared, stacked, prompt, sample.max_new_tokens)
        share = (time.perf_counter() - start) / len(chunk)
        for job, ids in zip(chunk, rows):
            cache, kv_bytes, seconds = built[job]
            out[job] = (ids, kv_bytes, cache, seconds + share)
    return out


def _future(prompt: Prompt, full_ids: torch.Tensor, stop, tokenizer) -> torch.Tensor | None:
    """What follows the compressed prompt with the full cache: the appended question (if any) and the
    full cache's own greedy answer -- the oracle's queries and Judge Q's training target."""
    ids, _ = decode_answer(tokenizer, full_ids, stop)
    future = torch.cat([prompt.appended[0], ids])
    return future if future.numel() else None


def _critical(shared, future: torch.Tensor | None, budgets) -> dict[Any, dict[int, torch.Tensor]]:
    """Oracle kept indices per budget: the entries ``future`` attends to most."""
    if future is None:
        return {}
    out = {}
    for budget in budgets:
        oracle = shared.cache(budget, "oracle", future_ids=future)
        if oracle.kept_indices:
            out[budget] = oracle.kept_indices
    return out
