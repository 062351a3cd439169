"""Markdown tables from result records (ours and kvpress's merged)."""

from __future__ import annotations

import datetime
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .methods import method_order
from .records import Record, method_label
from .report_sections import (
    accuracy_cell,
    budget_order,
    by_task_table,
    cell_budgets,
    comparison_section,
    failure_section,
    format_table,
    mean_or_nan,
)

logger = logging.getLogger(__name__)

__all__ = ["ReportOptions", "aggregate", "budget_order", "format_table", "markdown_report", "valid_tasks"]

#: A task whose full-cache accuracy is below this measures nothing on the evaluated model.
FULL_CACHE_FLOOR = 0.5


def valid_tasks(records: Iterable[Record], floor: float = FULL_CACHE_FLOOR) -> dict[str, float]:
    """``{task: full-cache accuracy}`` over all settings (tasks without full-cache rows are kept)."""
    scores: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.method == "full":
            scores[r.task].append(r.score)
    return {task: mean_or_nan(v) for task, v in scores.items()}


def aggregate(
    records: Iterable[Record], field: str = "score"
) -> dict[tuple[str, str, str], tuple[float, int]]:
    """``{(setting, method, budget): (mean of field, count)}`` (None values skipped)."""
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in records:
        value = getattr(r, field)
        if value is not None:
            groups[(r.setting, method_label(r), r.budget)].append(float(value))
    return {k: (mean_or_nan(v), len(v)) for k, v in groups.items()}


def paired(records: list[Record]) -> list[Record]:
    """Only the prompts (task, sample, setting) that every reported method and budget answered, so
    all methods of a setting are compared on the same samples."""
    cells: dict[str, set[tuple[str, str]]] = defaultdict(set)
    have: dict[tuple[str, int, str], set[tuple[str, str]]] = defaultdict(set)
    for r in records:
        cells[r.setting].add((method_label(r), r.budget))
        have[(r.task, r.index, r.setting)].add((method_label(r), r.budget))
    return [r for r in records if have[(r.task, r.index, r.setting)] >= cells[r.setting]]


@dataclass(frozen=True)
class ReportOptions:
    """What :func:`markdown_report` writes besides the tables.

    ``command`` is recorded as the way to reproduce the inputs; ``plot`` is linked by file name;
    ``paired_only`` keeps only the prompts every method answered; ``compare`` adds a
    paired-difference table (95 % intervals) for each ``(a, b)`` method pair.
    """

    title: str = "Results"
    command: str = ""
    plot: str | None = None
    paired_only: bool = False
    compare: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True)
class _Grid:
    """The records a report's tables are built from, and the settings, budgets and methods they span."""

    records: list[Record]
    acc: dict[tuple[str, str, str], tuple[float, int]]
    settings: list[str]
    budgets: list[str]
    methods: list[str]

    @classmethod
    def of(cls, records: list[Record]) -> _Grid:
        acc = aggregate(records)
        settings = [
            s for s in ("query-aware", "query-agnostic", "question-first") if any(k[0] == s for k in acc)
        ]
        budgets = sorted({k[2] for k in acc if k[2] != "full"}, key=budget_order)
        return cls(records, acc, settings, budgets, method_order({k[1] for k in acc}))


def markdown_report(records: list[Record], options: ReportOptions | None = None, **fields: Any) -> str:
    """Accuracy, hit rate, memory and time tables per setting; tasks the full cache fails are listed
    and left out of the averages. ``options`` (or its fields as keywords: ``title``, ``command``,
    ``plot``, ``paired_only``, ``compare``) are described in :class:`ReportOptions`."""
    if options is not None and fields:
        raise TypeError("pass ReportOptions or its fields as keywords, not both")
    options = options or ReportOptions(**fields)
    full_acc = valid_tasks(records)
    failing = {t for t, acc in full_acc.items() if acc < FULL_CACHE_FLOOR}
    used = [r for r in records if r.task not in failing]
    if options.paired_only:
        used = paired(used)
    grid = _Grid.of(used)
    out = _header(records, full_acc, failing, options)
    out += _summary_section(grid)
    out += comparison_section(used, options.compare, grid.settings, grid.budgets)
    out += failure_section(used, grid.methods, grid.budgets)
    hit = aggregate(used, "hit_rate")
    for setting in grid.settings:
        out += _setting_section(grid, hit, setting)
    out += _memory_section(grid)
    return "\n".join(out) + "\n"


