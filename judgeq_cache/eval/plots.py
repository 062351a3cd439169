"""Accuracy vs kept fraction: one panel per setting, one line per method."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .methods import method_order
from .records import Record, method_label
from .report import FULL_CACHE_FLOOR, paired, valid_tasks

__all__ = ["plot_accuracy"]

#: Judge Q's own lines stand out; every other method takes the next palette colour.
_JUDGEQ_STYLES = {
    "judgeq": dict(lw=2.5, color="tab:red"),
    "judgeq-shared": dict(lw=2.5, color="darkred"),
    "judgeq-untrained": dict(lw=1.5, color="salmon"),
    "judgeq-untrained-shared": dict(lw=1.5, color="salmon"),
}


def plot_accuracy(
    records: list[Record], path: str, title: str = "", exclude_failing: bool = True, paired_only: bool = False
) -> str:
    """Write the figure to ``path`` (PNG) and return ``path``. The full cache is a dashed line;
    tasks the full cache fails are left out (as in the report) unless ``exclude_failing=False``."""
    # A bare Figure draws without pyplot, so the caller's backend (e.g. a notebook's) is left alone.
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullFormatter, PercentFormatter

    failing = (
        {t for t, a in valid_tasks(records).items() if a < FULL_CACHE_FLOOR} if exclude_failing else set()
    )
    records = [r for r in records if r.task not in failing]
    if paired_only:
        records = paired(records)
    settings = [
        s for s in ("query-aware", "query-agnostic", "question-first") if any(r.setting == s for r in records)
    ]
    fig = Figure(figsize=(5 * max(1, len(settings)), 4))
    axes = fig.subplots(1, max(1, len(settings)), sharey=True, squeeze=False)
    methods = method_order({method_label(r) for r in records})
    # tab20 without its reds (red is Judge Q's)
    palette = [c for j, c in enumerate(colormaps["tab20"].colors) if j not in (6, 7)]
    for ax, setting in zip(axes[0], settings):
        ticks: set[float] = set()
        points: dict[tuple[str, str], list[Record]] = defaultdict(list)
        for r in records:
            if r.setting == setting:
                points[(method_label(r), r.budget)].append(r)
        for i, m in enumerate(methods):
            if m == "full":
                rs = points.get(("full", "full"), [])
                if rs:
                    ax.axhline(
                        100 * sum(r.score for r in rs) / len(rs), color="black", ls="--", label="full cache"
                    )
                continue
            xs = []
            for (method, _), rs in points.items():
                if method == m:
                    xs.append(
                        (sum(r.kept_fraction for r in rs) / len(rs), 100 * sum(r.score for r in rs) / len(rs))
                    )
            if xs:
                xs.sort()
                style = _JUDGEQ_STYLES.get(m, dict(lw=1.2, color=palette[i % len(palette)]))
                ls = ":" if m.startswith("kvpress-") else "--" if m.endswith("-shared") else "-"
                ax.plot([x for x, _ in xs], [y for _, y in xs], marker="o", ls=ls, label=m, **style)
                ticks.update(round(x, 2) for x, _ in xs)
        ax.set_title(setting)
        ax.set_xlabel("kept fraction of the prompt KV")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    if axes[0][-1].get_legend_handles_labels()[0]:
        axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
