"""``judgeq eval``: run the harness (ours / kvpress), then merge JSONL files into a table and plot.

judgeq eval run --tasks needle_single --samples 20 --length 2048 --output runs/ours.jsonl
judgeq eval kvpress --tasks needle_single --samples 20 --length 2048 --output runs/kvpress.jsonl
judgeq eval report runs/ours.jsonl runs/kvpress.jsonl --markdown docs/results.md --plot docs/results.png
"""

# Light at import (no torch): the handlers import the harness when they run.

from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

from ..data import corpus_names
from ..errors import UserError
from ..eval.layouts import SETTINGS
from ..eval.methods import METHODS, PRESS_METHODS, default_methods, default_presses, scorer_of
from .args import (
    adapter_source,
    add_model_arguments,
    at_least,
    budget_list,
    choice_list,
    file_problem,
    non_negative_int,
    output_problem,
    plot_path,
    positive_int,
    task_list,
)

logger = logging.getLogger(__name__)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tasks",
        type=task_list,
        default="needle_single",
        help="comma list: synthetic task names, longbench:<name>, ruler:<task>",
    )
    p.add_argument("--samples", type=positive_int, default=20, help="samples per task")
    p.add_argument(
        "--length", type=at_least(16), default=2048, help="context length in model tokens (synthetic tasks)"
    )
    p.add_argument(
        "--settings",
        type=choice_list(SETTINGS, "setting"),
        default=",".join(SETTINGS),
        help=f"comma list of {', '.join(SETTINGS)}",
    )
    p.add_argument(
        "--budgets",
        type=budget_list,
        default="0.5,0.25,0.1",
        help="kept fractions in (0, 1) (0.25 or 25%%) and/or entries per head (256)",
    )
    add_model_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--corpus", choices=corpus_names(), default="moby_dick", help="haystack text: moby_dick or brown"
    )
    p.add_argument("--data-dir", default=None, help="local LongBench/RULER JSONL files")
    p.add_argument("--output", required=True, help="JSONL file the results are appended to")
    p.add_argument("--resume", action="store_true", help="skip results already in --output")
    p.add_argument(
        "--threads", type=non_negative_int, default=0, help="torch CPU threads (0 = torch's default)"
    )


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluation harness: run, kvpress, report", description=__doc__
    )
    sub = parser.add_subparsers(dest="eval_command", required=True)

    run = sub.add_parser("run", help="our methods (one shared prefill per sample and setting)")
    _common(run)
    ours = default_methods()
    others = [m for m in METHODS if m not in ours]
    run.add_argument(
        "--methods",
        type=_our_methods,
        default=",".join(ours),
        help=f"comma list (full = no eviction; also {', '.join(others)}; -shared: one selection for all heads)",
    )
    run.add_argument(
        "--adapter",
        type=adapter_source,
        default=None,
        help="Judge Q adapter dir, shipped name or Hub id (default: the one that ships for --model); "
        "'untrained' = fresh rows on purpose",
    )
    run.add_argument(
        "--allow-untrained",
        action="store_true",
        help="measure an untrained adapter where no trained one is found (rows labelled judgeq-untrained)",
    )
    run.add_argument("--no-hit-rate", action="store_true", help="skip the critical-KV hit rate vs the oracle")
    run.set_defaults(func=_run, check=_check_run)

    kv = sub.add_parser(
        "kvpress", help="kvpress presses on the same samples (needs kvpress, transformers<5.3)"
    )
    _common(kv)
    presses = default_presses()
    also = ", ".join(p for p in PRESS_METHODS if p not in presses)
    kv.add_argument(
        "--presses",
        type=choice_list(PRESS_METHODS, "press"),
        default=",".join(presses),
        help=f"comma list ({also} also available)",
    )
    kv.set_defaults(func=_kvpress, check=_check_kvpress)

    rep = sub.add_parser("report", help="merge JSONL files into a markdown table and a plot")
    rep.add_argument("inputs", nargs="+", help="JSONL files (later files override duplicates)")
    rep.add_argument("--markdown", default=None, help="write the tables here (default: print)")
    rep.add_argument(
        "--plot",
        type=plot_path,
        default=None,
        help="PNG path (accuracy vs kept fraction, one panel per setting)",
    )
    rep.add_argument("--command", default="", help="the command line that produced the inputs (recorded)")
    rep.add_argument("--title", default="Results")
    rep.add_argument("--paired", action="store_true", help="only prompts that every method answered")
    rep.add_argument("--settings", default="", help="comma list: report only these settings (default: all)")
    rep.add_argument(
        "--methods",
        default="",
        help="comma list: report only these methods (default: all; keep 'full' for the full-cache row)",
    )
    rep.add_argument(
        "--compare",
        default="",
        help="method pairs 'a:b,...' to add a paired-difference table with 95%% intervals (e.g. judgeq:snapkv)",
    )
    rep.set_defaults(func=_report, check=_check_report)


def _our_methods(text: str) -> list[str]:
    return choice_list(METHODS, "method")(text)


def _prepare(args):
    import torch

    from ..eval.loading import load_samples
    from ..models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    samples = []
    for spec in args.tasks:
        try:
            samples += load_samples(
                spec,
                args.samples,
                args.length,
                tokenizer,
                seed=args.seed,
                corpus=args.corpus,
                data_dir=args.data_dir,
            )
        except (OSError, ValueError, KeyError) as err:  # a malformed data file, or a Hub dataset missing
            raise UserError(f"--tasks {spec}: cannot read its samples: {err!r}") from err
    return model, tokenizer, samples, args.budgets