def _header(
    records: list[Record], full_acc: dict[str, float], failing: set[str], options: ReportOptions
) -> list[str]:
    """Title, how to reproduce, what was measured, and the full cache's accuracy per task."""
    out = [
        f"# {options.title}",
        "",
        f"Generated {datetime.date.today().isoformat()} by `judgeq eval report`.",
    ]
    if options.command:
        out += ["", "Reproduce with:", "", "```bash", options.command.strip(), "```"]
    models = sorted({r.model for r in records if r.model})
    adapters = sorted({r.adapter for r in records if r.adapter})
    tasks = sorted({r.task for r in records})
    prompts = sorted({(r.task, r.index) for r in records})
    tokens = [r.prompt_tokens for r in records if r.setting == "query-aware" and r.method == "full"]
    out += [
        "",
        f"Model: {', '.join(models) or '?'}; Judge Q adapter: {', '.join(adapters) or 'n/a'}; "
        f"tasks: {', '.join(tasks)}; {len(prompts)} samples; "
        f"compressed prompt ~{round(mean_or_nan(tokens)) if tokens else '?'} tokens (query-aware).",
        "",
        "Full-cache accuracy per task (tasks below "
        f"{FULL_CACHE_FLOOR:.0%} measure nothing on this model and are excluded from the tables): "
        + ", ".join(
            f"{t} {acc:.0%}" + (" (excluded)" if t in failing else "") for t, acc in sorted(full_acc.items())
        ),
    ]
    if options.paired_only:
        out += ["", "Paired: every method is scored on the same prompts (those all methods answered)."]
    if options.plot:
        out += ["", f"![accuracy vs kept fraction]({options.plot.split('/')[-1]})"]
    return out


def _summary_section(grid: _Grid) -> list[str]:
    """Lines of the method x setting accuracy table (nothing when there is a single setting)."""
    if len(grid.settings) < 2:
        return []
    acc, budgets = grid.acc, grid.budgets
    rows = [
        [m]
        + [
            accuracy_cell([acc[(s, m, b)][0] if (s, m, b) in acc else None for b in cell_budgets(m, budgets)])
            for s in grid.settings
        ]
        for m in grid.methods
    ]
    counts = ", ".join(
        f"{s} {acc[(s, 'full', 'full')][1]}" for s in grid.settings if (s, "full", "full") in acc
    )
    return [
        "",
        "## Summary",
        "",
        f"Accuracy (%) at {' / '.join(budgets)} kept, all tasks together (prompts per setting: {counts}):",
        "",
        format_table(["method", *grid.settings], rows),
    ]


def _setting_section(
    grid: _Grid, hit: dict[tuple[str, str, str], tuple[float, int]], setting: str
) -> list[str]:
    """Lines of one setting: accuracy by budget, by task, and the critical-KV hit rate."""
    out = ["", f"## {setting}", "", "Accuracy (%, samples in brackets) by kept budget:", ""]
    rows = []
    for m in grid.methods:
        cells = []
        for b in cell_budgets(m, grid.budgets):
            value = grid.acc.get((setting, m, b))
            cells.append("" if value is None else f"{100 * value[0]:.0f} ({value[1]})")
        if m == "full":
            cells = cells * len(grid.budgets)
        if any(cells):
            rows.append([m, *cells])
    out.append(format_table(["method", *grid.budgets], rows))
    out += by_task_table(grid.records, setting, grid.methods, grid.budgets)
    hit_rows = [
        [m, *(f"{100 * hit[(setting, m, b)][0]:.1f}" if (setting, m, b) in hit else "" for b in grid.budgets)]
        for m in grid.methods
        if any((setting, m, b) in hit for b in grid.budgets)
    ]
    if hit_rows:
        out += [
            "",
            "Critical-KV hit rate vs the oracle (%):",
            "",
            format_table(["method", *grid.budgets], hit_rows),
        ]
    return out


def _memory_section(grid: _Grid) -> list[str]:
    """Lines of the KV memory and seconds-per-answer table, averaged over settings."""
    mib = aggregate(grid.records, "kv_bytes")
    sec = aggregate(grid.records, "seconds")
    rows = []
    for m in grid.methods:
        for b in cell_budgets(m, grid.budgets):
            keys = [(s, m, b) for s in grid.settings if (s, m, b) in mib]
            if keys:
                rows.append(
                    [
                        m,
                        b,
                        f"{mean_or_nan([mib[k][0] for k in keys]) / 2**20:.1f}",
                        f"{mean_or_nan([sec[k][0] for k in keys]):.1f}",
                    ]
                )
    return [
        "",
        "## Memory and time",
        "",
        "KV cache after compression (MiB) and seconds per answer (prefill + compression + decoding; "
        "our methods share one prefill per prompt, counted in each, and decode the copies of one budget "
        "as one batch, its time split evenly), averaged over settings:",
        "",
        format_table(["method", "budget", "KV MiB", "s/answer"], rows),
    ]
