"""Markdown tables from result records (ours and kvpress's merged)."""

from __future__ import annotations

import datetime
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence

from .failures import FAILURE_MODES, NEEDLE_TASKS, failure_modes
from .methods import method_order
from .records import Record, method_label
from .stats import paired_difference

logger = logging.getLogger(__name__)

__all__ = ["aggregate", "budget_order", "format_table", "markdown_report", "valid_tasks"]

#: A task whose full-cache accuracy is below this measures nothing on the evaluated model.
FULL_CACHE_FLOOR = 0.5


def format_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table (cells converted with ``str``)."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def budget_order(label: str) -> tuple[int, float]:
    """Sort key: ``full`` first, then kept fractions from large to small, then absolute budgets."""
    if label == "full":
        return (0, 0.0)
    if label.endswith("%"):
        return (1, -float(label[:-1]))
    return (2, -float(label))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def valid_tasks(records: Iterable[Record], floor: float = FULL_CACHE_FLOOR) -> dict[str, float]:
    """``{task: full-cache accuracy}`` over all settings (tasks without full-cache rows are kept)."""
    scores: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.method == "full":
            scores[r.task].append(r.score)
    return {task: _mean(v) for task, v in scores.items()}


def aggregate(
    records: Iterable[Record], field: str = "score"
) -> dict[tuple[str, str, str], tuple[float, int]]:
    """``{(setting, method, budget): (mean of field, count)}`` (None values skipped)."""
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in records:
        value = getattr(r, field)
        if value is not None:
            groups[(r.setting, method_label(r), r.budget)].append(float(value))
    return {k: (_mean(v), len(v)) for k, v in groups.items()}


def paired(records: list[Record]) -> list[Record]:
    """Only the prompts (task, sample, setting) that every reported method and budget answered, so
    all methods of a setting are compared on the same samples."""
    cells: dict[str, set[tuple[str, str]]] = defaultdict(set)
    have: dict[tuple[str, int, str], set[tuple[str, str]]] = defaultdict(set)
    for r in records:
        cells[r.setting].add((method_label(r), r.budget))
        have[(r.task, r.index, r.setting)].add((method_label(r), r.budget))
    return [r for r in records if have[(r.task, r.index, r.setting)] >= cells[r.setting]]


def _cell_budgets(method: str, budgets: list[str]) -> list[str]:
    """The budgets a method has rows for (the full cache has one)."""
    return ["full"] if method == "full" else budgets


def _accuracy_cell(means: list[float | None]) -> str:
    """``"50 / 25 / 10"``: accuracies in percent, ``–`` where nothing was measured."""
    return " / ".join("–" if v is None else f"{100 * v:.0f}" for v in means)


def _by_task_table(records: list[Record], setting: str, methods: list[str], budgets: list[str]) -> list[str]:
    """Lines of a method x task accuracy table for ``setting`` (nothing when it has a single task)."""
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in records:
        if r.setting == setting:
            groups[(method_label(r), r.task, r.budget)].append(r.score)
    tasks = sorted({task for _, task, _ in groups})
    if len(tasks) < 2:
        return []
    rows = []
    for m in methods:
        cells = [
            _accuracy_cell(
                [_mean(groups[(m, t, b)]) if (m, t, b) in groups else None for b in _cell_budgets(m, budgets)]
            )
            for t in tasks
        ]
        if any(c.strip("– /") for c in cells):
            rows.append([m, *cells])
    return [
        "",
        f"By task (accuracy % at {' / '.join(budgets)} kept; the full cache has one value):",
        "",
        format_table(["method", *tasks], rows),
    ]


def _points(fraction: float) -> str:
    """``0.104`` -> ``"+10"`` (never ``"-0"``)."""
    return f"{round(100 * fraction):+d}"


def _comparison_section(
    records: list[Record], pairs: Sequence[tuple[str, str]], settings: list[str], budgets: list[str]
) -> list[str]:
    """Lines of the paired-difference table: ``a`` minus ``b`` per setting and budget, 95 % CI."""
    rows = []
    for a, b in pairs:
        before = len(rows)
        for setting in settings:
            for budget in budgets:
                d = paired_difference(records, a, b, setting, budget)
                if d is not None:
                    rows.append(
                        [
                            f"{a} − {b}",
                            setting,
                            budget,
                            _points(d.diff),
                            f"[{_points(d.low)}, {_points(d.high)}]",
                            f"{d.a_only} / {d.b_only}",
                            d.n,
                        ]
                    )
        if len(rows) == before:
            known = sorted({method_label(r) for r in records})
            logger.warning(
                "--compare %s:%s: no prompt answered by both (methods: %s)", a, b, ", ".join(known)
            )
    if not rows:
        return []
    return [
        "",
        "## Paired comparisons",
        "",
        "Accuracy difference in points on the prompts both methods answered, with a 95 % bootstrap "
        "interval over prompts; an interval that contains 0 is not a measured difference. "
        "'a / b better': prompts where a (b) scored higher; the rest are ties.",
        "",
        format_table(["a − b", "setting", "kept", "difference", "95 % CI", "a / b better", "prompts"], rows),
    ]


def _failure_section(records: list[Record], methods: list[str], budgets: list[str]) -> list[str]:
    """Lines of the right / garbled / lost table for the single-answer needle tasks."""
    modes = failure_modes(records)
    rows = []
    for m in methods:
        cells = []
        for b in _cell_budgets(m, budgets):
            counts = modes.get((m, b))
            total = sum(counts.values()) if counts else 0
            cells.append(" / ".join(f"{100 * counts[k] / total:.0f}" for k in FAILURE_MODES) if total else "")
        if any(cells):
            rows.append([m, *(cells * len(budgets) if m == "full" else cells)])
    if not rows:
        return []
    return [
        "",
        f"## Failure modes ({', '.join(NEEDLE_TASKS)})",
        "",
        "Share of answers (%, all settings) that are right / garbled (the answer starts with the needle's "
        "leading digits, then drops or repeats some: the needle was found, copied wrong) / lost (the "
        "needle's number is not there), per kept budget:",
        "",
        format_table(["method", *budgets], rows),
    ]


