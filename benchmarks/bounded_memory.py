"""Bounded KV memory (issue 14): chunked-prefill eviction and decode-time eviction, measured.

Prefill: for each prompt length, peak RSS above the loaded model, KV bytes after the prefill and
seconds, for the full cache, one-shot eviction and eviction after every chunk (``--chunks``). Each
run is a fresh subprocess; RSS is sampled every few milliseconds from ``/proc/self/statm`` and the
baseline is the RSS right before the prefill, after a short warm-up generate (the model loaded and
its memory-mapped weights paged in).

Decoding: the full cache generates a greedy and a sampled (``--seed``) ``--decode-tokens``
continuation of a prompt; then every method at every ``--decode-budgets`` budget (``decode_every``)
is teacher-forced through those same continuations, and the book's real next text, token by token:
mean NLL and ms per token, against the full cache. The prompt is evicted
to the same budget at prefill (one-shot), then every ``--decode-every`` tokens.

Needles: ``--needle-samples`` prompts per needle task at ``--needle-length`` tokens, query-agnostic
(the question comes after the compressed context): the context is prefilled in one forward
(one-shot) or in ``--needle-chunk`` chunks inside ``cache.chunked_prefill()``, then ``generate``
appends the question and answers greedily; accuracy per method and mode at ``--needle-budget``.

Run it from a checkout with ``PYTHONPATH=.`` when the installed package is another copy (the prefill
probes run in subprocesses that inherit the environment).

Full size (hours on a CPU)::

    python benchmarks/bounded_memory.py --lengths 2048,4096,8192 --chunks 512,1024 --budget 256 \\
        --decode-prompt 1024 --decode-tokens 512 --decode-budgets 256,512 --json bounded.json

Smoke run: ``python benchmarks/bounded_memory.py --lengths 512 --chunks 128 --budget 64
--decode-prompt 256 --decode-tokens 64 --decode-budgets 64 --needle-samples 1 --needle-length 512``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from judgeq_cache import EvictionCache, JudgeQAdapter, JudgeQCache
from judgeq_cache.cli import args as cliargs
from judgeq_cache.cli.args import choice_list, int_list, positive_int
from judgeq_cache.data import corpus_names
from judgeq_cache.eval.speed import corpus_prompt
from judgeq_cache.models import load_model
from judgeq_cache.utils import cache_kwarg, kv_bytes

METHODS = ["judgeq", "snapkv", "streamingllm", "tova"]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Context manager: the highest RSS seen while active, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self.base = interval, 0, 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def load_embedded(adapter_path: str, *, allow_untrained: bool = False):
    """The embedded model, its tokenizer and the Judge Q adapter at ``adapter_path``. A missing adapter
    is an error, except where only cost is measured (``allow_untrained``: an untrained adapter costs
    the same; a warning says so)."""
    model, tokenizer = load_model("embedded")
    try:
        adapter = JudgeQAdapter.from_pretrained(adapter_path)
    except (OSError, ValueError) as err:
        if not allow_untrained:
            raise SystemExit(f"--adapter {adapter_path}: cannot load a Judge Q adapter ({err})") from None
        logging.getLogger(__name__).warning(
            "%s: %s; measuring cost with an untrained adapter", adapter_path, err
        )
        adapter = JudgeQAdapter.init_for(model)
    return model, tokenizer, adapter


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--adapter``, ``--threads`` and ``--json``, shared by the decode scripts in ``scripts/``."""
    parser.add_argument("--adapter", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--json", default=None, help="write the results to this JSON file")


def make_cache(model, method: str, budget, adapter, decode_every=None):
    if method == "full":
        return DynamicCache(config=model.config)
    if method == "judgeq":
        return JudgeQCache(model, adapter, budget, decode_every=decode_every)
    return EvictionCache(model, budget, method, decode_every=decode_every)


@torch.no_grad()
def prefill_probe(kind: str, length: int, budget: int, method: str, adapter_path: str) -> dict:
    """One prefill (``generate``, one new token) in this process: ``kind`` is ``full``, ``oneshot`` or
    ``chunk<N>``."""
    model, tokenizer, adapter = load_embedded(adapter_path, allow_untrained=True)
    ids = corpus_prompt(tokenizer, length)
    chunk = int(kind[5:]) if kind.startswith("chunk") else None
    # Warm-up on a short prompt: the weights are memory-mapped, and the first forward pages them in
    # (the model's whole size in RSS). The baseline must include them.
    warm = make_cache(model, "full" if kind == "full" else method, 16, adapter)
    model.generate(ids[:, :64], max_new_tokens=1, do_sample=False, **{cache_kwarg(model): warm})
    del warm
    gc.collect()
    cache = make_cache(model, "full" if kind == "full" else method, budget, adapter)
    start = time.perf_counter()
    with PeakRSS() as rss:
        model.generate(
            ids,
            max_new_tokens=1,
            do_sample=False,
            prefill_chunk_size=chunk,
            **{cache_kwarg(model): cache},
        )
    seconds = time.perf_counter() - start
    return {
        "length": length,
        "kind": kind,
        "peak_rss_above_model_mib": (rss.peak - rss.base) / 2**20,
        "kv_bytes": kv_bytes(cache),
        "seconds": seconds,
    }


def run_prefill(args) -> list[dict]:
    rows = []
    kinds = ["full", "oneshot"] + [f"chunk{c}" for c in args.chunks]
    for length in args.lengths:
        for kind in kinds:
            cmd = [sys.executable, os.path.abspath(__file__), "--probe", kind, "--lengths", str(length)]
            cmd += ["--budget", str(args.budget), "--method", args.method, "--adapter", args.adapter]
            cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


@torch.no_grad()
def token_nll(model, prompt: torch.Tensor, continuation: torch.Tensor, cache) -> tuple[list[float], float]:
    """NLL of each token of ``continuation`` fed token by token after ``prompt``, and ms per token."""
    kw = {cache_kwarg(model): cache}
    logits = model(input_ids=prompt, logits_to_keep=1, **kw).logits[:, -1]
    nll, start = [], time.perf_counter()
    for i in range(continuation.shape[1]):
        token = continuation[:, i : i + 1]
        nll.append(torch.nn.functional.cross_entropy(logits.float(), token[:, 0]).item())
        logits = model(input_ids=token, **kw).logits[:, -1]
    ms = 1e3 * (time.perf_counter() - start) / continuation.shape[1]
    return nll, ms


def teacher_forced(model, prompt: torch.Tensor, continuation: torch.Tensor, cache) -> tuple[float, float]:
    """Mean NLL of ``continuation`` fed token by token after ``prompt``, and ms per token."""
    nll, ms = token_nll(model, prompt, continuation, cache)
    return sum(nll) / len(nll), ms


def run_decode(args) -> list[dict]:
    """Teacher-forced NLL under decode-time eviction of three continuations of the same prompt: the full
    cache's own greedy one (``nll``), its own sampled one (``nll_sampled``, seeded, temperature 1: the
    excess NLL over the full cache's estimates the KL divergence from it, where a greedy continuation
    is often a near-deterministic loop whose ratio swings either way) and the book's real next text
    (``nll_text``)."""
    model, tokenizer, adapter = load_embedded(args.adapter)
    rows = []
    for spec in tqdm(args.decode_prompts, desc="decode prompts"):
        text = corpus_prompt(tokenizer, args.decode_prompt + args.decode_tokens, *spec)
        prompt, book = text[:, : args.decode_prompt], text[:, args.decode_prompt :]
        rows += decode_rows(args, model, prompt, book, spec, adapter)
    return rows


def decode_summary(rows: list[dict]) -> list[dict]:
    """Per method and budget: the mean NLL ratio over the prompts, and on how many it beat StreamingLLM."""
    out = []
    cells = sorted({(r["method"], r["budget"]) for r in rows if r["budget"] is not None}, key=str)
    for method, budget in cells:
        mine = {r["prompt"]: r for r in rows if (r["method"], r["budget"]) == (method, budget)}
        ref = {r["prompt"]: r for r in rows if (r["method"], r["budget"]) == ("streamingllm", budget)}
        row = {"method": method, "budget": budget, "prompts": len(mine)}
        for key in ("nll", "nll_sampled", "nll_text"):
            row[f"{key}_vs_full_mean"] = statistics.fmean(r[f"{key}_vs_full"] for r in mine.values())
            if ref and method != "streamingllm":
                row[f"{key}_below_streamingllm"] = sum(mine[p][key] < ref[p][key] for p in mine if p in ref)
        out.append(row)
    return out


def decode_rows(args, model, prompt, book, spec, adapter) -> list[dict]:
    """The decode rows of one prompt: full, then every method at every budget."""
    gen = {"max_new_tokens": args.decode_tokens, "min_new_tokens": args.decode_tokens}
    kw = {cache_kwarg(model): DynamicCache(config=model.config)}
    greedy = model.generate(prompt, do_sample=False, **gen, **kw)[:, prompt.shape[1] :]
    torch.manual_seed(args.seed)  # this script's own process: the sampled continuation is reproducible
    kw = {cache_kwarg(model): DynamicCache(config=model.config)}
    sampled = model.generate(prompt, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, **gen, **kw)
    continuations = {"nll": greedy, "nll_sampled": sampled[:, prompt.shape[1] :], "nll_text": book}
    rows = []
    full = {}
    for method, budget in [("full", None)] + [(m, b) for b in args.decode_budgets for m in args.methods]:
        row = {"prompt": f"{spec[0]}:{spec[1]}", "method": method, "budget": budget}
        for key, continuation in continuations.items():
            cache = make_cache(model, method, budget or 1, adapter, decode_every=args.decode_every)
            nll, ms = teacher_forced(model, prompt, continuation, cache)
            row[key] = nll
            row.setdefault("ms_per_token", ms)
            if method == "full":
                full[key] = nll
            else:
                row[f"{key}_vs_full"] = nll / full[key] if full[key] else math.nan
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


NEEDLE_TASKS = ["needle_single", "needle_multikey", "needle_multivalue", "needle_multiquery"]


@torch.no_grad()
def needle_answer(model, tokenizer, sample, cache, chunk: int | None) -> float:
    """Score of ``cache``'s greedy answer to ``sample`` (query-agnostic): the context prefilled in one
    forward or in ``chunk``-token chunks, then the question appended by ``generate``."""
    from judgeq_cache.eval.layouts import build_prompt
    from judgeq_cache.eval.loop import decode_answer
    from judgeq_cache.eval.metrics import score
    from judgeq_cache.utils import eos_token_ids

    prompt = build_prompt(tokenizer, sample, "query-agnostic")
    context, kw = prompt.compressed, {cache_kwarg(model): cache}
    if chunk is None:
        model(input_ids=context, logits_to_keep=1, **kw)
    else:
        with cache.chunked_prefill():
            for start in range(0, context.shape[1], chunk):
                model(input_ids=context[:, start : start + chunk], logits_to_keep=1, **kw)
    ids = prompt.input_ids
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=sample.max_new_tokens,
        do_sample=False,
        pad_token_id=model.generation_config.pad_token_id or 0,
        **kw,
    )
    _, text = decode_answer(tokenizer, out[0, ids.shape[1] :], eos_token_ids(model, tokenizer))
    return score(sample.metric, text, sample.answers, **sample.meta.get("metric_kwargs", {}))