def _task_data_problem(spec: str, data_dir: str | None) -> str | None:
    """Why the samples of ``--tasks`` item ``spec`` cannot be read (synthetic tasks always can)."""
    kind, _, name = spec.partition(":")
    if kind not in ("longbench", "ruler"):
        return None
    if data_dir is None:
        if kind == "ruler":
            return f"{spec} needs --data-dir: RULER's JSONL files come from RULER's own prepare.py"
        if importlib.util.find_spec("datasets") is None:
            return f"{spec} without --data-dir reads the Hub through 'datasets': pip install datasets"
        return None
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        return f"--data-dir {data_dir!r} is not a directory (it holds <dataset>.jsonl files)"
    candidates = [root / f"{name}.jsonl"] + ([root / name / "validation.jsonl"] if kind == "ruler" else [])
    found = next((c for c in candidates if c.exists()), candidates[0])
    return file_problem(found, f"{spec} data file")


def _check_common(args) -> str | None:
    """Problems of the arguments ``run`` and ``kvpress`` share, before the model loads."""
    for spec in args.tasks:
        problem = _task_data_problem(spec, args.data_dir)
        if problem:
            return problem
    return output_problem(args.output, "--output")


def _check_run(args) -> str | None:
    """Refuse, before the model loads, bad data or output paths and a Judge Q run with no trained
    adapter in reach."""
    from ..eval.loading import UNTRAINED_FIX, shipped_adapter_expected

    problem = _check_common(args)
    if problem:
        return problem
    if args.adapter or args.allow_untrained or not any(scorer_of(m) == "judgeq" for m in args.methods):
        return None
    if not shipped_adapter_expected(args.model):
        return f"--model {args.model!r} has no Judge Q adapter that ships with the package: {UNTRAINED_FIX}"
    return None


def _check_kvpress(args) -> str | None:
    if importlib.util.find_spec("kvpress") is None:
        return "kvpress is not installed: pip install 'judgeq-cache[compare]' (transformers<5.3)"
    return _check_common(args)


def _check_report(args) -> str | None:
    from ..eval.stats import parse_pairs

    for path in args.inputs:
        problem = file_problem(path, "input")
        if problem:
            return problem
    try:
        parse_pairs(args.compare)
    except ValueError as err:
        return f"--compare: {err}"
    for flag, path in (("--markdown", args.markdown), ("--plot", args.plot)):
        problem = output_problem(path, flag) if path else None
        if problem:
            return problem
    return None


def _run(args) -> int:
    from ..eval.loading import load_adapter
    from ..eval.runner import evaluate

    model, tokenizer, samples, budgets = _prepare(args)
    methods = args.methods
    needs_adapter = any(scorer_of(m) == "judgeq" for m in methods)  # judgeq-shared, judgeq-perhead too
    adapter, label = (
        load_adapter(model, args.adapter, allow_untrained=args.allow_untrained)
        if needs_adapter
        else (None, "")
    )
    n = 0
    for _ in evaluate(
        model,
        tokenizer,
        samples,
        settings=args.settings,
        methods=methods,
        budgets=budgets,
        adapter=adapter,
        adapter_label=label,
        output=args.output,
        resume=args.resume,
        with_hit_rate=not args.no_hit_rate,
    ):
        n += 1
    logger.info("wrote %d records to %s", n, args.output)
    return 0


def _kvpress(args) -> int:
    try:
        from ..eval.kvpress_runner import evaluate_kvpress
    except ImportError as err:
        logger.error(
            "kvpress is not installed (%s): pip install 'judgeq-cache[compare]' (transformers<5.3)", err
        )
        return 2
    model, tokenizer, samples, budgets = _prepare(args)
    n = 0
    for _ in evaluate_kvpress(
        model,
        tokenizer,
        samples,
        settings=args.settings,
        presses=args.presses,
        budgets=budgets,
        output=args.output,
        resume=args.resume,
    ):
        n += 1
    logger.info("wrote %d records to %s", n, args.output)
    return 0


def _report(args) -> int:
    from ..eval.records import method_label, read_records
    from ..eval.report import markdown_report
    from ..eval.stats import parse_pairs

    pairs = parse_pairs(args.compare)  # checked by _check_report
    records = read_records(*args.inputs)
    if args.settings:
        settings = set(_csv(args.settings))
        records = [r for r in records if r.setting in settings]
    if args.methods:
        methods = set(_csv(args.methods))
        records = [r for r in records if method_label(r) in methods]
    if not records:
        logger.error(
            "nothing to report from %s (filters: --settings %r --methods %r)",
            ", ".join(args.inputs),
            args.settings,
            args.methods,
        )
        return 2
    plot = None
    if args.plot:
        from ..eval.plots import plot_accuracy

        plot = plot_accuracy(records, args.plot, paired_only=args.paired)
    text = markdown_report(
        records,
        title=args.title,
        command=args.command,
        plot=plot,
        paired_only=args.paired,
        compare=pairs,
    )
    if args.markdown:
        from ..utils import atomic_write

        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.markdown, text)
        logger.info("wrote %s", args.markdown)
    else:
        print(text)
    return 0
