"""``judgeq bench``: scoring overhead, decode speed and KV memory vs a full cache (the measurements
are :mod:`judgeq_cache.eval.speed`).

Light at import (no torch): the model and the measurements load when the command runs. The peak-RSS
column runs this command again in fresh processes (``--rss-probe``).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
from dataclasses import asdict

from .args import adapter_source, fraction, int_list, output_problem, positive_int

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_ADAPTER", "add_arguments", "check", "peak_rss_mib", "register_cli", "run"]

DEFAULT_ADAPTER = "smollm2-135m-instruct"


def _load(adapter_path: str, allow_untrained: bool = False):
    from ..eval.loading import load_adapter
    from ..models import load_model

    model, tokenizer = load_model("embedded")
    adapter, label = load_adapter(model, adapter_path, allow_untrained=allow_untrained)
    if not adapter.is_trained:
        logger.warning(
            "timing an untrained adapter (%s), as asked: it costs the same as a trained one", label
        )
    return model, tokenizer, adapter


def _rss_probe(
    kind: str, length: int, kept: float, steps: int, adapter_path: str, allow_untrained: bool
) -> None:
    """Child process: prefill + decode with one cache kind; print peak RSS (MiB) as JSON."""
    from ..eval.speed import corpus_prompt, decode_ms_per_token, make_cache

    model, tokenizer, adapter = _load(adapter_path, allow_untrained)
    ids = corpus_prompt(tokenizer, length)
    decode_ms_per_token(model, ids, make_cache(model, kind, kept, adapter), steps)
    sys.stdout.write(
        json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}) + "\n"
    )


def peak_rss_mib(
    kind: str, length: int, kept: float, steps: int, adapter_path: str, allow_untrained: bool = False
) -> float:
    cmd = [sys.executable, "-m", "judgeq_cache.cli", "bench", "--rss-probe", kind, "--lengths", str(length)]
    cmd += ["--kept", str(kept), "--decode-steps", str(steps), "--adapter", adapter_path]
    cmd += ["--allow-untrained"] * allow_untrained
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lengths", type=int_list(1), default="1024,2048,4096", help="prompt lengths in tokens"
    )
    parser.add_argument(
        "--kept", type=fraction, default=0.1, help="kept fraction in (0, 1) for the decode and memory columns"
    )
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed runs per kind (median)")
    parser.add_argument("--decode-steps", type=positive_int, default=32, help="decode steps timed per run")
    parser.add_argument(
        "--adapter",
        type=adapter_source,
        default=DEFAULT_ADAPTER,
        help="adapter dir, shipped name or Hub id (default: %(default)s)",
    )
    parser.add_argument(
        "--allow-untrained",
        action="store_true",
        help="time an untrained adapter when the adapter cannot be loaded (it costs the same; nothing is scored)",
    )
    parser.add_argument("--rss", action="store_true", help="also measure peak RSS in fresh subprocesses")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--rss-probe", default=None, help=argparse.SUPPRESS)


def check(args: argparse.Namespace) -> str | None:
    """Refuse, before the model loads, a ``--json`` file that cannot be written."""
    return output_problem(args.json, "--json") if args.json else None


def run(args: argparse.Namespace) -> int:
    import torch

    from ..eval.speed import corpus_prompt, markdown, measure

    lengths = args.lengths
    if args.rss_probe:
        _rss_probe(
            args.rss_probe, lengths[0], args.kept, args.decode_steps, args.adapter, args.allow_untrained
        )
        return 0
    model, tokenizer, adapter = _load(args.adapter, args.allow_untrained)
    rows = []
    for length in lengths:
        logger.info("measuring %d-token prompts", length)
        row = measure(
            model, corpus_prompt(tokenizer, length), adapter, args.kept, args.repeats, args.decode_steps
        )
        if args.rss:
            row.peak_rss_full_mib = peak_rss_mib(
                "full", length, args.kept, args.decode_steps, args.adapter, args.allow_untrained
            )
            row.peak_rss_kept_mib = peak_rss_mib(
                "judgeq", length, args.kept, args.decode_steps, args.adapter, args.allow_untrained
            )
        rows.append(row)
    header = (
        f"SmolLM2-135M-Instruct, fp32, {'CUDA' if torch.cuda.is_available() else 'CPU'}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    sys.stdout.write(f"{header}\n\n{markdown(rows, args.kept)}\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([asdict(r) for r in rows], fh, indent=2)
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="scoring overhead, decode speed and KV memory vs a full cache"
    )
    add_arguments(parser)
    parser.set_defaults(func=run, check=check)