def run_needles(args) -> list[dict]:
    """Needle accuracy per method, one-shot vs chunked, at the same budget and prompts."""
    from judgeq_cache.eval.tasks import make_samples

    model, tokenizer, adapter = load_embedded(args.adapter)
    samples = [
        s
        for task in NEEDLE_TASKS
        for s in make_samples(task, args.needle_samples, args.needle_length, tokenizer, seed=args.needle_seed)
    ]
    scores: dict[tuple[str, str], list[float]] = {}
    for sample in samples:
        for method in ["full", *args.methods]:
            for mode, chunk in [("oneshot", None), (f"chunk{args.needle_chunk}", args.needle_chunk)]:
                if method == "full" and chunk is not None:
                    continue
                cache = make_cache(model, method, args.needle_budget, adapter)
                scores.setdefault((method, mode), []).append(
                    needle_answer(model, tokenizer, sample, cache, chunk)
                )
        print(json.dumps({"sample": sample.sample_id, **{f"{m}/{k}": v[-1] for (m, k), v in scores.items()}}))
    rows = [
        {"method": m, "mode": k, "accuracy": sum(v) / len(v), "n": len(v), "budget": args.needle_budget}
        for (m, k), v in scores.items()
    ]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def reuse_decode_rows(rows: list[dict], path: str, parser: argparse.ArgumentParser) -> list[dict]:
    """``rows`` plus the rows of ``path`` for the same prompts and budgets whose method this run did not
    measure. Decode NLLs are deterministic, so the full-cache rows of both runs must agree: a check that
    the earlier run continued the same prompts with the same model."""
    try:
        earlier = json.loads(Path(path).read_text())["decode"]
    except (OSError, ValueError, KeyError) as err:
        parser.error(f"--reuse-decode {path}: not a bounded_memory JSON with decode rows ({err})")
    full = {r["prompt"]: r for r in rows if r["method"] == "full"}
    budgets = {r["budget"] for r in rows if r["budget"] is not None}
    for r in earlier:
        mine = full.get(r["prompt"])
        if r["method"] == "full" and mine is not None:
            for key in ("nll", "nll_sampled", "nll_text"):
                if abs(r[key] - mine[key]) > 1e-4 * abs(mine[key]):
                    parser.error(
                        f"--reuse-decode {path}: its full-cache {key} on {r['prompt']} differs from this run's"
                    )
    measured = {(r["method"], r["budget"]) for r in rows}
    reused = [
        r
        for r in earlier
        if r["prompt"] in full and r["budget"] in budgets and (r["method"], r["budget"]) not in measured
    ]
    order = list(full)
    return sorted(
        rows + reused, key=lambda r: (order.index(r["prompt"]), r["budget"] or 0, r["method"] != "full")
    )


