"""``judgeq train``: the command line of the training recipe.

Light at import (no torch): :func:`check_args` refuses bad arguments before anything loads, and
:func:`run_cli` imports the recipe when it runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import random
from pathlib import Path

from ..cli.args import (
    add_dataclass_arguments,
    add_model_arguments,
    dataclass_from_args,
    file_problem,
    non_negative_int,
    output_problem,
    positive_int,
)
from ..errors import UserError
from ..prompts import Prompt, corpus_prompts, load_prompts
from .config import TrainConfig, TrainingError
from .dryrun import add_plan_arguments, check_plan_args, run_dry_run

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- CLI


def _load_model(name: str, dtype: str):
    from ..models import load_model

    return load_model(name, dtype=dtype)


def _data_prompts(args: argparse.Namespace) -> list[Prompt]:
    """The prompts of every ``--data`` source, read before the model loads (a bad file is a
    :class:`UserError`, not a traceback after the model is in memory)."""
    prompts: list[Prompt] = []
    for source in args.data or []:
        try:
            prompts += load_prompts(source, split=args.split, field=args.field, limit=args.limit)
        except (OSError, ValueError, ImportError) as err:
            raise UserError(f"--data {source!r}: {err}") from err
    return prompts


def run_cli(args: argparse.Namespace) -> int:
    if args.dry_run:
        return run_dry_run(args)
    from .loop import train

    config = dataclass_from_args(TrainConfig, args)
    prompts = _data_prompts(args)
    model, tokenizer = _load_model(args.model, args.dtype)
    if args.corpus_prompts:
        prompts += corpus_prompts(
            tokenizer,
            args.corpus_prompts,
            min_tokens=args.min_tokens,
            max_tokens=args.max_tokens,
            seed=args.seed,
        )
    if not prompts:
        raise TrainingError("no prompts: pass --data FILE/DATASET and/or --corpus-prompts N")
    rng = random.Random(args.seed)
    rng.shuffle(prompts)
    n_held = int(round(args.heldout * len(prompts))) if args.heldout < 1 else int(args.heldout)
    n_held = min(n_held, len(prompts) - 1)
    held, train_set = prompts[:n_held], prompts[n_held:]
    accelerator = _accelerator()
    try:
        _, report = train(
            model,
            tokenizer,
            train_set,
            args.output,
            config,
            heldout_prompts=held,
            responses_path=args.responses,
            resume=args.resume,
            accelerator=accelerator,
        )
    finally:
        if accelerator is not None:  # under torchrun: tear the process group down before exiting
            accelerator.end_training()
    logger.info("report: %s", json.dumps(report, indent=2))
    return 0


def _accelerator():
    """An ``accelerate.Accelerator`` for this process (one CPU process, or a torchrun rank); None without accelerate."""
    try:
        from accelerate import Accelerator
    except ImportError:
        return None
    import torch

    return Accelerator(cpu=not torch.cuda.is_available())


def _heldout(text: str) -> float:
    """``--heldout``: a fraction in [0, 1) or a whole count >= 1."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf") or (value >= 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1) or a whole count, got {text!r}")
    return value


def _data_problem(source: str) -> str | None:
    """Why ``--data source`` cannot be read, or None. A path that exists, or looks like a path or a
    JSON file, must be a readable file or a ``save_to_disk`` directory; any other name is a
    ``datasets`` dataset, which needs the ``datasets`` package."""
    path = Path(source).expanduser()
    looks_local = source.startswith((".", "/", "~")) or path.suffix.lower() in (".json", ".jsonl")
    if path.is_dir() or not (path.exists() or looks_local):
        if importlib.util.find_spec("datasets") is None:
            return f"--data {source!r} is not a file; reading a dataset needs: pip install datasets"
        return None
    problem = file_problem(source, "--data file")
    return (
        f"{problem}; pass a JSON/JSONL file, a save_to_disk directory or a datasets name" if problem else None
    )


def check_args(args: argparse.Namespace) -> str | None:
    """Every problem ``judgeq train`` can see before the model loads, as one message (None: none)."""
    problem = check_plan_args(args)
    if problem or args.dry_run:  # the plan reads no data and writes nothing
        return problem
    if not args.data and not args.corpus_prompts:
        return "no prompts: pass --data FILE/DATASET and/or --corpus-prompts N"
    for source in args.data or []:
        problem = _data_problem(source)
        if problem:
            return problem
    if args.corpus_prompts and args.min_tokens > args.max_tokens:
        return f"--min-tokens {args.min_tokens} exceeds --max-tokens {args.max_tokens}"
    problem = output_problem(args.output, "--output", directory=True)
    if problem:
        return problem
    if args.responses:
        return output_problem(args.responses, "--responses")
    return None


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train Judge Q soft tokens for a model",
        description="Train Judge Q soft tokens (attention alignment). Runs on one CPU with plain "
        "`judgeq train ...`, or data-parallel with `accelerate launch -m judgeq_cache.training ...`.",
    )
    add_arguments(p)
    p.set_defaults(func=run_cli, check=check_args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, dtype=True)
    p.add_argument(
        "--data", action="append", help="JSON/JSONL file, save_to_disk dir or datasets name (repeatable)"
    )
    p.add_argument("--split", default="train")
    p.add_argument("--field", default=None, help="conversation/text field (default: auto)")
    p.add_argument(
        "--limit", type=positive_int, default=None, help="read at most this many records per --data"
    )
    p.add_argument(
        "--corpus-prompts", type=non_negative_int, default=0, help="add N prompts over the bundled books"
    )
    p.add_argument(
        "--min-tokens", type=positive_int, default=1000, help="bundled-text excerpt length, minimum"
    )
    p.add_argument(
        "--max-tokens", type=positive_int, default=3000, help="bundled-text excerpt length, maximum"
    )
    p.add_argument("--heldout", type=_heldout, default=0.15, help="held-out fraction (<1) or count (>=1)")
    p.add_argument(
        "--output", "-o", default=None, help="output adapter directory (required unless --dry-run)"
    )
    p.add_argument("--responses", default=None, help="response cache JSONL (default OUTPUT/responses.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint")
    # The hyper-parameters: one flag per TrainConfig field (older names kept as aliases).
    add_dataclass_arguments(p, TrainConfig, aliases={"max_steps": ["--steps"], "do_sample": ["--sample"]})
    add_plan_arguments(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m judgeq_cache.training")
    add_arguments(parser)
    args = parser.parse_args(argv)
    problem = check_args(args)
    if problem:
        parser.error(problem)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_cli(args)


if __name__ == "__main__":
    raise SystemExit(main())
