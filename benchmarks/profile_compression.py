"""Where Judge Q's compression time goes at one prompt length (issue 11's overhead bar).

Prefills ``--length`` tokens of bundled text into ``JudgeQCache(auto_compress=False)`` a few times,
times ``compress()`` (the soft-token pass, scoring, selection and compaction) and prints a cProfile
of the last one, sorted by own time::

    PYTHONPATH=. .venv/bin/python benchmarks/profile_compression.py --length 4096 --threads 2
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import torch

from judgeq_cache import JudgeQAdapter, JudgeQCache
from judgeq_cache.cli.args import positive_int
from judgeq_cache.eval.speed import corpus_prompt
from judgeq_cache.models import load_model
from judgeq_cache.utils import cache_kwarg


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--length", type=positive_int, default=4096)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--adapter", default="smollm2-135m-instruct")
    parser.add_argument("--rows", type=positive_int, default=25, help="profile rows printed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model("embedded")
    adapter = JudgeQAdapter.from_pretrained(args.adapter)
    ids = corpus_prompt(tokenizer, args.length)
    profile = cProfile.Profile()
    with torch.no_grad():
        for repeat in range(args.repeats):
            cache = JudgeQCache(model, adapter, 0.1, auto_compress=False)
            start = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1, **{cache_kwarg(model): cache})
            prefill = time.perf_counter() - start
            last = repeat == args.repeats - 1
            if last:
                profile.enable()
            start = time.perf_counter()
            cache.compress()
            seconds = time.perf_counter() - start
            if last:
                profile.disable()
            print(
                f"prefill {prefill:.2f} s, compress {seconds:.3f} s ({seconds / prefill:.1%} of the prefill)"
            )
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
