"""Checks printed under docs/results.md: native TOVA vs kvpress's TOVAPress on the same prompts, and
which kept-set metric tracks answer accuracy (needle recall vs critical-KV hit rate).

    python scripts/results_checks.py docs/results_records/judgeq_v2.jsonl.gz docs/results_records/kvpress.jsonl.gz
"""

from __future__ import annotations

import sys
from collections import defaultdict

from judgeq_cache.eval.records import read_records
from judgeq_cache.eval.stats import metric_agreement


def main(paths: list[str]) -> None:
    records = [r for p in paths for r in read_records(p)]
    by_key = {(r.task, r.index, r.setting, r.budget, r.method): r for r in records}
    pairs = [(r, by_key.get((r.task, r.index, r.setting, r.budget, "kvpress-tova"))) for r in records]
    pairs = [(a, b) for a, b in pairs if a.method == "tova" and b is not None]
    same_score = sum(a.score == b.score for a, b in pairs)
    same_text = sum(a.answer == b.answer for a, b in pairs)
    print(
        f"tova vs kvpress-tova: {len(pairs)} paired answers, {same_score} equal scores, {same_text} equal strings"
    )
    ours = [r for r in records if not r.method.startswith("kvpress") and r.budget != "full"]
    groups = defaultdict(list)
    for r in ours:
        groups[r.method].append(r)
    print("| method | answers | needle recall: r / AUC | hit rate: r / AUC |")
    print("|---|---|---|---|")
    for method, rs in [("all", ours), *sorted(groups.items())]:
        cells = []
        for field in ("needle_recall", "hit_rate"):
            m = metric_agreement(rs, field)
            cells.append("-" if m is None else f"{m.correlation:.2f} / {m.auc:.2f}")
        print(f"| {method} | {len(rs)} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main(sys.argv[1:])