def prompt_specs(text: str) -> list[tuple[str, int]]:
    """``--decode-prompts``: comma-separated ``corpus:offset`` pairs of bundled corpora."""
    specs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        corpus, _, offset = item.partition(":")
        if corpus not in corpus_names() or not offset.isdigit():
            raise argparse.ArgumentTypeError(
                f"expected CORPUS:OFFSET with CORPUS one of {corpus_names()}, got {item!r}"
            )
        specs.append((corpus, int(offset)))
    if not specs:
        raise argparse.ArgumentTypeError("expected at least one CORPUS:OFFSET")
    return specs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int_list(16), default="2048,4096,8192")
    parser.add_argument("--chunks", type=int_list(1), default="512,1024")
    parser.add_argument(
        "--budget", type=positive_int, default=256, help="entries kept per head (prefill part)"
    )
    parser.add_argument("--method", default="judgeq", help="scorer of the prefill part")
    parser.add_argument("--decode-prompt", type=positive_int, default=1024)
    parser.add_argument(
        "--decode-prompts",
        type=prompt_specs,
        default="moby_dick:0",
        help="CORPUS:CHARACTER_OFFSET,... excerpts to continue (each from the next paragraph start)",
    )
    parser.add_argument("--decode-tokens", type=positive_int, default=512)
    parser.add_argument("--decode-budgets", type=int_list(1), default="256,512")
    parser.add_argument("--decode-every", type=positive_int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="of the sampled continuation")
    parser.add_argument("--methods", type=choice_list(METHODS, "method"), default=",".join(METHODS))
    parser.add_argument("--adapter", default="smollm2-135m-instruct")
    parser.add_argument("--needle-samples", type=int, default=4, help="per needle task (0 = skip)")
    parser.add_argument("--needle-length", type=positive_int, default=2048)
    parser.add_argument("--needle-chunk", type=positive_int, default=512)
    parser.add_argument(
        "--needle-budget", type=cliargs.budget, default=0.25, help="kept fraction (0.25) or entries (256)"
    )
    parser.add_argument("--needle-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--skip-prefill", action="store_true")
    parser.add_argument("--skip-decode", action="store_true")
    parser.add_argument("--json", default=None, help="also write all rows to this JSON file")
    parser.add_argument(
        "--reuse-decode",
        default=None,
        metavar="JSON",
        help="take the decode rows of methods not in --methods from this earlier run (same prompts and "
        "budgets; its full-cache rows must match this run's) and summarise them together",
    )
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        row = prefill_probe(args.probe, args.lengths[0], args.budget, args.method, args.adapter)
        sys.stdout.write(json.dumps(row) + "\n")
        return 0
    result = {
        "prefill": [] if args.skip_prefill else run_prefill(args),
        "decode": [] if args.skip_decode else run_decode(args),
        "needles": run_needles(args) if args.needle_samples else [],
    }
    if result["decode"] and args.reuse_decode:
        result["decode"] = reuse_decode_rows(result["decode"], args.reuse_decode, parser)
        result["reused_from"] = args.reuse_decode
    if result["decode"]:
        result["decode_summary"] = decode_summary(result["decode"])
        for row in result["decode_summary"]:
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
