"""Replay kept-index sets of the real model into fixed-size KV pages (issue 25, docs/serving.md).

A paged KV cache (vLLM, SGLang) stores each layer's KV in pages of ``--page`` token slots that hold
every KV head. For each prompt, method and kept fraction this script takes the kept positions of a
token-granular eviction (``EvictionCache.kept_indices``, per layer) and reports

* (a) what they cost in pages: the tokens kept, the pages they fill once compacted
  (``ceil(kept / page)``), and the pages they touch if evicted in place (no copy, the union over
  KV heads, since a page holds every head);
* (b) the answer accuracy of token-granular eviction and of *page-granular* eviction at the same page
  budget (``ceil(kept / page)`` whole pages per layer, each page ranked by its best token's
  head-averaged score; pages with a protected sink or recent token first).

Example (one torch thread, about 10-15 minutes of CPU)::

    PYTHONPATH=. nice -n 10 python scripts/paged_simulation.py --json docs/serving_simulation.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from judgeq_cache import JudgeQAdapter
from judgeq_cache.cache.prefill import SharedPrefill
from judgeq_cache.cli.args import choice_list, positive_int
from judgeq_cache.eval.layouts import build_prompt
from judgeq_cache.eval.loop import decode_answer
from judgeq_cache.eval.metrics import score
from judgeq_cache.eval.runner import METHODS, scorer_of
from judgeq_cache.eval.tasks import make_samples
from judgeq_cache.models import load_model
from judgeq_cache.scorers import LayerInputs, Scorer, make_scorer
from judgeq_cache.scorers.base import protected_mask
from judgeq_cache.utils import eos_token_ids

logger = logging.getLogger("paged_simulation")

TASKS = ("needle_single", "needle_multikey", "needle_multivalue")
SIMULATED = ("judgeq", "tova", "snapkv")


class PageSelection:
    """Mixin over a scorer: keep ``ceil(budget / page)`` whole pages instead of ``budget`` tokens."""

    page: int

    def select(self, inputs: LayerInputs) -> torch.Tensor:
        if inputs.keys.shape[0] != 1:
            raise ValueError("page-granular selection is simulated one prompt at a time (batch 1)")
        scores = self.score(inputs).float().mean(dim=1)[0]  # a page holds every KV head: average them
        n = scores.shape[-1]
        num_pages = math.ceil(n / self.page)
        padded = scores.new_full((num_pages * self.page,), -math.inf)
        padded[:n] = scores.masked_fill(~inputs.key_mask[0], -math.inf)
        page_score = padded.view(num_pages, self.page).amax(-1)
        sinks, recent = self.protected_counts(inputs.budget)
        protected = protected_mask(inputs.key_mask, sinks, min(recent, max(0, inputs.budget - sinks)))
        if protected is not None:
            forced = torch.zeros(num_pages * self.page, dtype=torch.bool, device=scores.device)
            forced[:n] = protected[0]
            page_score[forced.view(num_pages, self.page).any(-1)] = math.inf
        keep = min(num_pages, math.ceil(inputs.budget / self.page))
        pages = page_score.topk(keep).indices.sort().values
        tokens = (pages[:, None] * self.page + torch.arange(self.page, device=pages.device)).flatten()
        tokens = tokens[tokens < n]
        return tokens.view(1, 1, -1).expand(1, inputs.keys.shape[1], -1)


def paged(scorer: Scorer, page: int) -> Scorer:
    """``scorer`` with :class:`PageSelection` (same options, same scores)."""
    cls = type(f"Paged{type(scorer).__name__}", (PageSelection, type(scorer)), {})
    fields = {f.name: getattr(scorer, f.name) for f in dataclasses.fields(scorer) if f.init}
    out = cls(**fields)
    out.page = page
    return out


def page_cost(kept: dict[int, torch.Tensor], page: int, prompt_length: int) -> dict[str, float]:
    """Mean per layer: tokens kept per head, pages once compacted, pages touched in place."""
    tokens, compact, touched = [], [], []
    for indices in kept.values():
        k = indices.shape[-1]
        tokens.append(k)
        compact.append(math.ceil(k / page))
        touched.append(int(torch.unique(indices.flatten() // page).numel()))
    return {
        "tokens": statistics.fmean(tokens),
        "pages_compacted": statistics.fmean(compact),
        "pages_in_place": statistics.fmean(touched),
        "prompt_pages": math.ceil(prompt_length / page),
    }


def method_scorer(method: str, adapter: JudgeQAdapter) -> Scorer:
    options = {k: v for k, v in METHODS[method].items() if k != "scorer"}
    if scorer_of(method) == "judgeq":
        options["adapter"] = adapter
    return make_scorer(scorer_of(method), **options)


def run_prompt(model, tokenizer, sample, args, adapter, stop) -> list[dict[str, Any]]:
    prompt = build_prompt(tokenizer, sample, "query-aware")
    n = prompt.compressed.shape[1]
    shared = SharedPrefill(model, prompt.compressed, window_size=32, all_queries=False)

    def answer(cache) -> tuple[str, float]:
        _, text = decode_answer(tokenizer, shared.generate(cache, sample.max_new_tokens)[0], stop)
        return text, score(sample.metric, text, sample.answers)

    full_text, full_score = answer(shared.full_cache())
    rows = [{"sample": sample.sample_id, "method": "full", "prompt_length": n, "score": full_score}]
    for method in args.methods:
        base = method_scorer(method, adapter)
        for budget in args.budgets:
            tokens = shared.cache(budget, base)
            cost = page_cost(tokens.kept_indices, args.page, n)
            text, token_score = answer(tokens)
            pages = shared.cache(budget, paged(base, args.page))
            page_text, page_score = answer(pages)
            page_tokens = statistics.fmean(k.shape[-1] for k in pages.kept_indices.values())
            rows.append(
                {
                    "sample": sample.sample_id,
                    "method": method,
                    "budget": budget,
                    "prompt_length": n,
                    **cost,
                    "page_granular_tokens": page_tokens,
                    "score": token_score,
                    "page_granular_score": page_score,
                    "answer": text,
                    "page_granular_answer": page_text,
                }
            )
            logger.info(
                "%s %s@%s: %.0f tokens, %.1f pages compacted, %.1f in place; score %.0f, paged %.0f",
                sample.sample_id, method, budget, cost["tokens"], cost["pages_compacted"],
                cost["pages_in_place"], token_score, page_score,
            )  # fmt: skip
    logger.info("%s full: %r (%.0f)", sample.sample_id, full_text, full_score)
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per method and budget: means over the prompts."""
    out = []
    full = [r["score"] for r in rows if r["method"] == "full"]
    out.append({"method": "full", "budget": 1.0, "accuracy": statistics.fmean(full), "prompts": len(full)})
    order = {m: i for i, m in enumerate(SIMULATED)}
    keys = sorted(
        {(r["method"], r["budget"]) for r in rows if r["method"] != "full"},
        key=lambda k: (-k[1], order[k[0]]),
    )
    for method, budget in keys:
        group = [r for r in rows if r["method"] == method and r.get("budget") == budget]
        mean = {k: statistics.fmean(r[k] for r in group) for k in group[0] if isinstance(group[0][k], float)}
        out.append(
            {
                "method": method,
                "budget": budget,
                "prompts": len(group),
                **{
                    k: mean[k]
                    for k in ("tokens", "pages_compacted", "pages_in_place", "page_granular_tokens")
                },
                "prompt_pages": statistics.fmean(r["prompt_pages"] for r in group),
                "in_place_fill": mean["tokens"] / (mean["pages_in_place"] * group[0]["page_size"]),
                "accuracy": mean["score"],
                "page_granular_accuracy": mean["page_granular_score"],
            }
        )
    return out


