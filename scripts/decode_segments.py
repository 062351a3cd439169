"""Where in a greedy continuation eviction costs NLL: per-segment NLL, one-shot vs decode-time eviction.

For each bundled-book prompt (``CORPUS:OFFSET``, as in ``benchmarks/bounded_memory.py``) the full cache
generates a greedy continuation; each method then teacher-forces it with one-shot eviction at the
prefill only (the cache grows while decoding) and with ``decode_every``. It prints the mean NLL of
every ``--segment`` tokens and the whole continuation's NLL as a ratio to the full cache's. If one-shot
eviction alone already costs what ``decode_every`` costs, the loss comes from what the prefill evicted,
not from the decode-time evictions.

Example::

    PYTHONPATH=. python scripts/decode_segments.py --prompts moby_dick:0,brown:0 --budget 512 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from transformers import DynamicCache

from judgeq_cache.cli.args import choice_list, non_negative_int, positive_int
from judgeq_cache.eval.speed import corpus_prompt
from judgeq_cache.scorers import SCORERS
from judgeq_cache.utils import cache_kwarg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bounded_memory import add_run_arguments, load_embedded, make_cache, prompt_specs, token_nll  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=prompt_specs, default="moby_dick:0", help="CORPUS:OFFSET,...")
    parser.add_argument("--prompt-tokens", type=positive_int, default=1024)
    parser.add_argument("--decode-tokens", type=positive_int, default=512)
    parser.add_argument("--segment", type=positive_int, default=64)
    parser.add_argument("--budget", type=positive_int, default=512)
    parser.add_argument("--decode-every", type=non_negative_int, default=32, help="0: one-shot eviction only")
    parser.add_argument(
        "--methods",
        type=choice_list(sorted(set(SCORERS) - {"oracle"}), "scorer"),
        default="judgeq,streamingllm,snapkv",
    )
    add_run_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer, adapter = load_embedded(args.adapter)
    gen = {"max_new_tokens": args.decode_tokens, "min_new_tokens": args.decode_tokens, "do_sample": False}

    modes = (None, args.decode_every) if args.decode_every else (None,)
    runs = [("full", None)] + [(m, e) for m in args.methods for e in modes]
    out = {"args": {k: v for k, v in vars(args).items() if k != "prompts"}, "prompts": []}
    for corpus, offset in args.prompts:
        prompt = corpus_prompt(tokenizer, args.prompt_tokens, corpus, offset)
        full_cache = {cache_kwarg(model): DynamicCache(config=model.config)}
        greedy = model.generate(prompt, **gen, **full_cache)[:, prompt.shape[1] :]
        rows, full = [], None
        print(f"{corpus}:{offset}")
        for method, every in runs:
            nll, _ = token_nll(model, prompt, greedy, make_cache(model, method, args.budget, adapter, every))
            mean = statistics.fmean(nll)
            full = mean if method == "full" else full
            segments = [statistics.fmean(nll[i : i + args.segment]) for i in range(0, len(nll), args.segment)]
            row = {"method": method, "decode_every": every, "nll": mean, "nll_vs_full": mean / full}
            rows.append(row | {"segments": segments})
            label = method if every is None else f"{method} (every {every})"
            label += " (one-shot)" if every is None and method != "full" else ""
            print(
                f"  {label:30s} x full {mean / full:6.3f}  segments " + " ".join(f"{x:.3f}" for x in segments)
            )
        out["prompts"].append(
            {"prompt": f"{corpus}:{offset}", "continuation": tokenizer.decode(greedy[0]), "rows": rows}
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
