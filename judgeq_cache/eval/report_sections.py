"""The smaller tables of a report (by task, paired comparisons, failure modes) and the table helpers
:mod:`.report` builds its sections with."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence

from .failures import FAILURE_MODES, NEEDLE_TASKS, failure_modes
from .records import Record, method_label
from .stats import paired_difference

logger = logging.getLogger(__name__)

__all__ = [
    "accuracy_cell",
    "budget_order",
    "by_task_table",
    "cell_budgets",
    "comparison_section",
    "failure_section",
    "format_table",
    "mean_or_nan",
]


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


def mean_or_nan(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def cell_budgets(method: str, budgets: list[str]) -> list[str]:
    """The budgets a method has rows for (the full cache has one)."""
    return ["full"] if method == "full" else budgets


def accuracy_cell(means: list[float | None]) -> str:
    """``"50 / 25 / 10"``: accuracies in percent, ``–`` where nothing was measured."""
    return " / ".join("–" if v is None else f"{100 * v:.0f}" for v in means)


def by_task_table(records: list[Record], setting: str, methods: list[str], budgets: list[str]) -> list[str]:
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
            accuracy_cell(
                [
                    mean_or_nan(groups[(m, t, b)]) if (m, t, b) in groups else None
                    for b in cell_budgets(m, budgets)
                ]
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


def comparison_section(
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


def failure_section(records: list[Record], methods: list[str], budgets: list[str]) -> list[str]:
    """Lines of the right / garbled / lost table for the single-answer needle tasks."""
    modes = failure_modes(records)
    rows = []
    for m in methods:
        cells = []
        for b in cell_budgets(m, budgets):
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
