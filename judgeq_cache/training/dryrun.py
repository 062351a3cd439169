"""``judgeq train --dry-run``: the flags of the plan, their checks, and printing it (no weights loaded)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli.args import non_negative_int, positive_float
from .plan import Plan, format_plan, make_plan
from .shapes import resolve_shape

__all__ = [
    "DEFAULT_GPU_MEMORY_GB",
    "DEFAULT_PLAN_PROMPTS",
    "add_plan_arguments",
    "check_plan_args",
    "run_dry_run",
]

#: ``--dry-run`` without ``--gpu-memory-gb``: one 80 GB GPU (an H100 / A100 80GB).
DEFAULT_GPU_MEMORY_GB = 80.0
#: ``--dry-run`` without a prompt count: the bundled recipe's 144 training prompts.
DEFAULT_PLAN_PROMPTS = 144
#: Default sustained throughput: about 40 % of an H100 SXM's 989 dense bf16 TFLOP/s.
DEFAULT_TFLOPS = 400.0
#: ``--dry-run`` without ``--max-prompt-tokens``.
DEFAULT_PLAN_TOKENS = 4096


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    """``--dry-run`` and the flags only the plan reads (``--gpu-memory-gb`` is a TrainConfig field)."""
    g = p.add_argument_group("dry run (the memory and time plan, from the model's config only)")
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="print the memory and time plan and exit, without loading weights or data (every prompt "
        f"at --max-prompt-tokens, default {DEFAULT_PLAN_TOKENS} here)",
    )
    g.add_argument(
        "--config-json",
        default=None,
        help="the model's config.json (file or directory) for --dry-run, when --model is a Hub id "
        "outside the built-in table (no network is used)",
    )
    g.add_argument(
        "--plan-prompts",
        type=non_negative_int,
        default=None,
        help=f"prompts the plan counts (default: --corpus-prompts + --limit per --data, else {DEFAULT_PLAN_PROMPTS})",
    )
    g.add_argument(
        "--plan-device",
        choices=("gpu", "cpu"),
        default="gpu",
        help="gpu: fused attention kernels; cpu: SDPA's math path, which keeps an N x N attention per layer",
    )
    g.add_argument(
        "--assume-tflops",
        type=positive_float,
        default=DEFAULT_TFLOPS,
        help="sustained TFLOP/s of the plan's time estimate (default: %(default)s, ~40%% of an H100's bf16 peak)",
    )


def check_plan_args(args: argparse.Namespace) -> str | None:
    """The new flags' problems, before anything loads: an error line, or None."""
    if not getattr(args, "dry_run", False):
        if getattr(args, "output", None) is None:
            return "the following arguments are required: --output/-o (or --dry-run for the plan only)"
        for flag, value in (("--config-json", args.config_json), ("--plan-prompts", args.plan_prompts)):
            if value is not None:
                return f"{flag} is read by --dry-run only: add --dry-run, or leave it out"
        return None
    if args.config_json is not None:
        path = Path(args.config_json).expanduser()
        if not (path.is_file() or (path / "config.json").is_file()):
            return f"--config-json {args.config_json}: no such file (give the model's config.json or its directory)"
    try:
        resolve_shape(args.model, args.config_json)
    except ValueError as err:
        return str(err)
    return None


def _plan_prompts(args: argparse.Namespace) -> int:
    if args.plan_prompts is not None:
        return args.plan_prompts
    counted = (args.corpus_prompts or 0) + (args.limit or 0) * len(args.data or [])
    return counted or DEFAULT_PLAN_PROMPTS


def plan_from_args(args: argparse.Namespace) -> Plan:
    """The plan of the run ``args`` describe."""
    shape = resolve_shape(args.model, args.config_json)
    return make_plan(
        shape,
        dtype=args.dtype,
        prompt_tokens=args.max_prompt_tokens or DEFAULT_PLAN_TOKENS,
        response_tokens=args.max_new_tokens,
        soft_tokens=args.num_soft_tokens,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        prompts=_plan_prompts(args),
        steps=args.max_steps,
        keep_prefill=args.keep_prefill,
        memory_gb=args.gpu_memory_gb or DEFAULT_GPU_MEMORY_GB,
        tflops=args.assume_tflops,
        device=args.plan_device,
    )


def run_dry_run(args: argparse.Namespace) -> int:
    """Print the plan; nothing is loaded or written."""
    print(format_plan(plan_from_args(args)))  # the plan is this command's output
    return 0
