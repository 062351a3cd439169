"""Reproduce a shipped adapter (CPU, offline, resumable): SmolLM2-135M-Instruct or Gemma-3-270M.

    python scripts/train_bundled.py --work runs/bundled --threads 2
    python scripts/train_bundled.py --model gemma3 --work runs/gemma3 --threads 2 \
        --variants topk:32:300,kl-shared:32:300,topk:32:600
    python scripts/train_bundled.py --work runs/bundled --stage prepare  # data only

1. ``--train-prompts`` + ``--heldout-prompts`` retrieval prompts over the bundled books
   (:func:`judgeq_cache.training.facts.fact_prompts`: facts unlike the evaluation needles, asked
   before, after or later), 0.8-2.2k tokens, prefilled once and saved under ``WORK/data/`` (resumable).
   ``--continuation-prompts N`` adds book-continuation prompts
   (:func:`judgeq_cache.training.continuations.continuation_prompts`; tried for decode-time eviction,
   not in the bundled adapter: docs/training.md). ``--instruction-prompts N`` adds generic
   instructions over book text whose futures are the model's own sampled answers
   (:func:`judgeq_cache.training.instructions.instruction_prompts`, the paper's general recipe).
2. Each ``--variants`` entry (``loss:soft_tokens`` or ``loss:soft_tokens:steps``; steps default to
   ``--steps``) trains from the same data; the held-out
   prompts (training distribution, never evaluation prompts) pick the winner by Judge Q's mean needle
   recall at 10 % and 25 % kept, per-head and shared-heads selection averaged.
3. The winner is written next to this file with its loss curve, report and model card.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from judgeq_cache import JudgeQAdapter
from judgeq_cache.adapter import model_card
from judgeq_cache.models import embedded_model, load_model
from judgeq_cache.training import TrainConfig, train
from judgeq_cache.training.continuations import continuation_prompts
from judgeq_cache.training.facts import fact_prompts
from judgeq_cache.training.instructions import instruction_prompts
from judgeq_cache.training.prepared import load_prepared, prepare_to_disk

PRETRAINED = Path(__file__).resolve().parents[1] / "judgeq_cache" / "pretrained"
log = logging.getLogger("train_bundled")
DEFAULT_NAMES = {"smollm2": "smollm2-135m-instruct", "gemma3": "gemma-3-270m"}
FILES = ("adapter_config.json", "adapter_model.safetensors", "loss_curve.png", "history.jsonl", "report.json")


def instruction_examples(model, tokenizer, args, data: Path) -> tuple[list, list]:
    """Held-out and training instruction examples, prepared under ``data`` one prompt at a time
    (answer generated, then prefilled and saved), so an interrupted run keeps what it made and a
    rerun generates only what is missing."""
    n_held, n = args.instruction_heldout, args.instruction_heldout + args.instruction_prompts
    ids = [f"instruct-0-{i}" for i in range(n)]
    out: tuple[list, list] = ([], [])
    for i in range(n):
        directory = data / ("instruction-heldout" if i < n_held else "instruction-train")
        path = directory / f"{ids[i]}.safetensors"
        if not path.is_file():
            kw = {"min_tokens": args.min_tokens, "max_tokens": args.max_tokens, "progress": False}
            (prompt,) = instruction_prompts(
                model, tokenizer, i + 1, new_tokens=args.instruction_tokens, seed=0, skip_ids=ids[:i], **kw
            )
            prepare_to_disk(model, [prompt], directory, progress=False)
            log.info("instruction prompt %d of %d prepared", i + 1, n)
        out[i >= n_held].append(load_prepared(path))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/bundled")
    p.add_argument("--model", default="smollm2", help="embedded model key or alias (smollm2, gemma3)")
    p.add_argument(
        "--name",
        default=None,
        help="shipped adapter folder under judgeq_cache/pretrained/ (default: from --model)",
    )
    p.add_argument("--stage", choices=["prepare", "all"], default="all")
    p.add_argument("--train-prompts", type=int, default=144)
    p.add_argument("--heldout-prompts", type=int, default=16)
    p.add_argument(
        "--continuation-prompts",
        type=int,
        default=0,
        help="book excerpts whose futures are the model's continuation (judgeq_cache.training.continuations)",
    )
    p.add_argument("--continuation-heldout", type=int, default=8)
    p.add_argument(
        "--instruction-prompts",
        type=int,
        default=0,
        help="generic instructions over book text, futures = the model's own sampled answers "
        "(judgeq_cache.training.instructions)",
    )
    p.add_argument("--instruction-heldout", type=int, default=4)
    p.add_argument("--instruction-tokens", type=int, default=64, help="new tokens of each sampled answer")
    p.add_argument(
        "--instruction-repeat",
        type=int,
        default=1,
        help="mixture weight: each instruction prompt is trained on this many times per epoch",
    )
    p.add_argument("--data", default=None, help="prepared-data directory (default: WORK/data)")
    p.add_argument("--min-tokens", type=int, default=800)
    p.add_argument("--max-tokens", type=int, default=2200)
    p.add_argument("--variants", default="mse:32,kl-shared:32,topk:32")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--grad-accum", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--init-from",
        default=None,
        help="start every variant from this adapter's rows (e.g. the bundled one) instead of a fresh init",
    )
    p.add_argument("--no-install", action="store_true", help="do not copy the winner next to this file")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    t_start = time.perf_counter()
    spec = embedded_model(args.model)
    here = PRETRAINED / (args.name or DEFAULT_NAMES.get(spec.key, spec.cache_name))
    model, tokenizer = load_model(spec.key)
    prompts = fact_prompts(
        tokenizer,
        args.train_prompts + args.heldout_prompts,
        min_tokens=args.min_tokens,
        max_tokens=args.max_tokens,
        seed=0,
    )
    held, train_set = prompts[: args.heldout_prompts], prompts[args.heldout_prompts :]
    t0 = time.perf_counter()
    data = Path(args.data) if args.data else work / "data"
    held_ex = prepare_to_disk(model, held, data / "heldout")
    train_ex = prepare_to_disk(model, train_set, data / "train")
    if args.continuation_prompts:
        more = continuation_prompts(
            model,
            tokenizer,
            args.continuation_prompts + args.continuation_heldout,
            min_tokens=args.min_tokens,
            max_tokens=args.max_tokens,
            seed=0,
        )
        held_ex += prepare_to_disk(model, more[: args.continuation_heldout], data / "continuation-heldout")
        train_ex += prepare_to_disk(model, more[args.continuation_heldout :], data / "continuation-train")
    if args.instruction_prompts:
        held, train_part = instruction_examples(model, tokenizer, args, data)
        held_ex += held
        train_ex += train_part * args.instruction_repeat
    prep_seconds = time.perf_counter() - t0
    log.info("prepared %d + %d prompts in %.0f s", len(train_ex), len(held_ex), prep_seconds)
    if args.stage == "prepare":
        return
    results = {}
    for variant in args.variants.split(","):
        loss, tokens, *rest = variant.split(":")
        steps = int(rest[0]) if rest else args.steps
        cfg = TrainConfig(
            loss=loss,
            num_soft_tokens=int(tokens),
            max_steps=steps,
            lr=args.lr,
            batch_size=1,
            grad_accum=args.grad_accum,
            save_every=25,
            eval_budgets=(0.1, 0.25),
        )
        if args.init_from:
            adapter = JudgeQAdapter.from_pretrained(args.init_from)
            if adapter.rows.shape[0] != cfg.num_soft_tokens:
                raise SystemExit(f"--init-from has {adapter.rows.shape[0]} soft tokens, the variant {tokens}")
        else:
            adapter = JudgeQAdapter.init_for(model, cfg.num_soft_tokens, seed=cfg.seed, init=cfg.init)
        out = work / variant.replace(":", "-")
        adapter, report = train(
            model,
            tokenizer,
            None,
            out,
            cfg,
            adapter=adapter,
            train_examples=train_ex,
            heldout_examples=held_ex,
            resume=True,
        )
        final = report["final"]
        cells = [f"needle_recall/judgeq-{sel}@{b}" for sel in ("perhead", "shared") for b in ("10%", "25%")]
        score = sum(final[c] for c in cells) / len(cells)
        results[variant] = (score, report)
        log.info("%s: held-out needle recall %.4f", variant, score)
    best = max(results, key=lambda k: results[k][0])
    log.info("best variant: %s", best)
    summary = {
        "best_variant": best,
        "selection_metric": "held-out Judge Q needle recall, mean of 10%/25% kept x per-head/shared",
        "prepare_seconds": round(prep_seconds, 1),
        "total_wall_seconds": round(time.perf_counter() - t_start, 1),
        "per_variant": {k: {"score": round(v[0], 4), **v[1]} for k, v in results.items()},
        "data": {
            "generator": "judgeq_cache.training.facts.fact_prompts(seed=0)",
            "train_prompts": len(train_ex),
            "heldout_prompts": len(held_ex),
            "prompt_tokens": [args.min_tokens, args.max_tokens],
            "model": spec.model_id,
            "corpora": ["brown", "moby_dick"],
            "futures": "reference answers (teacher-forced); 'later' layout: every fact's question + answer",
            "continuation_prompts": [args.continuation_prompts, args.continuation_heldout],
            "instruction_prompts": [args.instruction_prompts, args.instruction_heldout],
            "instruction_repeat": args.instruction_repeat,
            "init_from": args.init_from,
        },
        "torch_threads": torch.get_num_threads(),
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.no_install:
        return
    src = work / best.replace(":", "-")
    here.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(src / name, here / name)
    (here / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    adapter = JudgeQAdapter.from_pretrained(here)
    adapter.config.training["prepare_seconds"] = round(prep_seconds, 1)
    adapter.config.training["variants_compared"] = {k: round(v[0], 4) for k, v in results.items()}
    adapter.save_pretrained(here)
    (here / "README.md").write_text(model_card(adapter, images=["loss_curve.png"]))
    log.info("done in %.0f s", time.perf_counter() - t_start)


if __name__ == "__main__":
    main()