def markdown_report(
    records: list[Record],
    *,
    title: str = "Results",
    command: str = "",
    plot: str | None = None,
    paired_only: bool = False,
    compare: Sequence[tuple[str, str]] = (),
) -> str:
    """Accuracy, hit rate, memory and time tables per setting; tasks the full cache fails are listed
    and left out of the averages. ``paired_only`` keeps only prompts every method answered;
    ``compare`` adds a paired-difference table (with confidence intervals) for each ``(a, b)``."""
    full_acc = valid_tasks(records)
    failing = {t for t, acc in full_acc.items() if acc < FULL_CACHE_FLOOR}
    used = [r for r in records if r.task not in failing]
    if paired_only:
        used = paired(used)
    out = [f"# {title}", "", f"Generated {datetime.date.today().isoformat()} by `judgeq eval report`."]
    if command:
        out += ["", "Reproduce with:", "", "```bash", command.strip(), "```"]
    models = sorted({r.model for r in records if r.model})
    adapters = sorted({r.adapter for r in records if r.adapter})
    tasks = sorted({r.task for r in records})
    prompts = sorted({(r.task, r.index) for r in records})
    tokens = [r.prompt_tokens for r in records if r.setting == "query-aware" and r.method == "full"]
    out += [
        "",
        f"Model: {', '.join(models) or '?'}; Judge Q adapter: {', '.join(adapters) or 'n/a'}; "
        f"tasks: {', '.join(tasks)}; {len(prompts)} samples; "
        f"compressed prompt ~{round(_mean(tokens)) if tokens else '?'} tokens (query-aware).",
        "",
        "Full-cache accuracy per task (tasks below "
        f"{FULL_CACHE_FLOOR:.0%} measure nothing on this model and are excluded from the tables): "
        + ", ".join(
            f"{t} {acc:.0%}" + (" (excluded)" if t in failing else "") for t, acc in sorted(full_acc.items())
        ),
    ]
    if paired_only:
        out += ["", "Paired: every method is scored on the same prompts (those all methods answered)."]
    if plot:
        out += ["", f"![accuracy vs kept fraction]({plot.split('/')[-1]})"]
    acc = aggregate(used)
    hit = aggregate(used, "hit_rate")
    settings = [s for s in ("query-aware", "query-agnostic", "question-first") if any(k[0] == s for k in acc)]
    budgets = sorted({k[2] for k in acc if k[2] != "full"}, key=budget_order)
    methods = method_order({k[1] for k in acc})
    if len(settings) > 1:
        rows = [
            [m]
            + [
                _accuracy_cell(
                    [acc[(s, m, b)][0] if (s, m, b) in acc else None for b in _cell_budgets(m, budgets)]
                )
                for s in settings
            ]
            for m in methods
        ]
        counts = ", ".join(
            f"{s} {acc[(s, 'full', 'full')][1]}" for s in settings if (s, "full", "full") in acc
        )
        out += [
            "",
            "## Summary",
            "",
            f"Accuracy (%) at {' / '.join(budgets)} kept, all tasks together (prompts per setting: {counts}):",
            "",
            format_table(["method", *settings], rows),
        ]
    out += _comparison_section(used, compare, settings, budgets)
    out += _failure_section(used, methods, budgets)
    for setting in settings:
        out += ["", f"## {setting}", "", "Accuracy (%, samples in brackets) by kept budget:", ""]
        rows = []
        for m in methods:
            cells = []
            for b in _cell_budgets(m, budgets):
                value = acc.get((setting, m, b))
                cells.append("" if value is None else f"{100 * value[0]:.0f} ({value[1]})")
            if m == "full":
                cells = cells * len(budgets)
            if any(cells):
                rows.append([m, *cells])
        out.append(format_table(["method", *budgets], rows))
        out += _by_task_table(used, setting, methods, budgets)
        hit_rows = [
            [m, *(f"{100 * hit[(setting, m, b)][0]:.1f}" if (setting, m, b) in hit else "" for b in budgets)]
            for m in methods
            if any((setting, m, b) in hit for b in budgets)
        ]
        if hit_rows:
            out += [
                "",
                "Critical-KV hit rate vs the oracle (%):",
                "",
                format_table(["method", *budgets], hit_rows),
            ]
    mib = aggregate(used, "kv_bytes")
    sec = aggregate(used, "seconds")
    rows = []
    for m in methods:
        for b in _cell_budgets(m, budgets):
            keys = [(s, m, b) for s in settings if (s, m, b) in mib]
            if keys:
                rows.append(
                    [
                        m,
                        b,
                        f"{_mean([mib[k][0] for k in keys]) / 2**20:.1f}",
                        f"{_mean([sec[k][0] for k in keys]):.1f}",
                    ]
                )
    out += [
        "",
        "## Memory and time",
        "",
        "KV cache after compression (MiB) and seconds per answer (prefill + compression + decoding; "
        "our methods share one prefill per prompt, counted in each, and decode the copies of one budget "
        "as one batch, its time split evenly), averaged over settings:",
        "",
        format_table(["method", "budget", "KV MiB", "s/answer"], rows),
    ]
    return "\n".join(out) + "\n"
