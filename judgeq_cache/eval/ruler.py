"""RULER (Hsieh et al., 2024) loader: the JSONL files RULER's ``prepare.py`` writes.

Rows have ``index``, ``input`` (the whole prompt: instruction, context, then the question on the last
lines), ``outputs`` (references), ``length`` and, in recent versions, ``answer_prefix``. The question
is split off at the last paragraph break (``"\\n\\n"``, else the last newline) so the three settings
apply. Scoring is RULER's: ``string_match_part`` for ``qa_*`` tasks, ``string_match_all`` otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

from .tasks import Sample

__all__ = ["load_ruler", "ruler_sample"]

#: RULER generation lengths per task family (from RULER's synthetic.yaml).
_MAX_NEW = {"niah": 128, "vt": 30, "cwe": 120, "fwe": 50, "qa": 32}


def ruler_sample(task: str, row: dict, index: int) -> Sample:
    """One RULER row as a :class:`Sample`."""
    text = row["input"]
    cut = text.rstrip().rfind("\n\n")
    if cut < 0:
        cut = text.rstrip().rfind("\n")
    context, question = (text[:cut], text[cut:].strip()) if cut > 0 else (text, "")
    family = task.split("_")[0]
    return Sample(
        task=f"ruler:{task}",
        index=int(row.get("index", index)),
        context=context,
        question=question,
        answers=[str(a) for a in row["outputs"]],
        answer_prefix=row.get("answer_prefix", "") or "",
        metric="string_match_part" if family == "qa" else "string_match_all",
        max_new_tokens=_MAX_NEW.get(family, 64),
        meta={"length": row.get("length")},
    )


def load_ruler(
    task: str, *, data_dir: str | None = None, limit: int | None = None, hub_id: str | None = None
) -> list[Sample]:
    """RULER ``task`` (e.g. ``niah_single_1``) from ``<data_dir>/<task>.jsonl`` (or
    ``<data_dir>/<task>/validation.jsonl``, RULER's layout), or from a Hub dataset ``hub_id``
    (config = task, split ``validation``) through ``datasets``."""
    if data_dir is not None:
        root = Path(data_dir)
        path = root / f"{task}.jsonl"
        if not path.exists():
            path = root / task / "validation.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    elif hub_id is not None:
        import datasets

        rows = list(datasets.load_dataset(hub_id, task, split="validation"))
    else:
        raise ValueError(
            "RULER data is generated locally by RULER's prepare.py: pass data_dir (or a Hub hub_id)"
        )
    rows = rows[:limit] if limit else rows
    return [ruler_sample(task, row, i) for i, row in enumerate(rows)]