def markdown(summary: list[dict[str, Any]], page: int) -> str:
    head = (
        f"| method | kept | tokens kept / layer | pages compacted ({page} slots) | pages touched in place "
        "| fill in place | accuracy, token-granular | accuracy, whole pages |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for s in summary:
        if s["method"] == "full":
            lines.append(f"| full | 100 % | | | | | {100 * s['accuracy']:.0f} % | |")
            continue
        lines.append(
            f"| {s['method']} | {100 * s['budget']:.0f} % | {s['tokens']:.0f} | {s['pages_compacted']:.1f} "
            f"| {s['pages_in_place']:.1f} of {s['prompt_pages']:.0f} | {100 * s['in_place_fill']:.0f} % "
            f"| {100 * s['accuracy']:.0f} % | {100 * s['page_granular_accuracy']:.0f} % |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=choice_list(TASKS), default=",".join(TASKS))
    parser.add_argument("--samples", type=positive_int, default=4, help="prompts per task")
    parser.add_argument("--length", type=positive_int, default=2048)
    parser.add_argument("--budgets", default="0.25,0.1", help="kept fractions, comma-separated")
    parser.add_argument("--methods", type=choice_list(SIMULATED), default=",".join(SIMULATED))
    parser.add_argument("--page", type=positive_int, default=16, help="token slots per KV page")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--json", type=Path, help="write the records and the summary here")
    args = parser.parse_args()
    args.budgets = [float(b) for b in args.budgets.split(",")]
    if not all(0 < b < 1 for b in args.budgets):
        parser.error("--budgets are kept fractions in (0, 1)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer = load_model("embedded")
    adapter = JudgeQAdapter.from_pretrained("smollm2-135m-instruct")
    stop = eos_token_ids(model, tokenizer)
    rows = []
    for task in args.tasks:
        for sample in make_samples(task, args.samples, args.length, tokenizer):
            rows += [
                {**r, "page_size": args.page}
                for r in run_prompt(model, tokenizer, sample, args, adapter, stop)
            ]
    summary = summarise(rows)
    table = markdown(summary, args.page)
    logger.info("\n%s\n(%.0f s)", table, time.perf_counter() - start)
    if args.json:
        config = {k: v for k, v in vars(args).items() if k != "json"}
        config.update(
            setting="query-aware", model="embedded SmolLM2-135M-Instruct", adapter="smollm2-135m-instruct"
        )
        payload = {"config": config, "summary": summary, "table": table, "records": rows}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
