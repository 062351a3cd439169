"""Fidelity to the full cache, with no right answer needed.

For each prompt, the full cache writes its own answer (sampled at temperature 1 with a fixed seed per
prompt and setting); that answer is then teacher-forced under every compressed cache. The figure is
the mean NLL of the answer under a compressed cache over its mean NLL under the full cache: for a
sampled answer, ``E[-log q] / E[-log p] = 1 + KL(p || q) / H(p)`` per token, so 1 is perfect and the
excess is the divergence from the full cache's own distribution, relative to its entropy.

Every method compresses a copy of one shared prefill (:class:`~judgeq_cache.cache.prefill.SharedPrefill`,
the harness's own method options), then one forward over the appended instruction (query-agnostic)
and the answer gives every answer token's NLL. The first answer token of a question-first prompt
comes from the prefill's own logits (eviction happens after them), so it is the same for every method.

Prompts: :mod:`.fidelity_prompts` (dev and test passages and templates, apart from all training data).
"""

from __future__ import annotations

import logging
import statistics
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.nn import functional as F

from ..adapter import JudgeQAdapter
from ..cache.prefill import SharedPrefill
from ..training.instructions import sampled_answer
from .fidelity_prompts import FidelityPrompt, fidelity_layout
from .layouts import PromptLayout
from .records import Record, budget_label
from .runner import METHODS, kept_fraction, scorer_of
from .stats import paired_difference

logger = logging.getLogger(__name__)

__all__ = ["answer_nll", "method_cache", "fidelity_rows", "fidelity_summary", "paired_rows", "prompt_seed"]


def prompt_seed(prompt_id: str, setting: str) -> int:
    """The sampling seed of one prompt in one setting (stable across runs and machines)."""
    return zlib.crc32(f"{prompt_id}:{setting}".encode())


@torch.no_grad()
def answer_nll(
    model, cache, appended: torch.Tensor, answer: torch.Tensor, first_logits: torch.Tensor
) -> torch.Tensor:
    """Per-token NLL ``[T]`` of ``answer`` ``[1, T]`` after ``cache`` (holding the compressed prompt):
    one forward over ``appended`` ``[1, M]`` and ``answer[:, :-1]``. With ``M = 0`` the first token's
    logits are ``first_logits`` ``[1, V]`` (the prefill's last position)."""
    device = model.get_input_embeddings().weight.device
    feed = torch.cat([appended, answer[:, :-1]], dim=1).to(device)
    logits = []
    if appended.shape[1] == 0:
        logits.append(first_logits.reshape(1, -1).float())
    if feed.shape[1]:
        out = model(input_ids=feed, **{cache.cache_kwarg: cache}).logits[0].float()
        start = max(appended.shape[1] - 1, 0)
        logits.append(out[start:])
    return F.cross_entropy(torch.cat(logits)[: answer.shape[1]], answer[0].to(device), reduction="none").cpu()


def method_cache(shared: SharedPrefill, method: str, budget, adapter: JudgeQAdapter | None):
    """A compressed copy of ``shared`` for harness method ``method`` (the harness's own options)."""
    options = {k: v for k, v in METHODS[method].items() if k != "scorer"}
    if scorer_of(method) == "judgeq":
        options["adapter"] = adapter
    return shared.cache(budget, scorer_of(method), **options)


def _record(prompt: FidelityPrompt, index: int, setting: str, label: str, budget: str, **fields) -> Record:
    return Record(
        task="fidelity",
        index=index,
        setting=setting,
        method=label,
        budget=budget,
        source="judgeq_cache",
        answer="",
        references=[],
        score=fields.pop("ratio"),
        kept_fraction=fields.pop("kept_fraction"),
        kv_bytes=fields.pop("kv_bytes"),
        seconds=fields.pop("seconds"),
        prompt_tokens=fields.pop("prompt_tokens"),
        adapter=fields.pop("adapter", ""),
        extra={"prompt_id": prompt.id, "instruction": prompt.instruction, "corpus": prompt.corpus, **fields},
    )


