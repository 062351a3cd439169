"""Dev sweep for decode-time eviction (issue 14): which recent window Judge Q protects at decode steps.

Dev prompts only: 1,024-token excerpts of the bundled Brown corpus and of Moby-Dick far from its start
(``benchmarks/bounded_memory.py`` uses Moby-Dick's first tokens; that is the test). For each prompt the
full cache generates a greedy and a sampled (seeded, temperature 1) continuation; each variant is
teacher-forced through both with ``decode_every`` and reports its NLL as a ratio to the full cache's.
The excess NLL of a sampled continuation of the full model estimates the KL divergence from it; a greedy
continuation is often a near-deterministic loop whose ratio swings either way.

Example::

    PYTHONPATH=. python scripts/decode_sweep.py --budgets 256,512 --decode-recent 8,64,128,256 \
        --json docs/decode_sweep.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from transformers import DynamicCache

from judgeq_cache import EvictionCache, JudgeQCache
from judgeq_cache.cli.args import choice_list, int_list, non_negative_int, positive_float, positive_int
from judgeq_cache.data import load_corpus
from judgeq_cache.scorers import SCORERS
from judgeq_cache.training.continuations import overlaps_reserved
from judgeq_cache.utils import cache_kwarg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bounded_memory import add_run_arguments, load_embedded, prompt_specs, teacher_forced  # noqa: E402

#: Character offsets of the dev excerpts (the test prompt is Moby-Dick from offset 0).
DEV_PROMPTS = {"brown": ("brown", 300_000), "moby-late": ("moby_dick", 600_000)}


def recent_list(text: str) -> list[int | float]:
    """``--decode-recent``: counts (``128``, via ``non_negative_int``) or fractions of the budget in
    ``(0, 1]`` (``0.5``, any value with a decimal point)."""
    values = []
    for item in text.split(","):
        if "." not in item:
            values.append(non_negative_int(item))
        elif not 0 < positive_float(item) <= 1:
            raise argparse.ArgumentTypeError(f"{item!r}: a fraction of the budget must lie in (0, 1]")
        else:
            values.append(float(item))
    return values


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budgets", type=int_list(1), default="256,512")
    parser.add_argument(
        "--decode-recent",
        type=recent_list,
        default="8,64,128,256",
        help="Judge Q's decode_recent_tokens candidates: counts, or fractions of the budget (0.5)",
    )
    baselines = choice_list(sorted(set(SCORERS) - {"judgeq", "oracle"}), "scorer")
    parser.add_argument(
        "--baselines",
        type=lambda text: [] if text == "none" else baselines(text),
        default="streamingllm,snapkv",
        help="training-free scorers to run too ('none': Judge Q only)",
    )
    parser.add_argument(
        "--prefill-recent",
        type=int_list(0),
        default=None,
        help="Judge Q's recent_tokens candidates (the prefill's protected window; default: the scorer's)",
    )
    parser.add_argument(
        "--prompts",
        type=prompt_specs,
        default=None,
        help="more dev excerpts, CORPUS:OFFSET,... (default: the two in DEV_PROMPTS); never the test ones",
    )
    parser.add_argument("--prompt-tokens", type=positive_int, default=1024)
    parser.add_argument("--decode-tokens", type=positive_int, default=512)
    parser.add_argument("--decode-every", type=positive_int, default=32)
    add_run_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer, adapter = load_embedded(args.adapter)
    kw = cache_kwarg(model)
    rows = []
    for corpus, offset in args.prompts or []:
        if overlaps_reserved(corpus, offset, offset + args.prompt_tokens * 8):
            parser.error(
                f"--prompts {corpus}:{offset} comes near a test or dev excerpt (RESERVED); pick another"
            )
    prompts = DEV_PROMPTS if args.prompts is None else {f"{c}:{o}": (c, o) for c, o in args.prompts}
    for name, (corpus, offset) in prompts.items():
        text = load_corpus(corpus)[offset : offset + args.prompt_tokens * 8]
        prompt = tokenizer(text, return_tensors="pt").input_ids[:, : args.prompt_tokens]
        gen = {"max_new_tokens": args.decode_tokens, "min_new_tokens": args.decode_tokens}
        greedy = model.generate(prompt, do_sample=False, **gen, **{kw: DynamicCache(config=model.config)})
        torch.manual_seed(0)  # this script's own process: the sampled continuation is reproducible
        sampled = model.generate(
            prompt,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            **gen,
            **{kw: DynamicCache(config=model.config)},
        )
        continuations = {"greedy": greedy[:, prompt.shape[1] :], "sampled": sampled[:, prompt.shape[1] :]}
        full = {
            key: teacher_forced(model, prompt, c, DynamicCache(config=model.config))[0]
            for key, c in continuations.items()
        }
        windows = args.prefill_recent or [None]
        variants = [("judgeq", r, w) for r in args.decode_recent for w in windows]
        variants += [(b, None, None) for b in args.baselines]
        for budget in args.budgets:
            for method, recent, window in variants:
                row = {"prompt": name, "budget": budget, "method": method, "decode_recent_tokens": recent}
                if window is not None:
                    row["recent_tokens"] = window
                for key, continuation in continuations.items():
                    if method == "judgeq":
                        options = {} if window is None else {"recent_tokens": window}
                        cache = JudgeQCache(
                            model,
                            adapter,
                            budget,
                            decode_every=args.decode_every,
                            decode_recent_tokens=recent,
                            **options,
                        )
                    else:
                        cache = EvictionCache(model, budget, method, decode_every=args.decode_every)
                    nll, _ = teacher_forced(model, prompt, continuation, cache)
                    row[f"{key}_vs_full"] = round(nll / full[key], 4)
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for method, recent, window in {
        (r["method"], r["decode_recent_tokens"], r.get("recent_tokens")) for r in rows
    }:
        mine = [
            r
            for r in rows
            if (r["method"], r["decode_recent_tokens"], r.get("recent_tokens")) == (method, recent, window)
        ]
        label = method if recent is None else f"{method} decode_recent_tokens={recent}"
        label += "" if window is None else f" recent_tokens={window}"
        summary[label] = {
            "sampled_mean": statistics.mean(r["sampled_vs_full"] for r in mine),
            "greedy_max": max(r["greedy_vs_full"] for r in mine),
        }
    for label, s in sorted(summary.items()):
        print(f"{label}: sampled mean {s['sampled_mean']:.4f}, greedy worst {s['greedy_max']:.3f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "rows": rows, "summary": summary}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
