"""``judgeq demo``: needle prompts at 2k tokens on the embedded SmolLM2-135M with its bundled Judge Q
adapter, side by side with the full cache, SnapKV, StreamingLLM and TOVA at 25 % and 10 % kept; the
needles sit at 20 %, 50 % and 80 % of the context.

Offline; a few minutes on a laptop CPU (the first run converts the GGUF once, ~30 s).
"""

# Light at import (no torch): the model and the harness load when the demo runs.

from __future__ import annotations

import argparse
import logging
import time
from typing import TYPE_CHECKING

from .args import (
    adapter_source,
    at_least,
    budget_list,
    matplotlib_available,
    non_negative_int,
    output_problem,
    positive_int,
)

if TYPE_CHECKING:
    from ..eval.records import Record

logger = logging.getLogger(__name__)

__all__ = ["register_cli", "run_demo", "summary_rows", "table"]

METHODS = ["full", "judgeq", "snapkv", "streamingllm", "tova"]

#: Where the demo's needles sit in the context: spread out, so that no method wins by construction
#: (keeping the most recent tokens finds a needle at 95 % and loses one at 20 %).
DEPTHS = [0.2, 0.5, 0.8]


def table(header: list[str], rows: list[list[object]]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _short(text: str, width: int = 28) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def run_demo(
    model,
    tokenizer,
    adapter,
    *,
    adapter_label: str = "",
    samples: int = 3,
    length: int = 2048,
    budgets: list[float] | None = None,
    task: str = "needle_single",
) -> list[Record]:
    """Evaluate :data:`METHODS` on ``samples`` needle prompts (query-aware) and return the records."""
    from ..eval.runner import evaluate
    from ..eval.tasks import make_samples

    budgets = budgets or [0.25, 0.1]
    prompts = make_samples(task, samples, length, tokenizer, seed=0, depths=DEPTHS)
    return list(
        evaluate(
            model,
            tokenizer,
            prompts,
            settings=["query-aware"],
            methods=METHODS,
            budgets=budgets,
            adapter=adapter,
            adapter_label=adapter_label,
            with_hit_rate=False,
        )
    )


def detail_rows(records: list[Record]) -> list[list[object]]:
    return [
        [
            r.index,
            r.method,
            r.budget,
            _short(r.answer),
            "right" if r.score >= 1 else "wrong",
            f"{r.kv_bytes / 2**20:.1f}",
            f"{r.seconds:.1f}",
        ]
        for r in records
    ]


def summary_rows(records: list[Record]) -> list[list[object]]:
    """Per method and budget: accuracy, mean KV MiB, mean seconds."""
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r.method, r.budget), []).append(r)
    rows = []
    for (method, budget), rs in groups.items():
        rows.append(
            [
                method,
                budget,
                f"{sum(r.score >= 1 for r in rs)}/{len(rs)}",
                f"{sum(r.kv_bytes for r in rs) / len(rs) / 2**20:.1f}",
                f"{sum(r.seconds for r in rs) / len(rs):.1f}",
            ]
        )
    return rows


def register_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="side-by-side needle demo on the embedded model", description=__doc__
    )
    p.add_argument("--samples", type=positive_int, default=3, help="needle prompts")
    p.add_argument("--length", type=at_least(16), default=2048, help="context tokens")
    p.add_argument(
        "--budgets",
        type=budget_list,
        default="0.25,0.1",
        help="kept fractions in (0, 1) (0.25 or 25%%) and/or entries per head (256)",
    )
    p.add_argument(
        "--plot",
        default="judgeq_demo.png",
        help="where to write the accuracy plot ('' = none; needs matplotlib)",
    )
    p.add_argument(
        "--adapter",
        type=adapter_source,
        default=None,
        help="adapter dir, shipped name or Hub id (default: the one that ships for the embedded model)",
    )
    p.add_argument(
        "--allow-untrained",
        action="store_true",
        help="accept an adapter that was never trained (its figures are labelled judgeq-untrained)",
    )
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads (0 = default)")
    p.set_defaults(func=_main, check=_check)


def _check(args: argparse.Namespace) -> str | None:
    """Refuse, before the model loads, a plot that cannot be written."""
    return output_problem(args.plot, "--plot") if args.plot else None


def _main(args: argparse.Namespace) -> int:
    import torch

    from ..eval.loading import load_adapter
    from ..models import load_model

    start = time.perf_counter()
    plot = args.plot
    if plot and not matplotlib_available():
        logger.warning(
            "matplotlib is not installed: the demo runs without its plot "
            "(pip install matplotlib, or pip install 'judgeq-cache[eval]'; --plot '' silences this)"
        )
        plot = ""
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        "Loading the embedded SmolLM2-135M-Instruct (the first run converts its GGUF once, ~30 s)...",
        flush=True,
    )
    model, tokenizer = load_model("embedded")
    adapter, label = load_adapter(model, args.adapter, allow_untrained=args.allow_untrained)
    print(f"Judge Q adapter: {label}", flush=True)
    budgets = args.budgets
    print(
        f"Running {args.samples} needle prompts of {args.length} tokens: {', '.join(METHODS)} ...", flush=True
    )
    records = run_demo(
        model,
        tokenizer,
        adapter,
        adapter_label=label,
        samples=args.samples,
        length=args.length,
        budgets=budgets,
    )
    print()
    print(table(["prompt", "method", "kept", "answer", "", "KV MiB", "seconds"], detail_rows(records)))
    print()
    print(table(["method", "kept", "right", "KV MiB", "s/answer"], summary_rows(records)))
    print(
        f"(seconds include the prompt's shared prefill; references: {', '.join(records[0].references)} ...)"
    )
    if plot:
        from ..eval.plots import plot_accuracy

        print(
            f"\nplot: {plot_accuracy(records, plot, title='judgeq demo: needle at 2k tokens', exclude_failing=False)}"
        )
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0
