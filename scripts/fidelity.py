"""Fidelity to the full cache on generic instructions over book passages (no right answer needed).

    python scripts/fidelity.py --split dev --prompts 8 --output runs/fidelity_dev.jsonl \\
        --json docs/fidelity_dev.json
    # a second adapter later, reusing the full cache's answers of the first run
    python scripts/fidelity.py --split dev --prompts 8 --methods judgeq \\
        --adapter judgeq-general=judgeq_cache/pretrained/smollm2-135m-instruct-general \\
        --output runs/fidelity_dev.jsonl --json docs/fidelity_dev.json

Each prompt: the full cache's own answer (temperature 1, a seed per prompt and setting) teacher-forced
under each compressed cache; the figure is the mean NLL ratio to full (estimates 1 + KL/H), with paired
95 % bootstrap intervals of each Judge Q adapter minus each baseline (judgeq_cache.eval.fidelity).
Rows are appended to ``--output`` as they are made; a rerun skips what is there (and reuses the full
cache's answers), so methods and adapters can be added later. ``--json`` summarises every row in
``--output``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from judgeq_cache import JudgeQAdapter
from judgeq_cache.cli.args import budget_list, positive_int
from judgeq_cache.eval.fidelity import fidelity_markdown, fidelity_rows, fidelity_summary, paired_rows
from judgeq_cache.eval.fidelity_prompts import FIDELITY_SETTINGS, fidelity_prompts
from judgeq_cache.eval.records import append_record, budget_label, read_records
from judgeq_cache.models import load_model

log = logging.getLogger("fidelity")
BASELINES = ("tova", "snapkv", "streamingllm")


def _adapters(specs: list[str]) -> dict[str, JudgeQAdapter]:
    """``label=path`` (or a bare path/name, labelled ``judgeq``) -> loaded, trained adapters."""
    out = {}
    for spec in specs or ["judgeq=smollm2-135m-instruct"]:
        label, _, path = spec.rpartition("=")
        adapter = JudgeQAdapter.from_pretrained(path)
        if hasattr(adapter, "is_trained") and not adapter.is_trained:
            raise SystemExit(f"--adapter {path}: untrained adapter")
        out[label or "judgeq"] = adapter
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=["dev", "test"], required=True)
    p.add_argument("--prompts", type=positive_int, default=8, help="passages (each in every setting)")
    p.add_argument("--passage-tokens", type=positive_int, default=1900)
    p.add_argument("--answer-tokens", type=positive_int, default=64)
    p.add_argument("--budgets", type=budget_list, default="0.25,0.1")
    p.add_argument("--settings", default=",".join(FIDELITY_SETTINGS))
    p.add_argument("--methods", default="full,judgeq," + ",".join(BASELINES))
    p.add_argument("--adapter", action="append", default=[], help="label=path, repeatable (default: bundled)")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--output", required=True, help="JSONL rows (appended; a rerun skips what is there)")
    p.add_argument("--json", default=None, help="summary of every row in --output")
    p.add_argument("--markdown", default=None, help="the same summary as markdown tables")
    p.add_argument("--summary-only", action="store_true", help="only summarise --output (no new rows)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    settings = [s for s in args.settings.split(",") if s]
    unknown = set(settings) - set(FIDELITY_SETTINGS)
    if unknown:
        p.error(f"unknown settings {sorted(unknown)}; choose from {FIDELITY_SETTINGS}")
    methods = [m for m in args.methods.split(",") if m]
    model, tokenizer = load_model("embedded")
    adapters = _adapters(args.adapter) if "judgeq" in methods else {}
    prompts = fidelity_prompts(tokenizer, args.split, args.prompts, passage_tokens=args.passage_tokens)
    if args.summary_only:
        prompts = []
    done = read_records(args.output)
    have = {(r.index, r.setting, r.method, r.budget) for r in done if r.extra.get("split") == args.split}
    answers = {(r.index, r.setting): r.extra["answer_ids"] for r in done if r.method == "full"}
    for (index, prompt), setting in tqdm(
        [(ip, s) for ip in enumerate(prompts) for s in settings], desc="fidelity"
    ):
        wanted = [
            m for m in methods
            if any((index, setting, label, b) not in have for label in (adapters if m == "judgeq" else [m])
                   for b in (["full"] if m == "full" else [budget_label(x) for x in args.budgets]))
        ]  # fmt: skip
        if not wanted:
            continue
        rows = fidelity_rows(
            model, tokenizer, prompt, index, setting, wanted, args.budgets, adapters,
            answer_tokens=args.answer_tokens, answer_ids=answers.get((index, setting)),
        )  # fmt: skip
        old_full = next((r for r in done if (r.index, r.setting, r.method) == (index, setting, "full")), None)
        if old_full and abs(old_full.extra["nll"] - rows[0].extra["nll"]) > 1e-3 * max(
            1.0, old_full.extra["nll"]
        ):
            log.warning(
                "%s %s: full NLL %.5f now, %.5f before",
                prompt.id,
                setting,
                rows[0].extra["nll"],
                old_full.extra["nll"],
            )
        for r in rows:
            r.extra["split"] = args.split
            if (r.index, r.setting, r.method, r.budget) not in have:
                append_record(args.output, r)
                have.add((r.index, r.setting, r.method, r.budget))
    if args.json:
        records = [r for r in read_records(args.output) if r.extra.get("split") == args.split]
        labels = sorted({r.method for r in records if r.method.startswith("judgeq")})
        baselines = [m for m in BASELINES if any(r.method == m for r in records)]
        summary = {
            "split": args.split,
            "command": "python scripts/fidelity.py " + " ".join(sys.argv[1:]),
            "prompts": len({r.index for r in records}),
            "answer_tokens": args.answer_tokens,
            "summary": fidelity_summary(records),
            "paired": paired_rows(records, labels, baselines) + paired_rows(records, labels[1:], labels[:1]),
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
        log.info("wrote %s", args.json)
        if args.markdown:
            Path(args.markdown).write_text(fidelity_markdown(summary["summary"], summary["paired"]))


if __name__ == "__main__":
    main()
