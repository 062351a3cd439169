"""Evaluate our scorers side by side: one shared prefill per sample and setting, every method and
budget decoded from a compressed copy of it, one JSONL line per answer."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from ..adapter import JudgeQAdapter
from ..cache import EvictionCache
from ..cache.prefill import SharedPrefill
from ..hitrate import hit_rate, needle_recall
from ..utils import cache_kwarg, eos_token_ids
from .layouts import PromptLayout as Prompt
from .loop import Answer, check_known, decode_answer, decode_in_batches, run_backend
from .methods import METHODS, scorer_of
from .needles import needle_positions
from .records import Record, budget_label, label_for
from .tasks import Sample

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "OurMethods", "evaluate", "kept_fraction", "scorer_of"]


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
    backend = OurMethods(model, tokenizer, budgets, adapter, adapter_label, with_hit_rate)
    jobs = [(m, b) for m in methods for b in ([None] if m == "full" else budgets)]
    yield from run_backend(
        backend,
        samples,
        settings,
        jobs,
        output=output,
        resume=resume,
        progress=progress,
    )


class OurMethods:
    """The :class:`~judgeq_cache.eval.loop.Backend` of this package's methods: one
    :class:`SharedPrefill` per prompt; ``"full"`` decodes it whole (and its answer is the oracle's
    future); every other job compresses its own copy, and copies of equal size decode as one batch."""

    source = "judgeq_cache"
    desc = "eval"

    def __init__(
        self,
        model,
        tokenizer,
        budgets: list[int | float],
        adapter: JudgeQAdapter | None,
        adapter_label: str,
        with_hit_rate: bool,
    ) -> None:
        self.model, self.tokenizer, self.budgets = model, tokenizer, budgets
        self.adapter, self.adapter_label, self.with_hit_rate = adapter, adapter_label, with_hit_rate
        self.stop = eos_token_ids(model, tokenizer)

    def labels(self, method: str, budget: int | float | None) -> tuple[str, str]:
        return label_for(method, self.adapter_label), "full" if budget is None else budget_label(budget)

    @torch.no_grad()
    def answers(self, sample, setting: str, prompt: Prompt, wanted: list) -> Iterator[tuple[Any, Answer]]:
        model, n = self.model, prompt.compressed.shape[1]
        start = time.perf_counter()
        all_queries = any(scorer_of(m) == "h2o" for m, _ in wanted)
        shared = SharedPrefill(model, prompt.compressed, window_size=32, all_queries=all_queries)
        prefill_seconds = time.perf_counter() - start
        extra = {"prefill_seconds": prefill_seconds}
        answers: dict[Any, Answer] = {}
        needs_oracle = self.with_hit_rate or any(scorer_of(m) == "oracle" for m, _ in wanted)
        future = None
        if needs_oracle or any(m == "full" for m, _ in wanted):
            start = time.perf_counter()
            cache = shared.full_cache()
            kv_bytes = cache.kv_bytes()
            ids = _answer_ids(model, shared, cache, prompt, sample.max_new_tokens)[0]
            seconds = time.perf_counter() - start + prefill_seconds
            answers[("full", None)] = Answer(ids, 1.0, kv_bytes, seconds, extra=extra)
            future = _future(prompt, ids, self.stop, self.tokenizer) if needs_oracle else None
        critical = _critical(shared, future, self.budgets) if self.with_hit_rate else {}
        needles = needle_positions(self.tokenizer, sample, setting)
        built, sizes = {}, {}  # job -> compressed copy; job -> (seconds to build it, its KV bytes)
        for method, budget in wanted:
            if method != "full":
                start = time.perf_counter()
                cache = built[(method, budget)] = _method_cache(shared, method, budget, self.adapter, future)
                sizes[(method, budget)] = (time.perf_counter() - start, cache.kv_bytes())
        decoded = decode_in_batches(
            built, shared.stack, lambda c: _answer_ids(model, shared, c, prompt, sample.max_new_tokens)
        )
        for (method, budget), ids, decode_seconds in decoded:
            cache, (build_seconds, kv_bytes) = built[(method, budget)], sizes[(method, budget)]
            answers[(method, budget)] = Answer(
                ids,
                kept_fraction(cache, n),
                kv_bytes,
                prefill_seconds + build_seconds + decode_seconds,
                hit_rate=hit_rate(cache.kept_indices, critical[budget]) if budget in critical else None,
                adapter=self.adapter_label if scorer_of(method) == "judgeq" else "",
                extra={**extra, "needle_recall": needle_recall(cache.kept_indices, needles)}
                if needles
                else extra,
            )
        for job in wanted:
            yield job, answers[job]


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