@torch.no_grad()
def fidelity_rows(
    model,
    tokenizer,
    prompt: FidelityPrompt,
    index: int,
    setting: str,
    methods: Sequence[str],
    budgets: Sequence[int | float],
    adapters: Mapping[str, JudgeQAdapter],
    *,
    answer_tokens: int = 64,
    layout: PromptLayout | None = None,
    answer_ids: Sequence[int] | None = None,
) -> list[Record]:
    """One prompt in one setting: the full row and one row per method and budget (``score`` = NLL ratio).

    ``methods`` are harness method names; ``judgeq`` runs once per entry of ``adapters`` (label ->
    adapter: ``{"judgeq": bundled, "judgeq-general": new}``), reported under that label.
    ``answer_ids`` reuses the full cache's answer of an earlier run (its full row stores it).
    """
    layout = layout or fidelity_layout(tokenizer, prompt, setting)
    start = time.perf_counter()
    ids = layout.input_ids[0].tolist()
    if answer_ids is None:
        answer_ids = sampled_answer(model, ids, answer_tokens, prompt_seed(prompt.id, setting))
    answer = torch.tensor([list(answer_ids)])
    shared = SharedPrefill(model, layout.compressed, window_size=32, all_queries=False)
    n = layout.compressed.shape[1]
    first = shared.logits[:, -1]
    full = shared.full_cache()
    full_nll = answer_nll(model, full, layout.appended, answer, first)
    full_mean = full_nll.mean().item()
    base = {"prompt_tokens": n, "answer_tokens": answer.shape[1]}
    rows = [
        _record(
            prompt, index, setting, "full", "full", ratio=1.0, nll=full_mean, kept_fraction=1.0,
            kv_bytes=full.kv_bytes(), seconds=time.perf_counter() - start, answer_ids=answer[0].tolist(), **base,
        )
    ]  # fmt: skip
    jobs = []
    for method in methods:
        if method == "full":
            continue
        labels = adapters.items() if scorer_of(method) == "judgeq" else [(method, None)]
        jobs += [(label, method, adapter, budget) for label, adapter in labels for budget in budgets]
    for label, method, adapter, budget in jobs:
        t0 = time.perf_counter()
        cache = method_cache(shared, method, budget, adapter)
        kept = kept_fraction(cache, n)
        nll = answer_nll(model, cache, layout.appended, answer, first).mean().item()
        rows.append(
            _record(
                prompt, index, setting, label, budget_label(budget), ratio=nll / full_mean, nll=nll,
                kept_fraction=kept, kv_bytes=cache.kv_bytes(), seconds=time.perf_counter() - t0,
                adapter=label if adapter is not None else "", **base,
            )
        )  # fmt: skip
    return rows


def fidelity_summary(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Per setting, budget and method: the mean NLL ratio to full, its median and the prompt count."""
    cells: dict[tuple[str, str, str], list[float]] = {}
    for r in records:
        cells.setdefault((r.setting, r.budget, r.method), []).append(r.score)
    return [
        {
            "setting": s,
            "budget": b,
            "method": m,
            "ratio_mean": statistics.fmean(v),
            "ratio_median": statistics.median(v),
            "n": len(v),
        }
        for (s, b, m), v in sorted(cells.items())
    ]


def paired_rows(
    records: Sequence[Record], ours: Sequence[str], baselines: Sequence[str], *, seed: int = 0
) -> list[dict[str, Any]]:
    """Paired 95 % bootstrap intervals of ``ours`` minus each baseline's NLL ratio, per setting and
    budget (:func:`judgeq_cache.eval.stats.paired_difference`; negative = closer to the full cache)."""
    out = []
    for setting in sorted({r.setting for r in records}):
        for budget in sorted({r.budget for r in records if r.budget != "full"}):
            for a in ours:
                for b in baselines:
                    d = paired_difference(records, a, b, setting, budget, seed=seed)
                    if d is not None:
                        out.append(
                            {"setting": setting, "budget": budget, "a": a, "b": b, "diff": d.diff,
                             "low": d.low, "high": d.high, "a_better": d.b_only, "b_better": d.a_only, "n": d.n}
                        )  # fmt: skip
    return out


def fidelity_markdown(summary: Sequence[Mapping[str, Any]], paired: Sequence[Mapping[str, Any]]) -> str:
    """Markdown tables: mean NLL ratio to full per setting x budget (one column per method; the lowest
    in bold) and the paired intervals."""
    methods = sorted(
        {r["method"] for r in summary if r["method"] != "full"}, key=lambda m: (not m.startswith("judgeq"), m)
    )
    cells = {(r["setting"], r["budget"], r["method"]): r for r in summary}
    keys = sorted(
        {(r["setting"], r["budget"]) for r in summary if r["budget"] != "full"},
        key=lambda k: (k[0], -float(k[1].rstrip("%")) if k[1].endswith("%") else 0),
    )
    lines = [
        "| setting | kept | prompts | " + " | ".join(methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    for setting, budget in keys:
        values = {
            m: cells[(setting, budget, m)]["ratio_mean"] for m in methods if (setting, budget, m) in cells
        }
        best = min(values.values()) if values else None
        n = max((cells[(setting, budget, m)]["n"] for m in values), default=0)
        row = [
            f"**{values[m]:.4f}**" if values.get(m) == best else (f"{values[m]:.4f}" if m in values else "—")
            for m in methods
        ]
        lines.append(f"| {setting} | {budget} | {n} | " + " | ".join(row) + " |")
    lines += [
        "",
        "| setting | kept | A − B | diff | 95 % interval | prompts A / B closer |",
        "|---|---|---|---|---|---|",
    ]
    for p in paired:
        lines.append(
            f"| {p['setting']} | {p['budget']} | {p['a']} − {p['b']} | {p['diff']:+.4f} | "
            f"[{p['low']:+.4f}, {p['high']:+.4f}] | {p['a_better']} / {p['b_better']} |"
        )
    return "\n".join(lines) + "\n"
