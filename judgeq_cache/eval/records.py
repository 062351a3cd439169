"""Result records: one JSON line per sample x method x budget x setting, shared by both runners."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..cache.budget import Budget

__all__ = [
    "Record",
    "append_record",
    "budget_label",
    "method_label",
    "parse_budget",
    "read_records",
    "record_key",
]


@dataclass
class Record:
    """One evaluated answer.

    ``budget`` is the label (``"25%"``, ``"256"`` or ``"full"``); ``kept_fraction`` the measured
    mean fraction of the compressed prompt's entries kept; ``seconds`` covers prefill, compression
    and decoding of this answer (prefill is shared by our methods and counted in each);
    ``hit_rate`` is the critical-KV hit rate against the oracle (None where not measurable).
    """

    task: str
    index: int
    setting: str
    method: str
    budget: str
    source: str
    answer: str
    references: list[str]
    score: float
    kept_fraction: float
    kv_bytes: int
    seconds: float
    prompt_tokens: int
    hit_rate: float | None = None
    model: str = ""
    adapter: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, int, str, str, str]:
        return record_key(self.task, self.index, self.setting, method_label(self), self.budget)


def record_key(
    task: str, index: int, setting: str, method: str, budget: str
) -> tuple[str, int, str, str, str]:
    """The identity of a result line (what ``--resume`` skips)."""
    return (task, int(index), setting, method, budget)


def method_label(record: Record) -> str:
    """The name a record is reported (and resumed) under: ``judgeq`` rows made with an untrained
    adapter are ``judgeq-untrained`` (so they never mix with a trained adapter's rows)."""
    return label_for(record.method, record.adapter)


def label_for(method: str, adapter: str) -> str:
    """See :func:`method_label`."""
    if method.startswith("judgeq") and adapter.startswith("untrained"):
        return method.replace("judgeq", "judgeq-untrained", 1)
    return method


def parse_budget(text: str | int | float) -> int | float:
    """``"0.25"`` / ``"25%"`` -> 0.25 (kept fraction); ``"256"`` -> 256 (entries per head).

    Integers mean entries per KV head and must be >= 1; decimals and percentages are kept fractions
    and must lie in (0, 1) (``"2.0"`` and ``"100%"`` are errors, as ``Budget`` rejects them too).
    """
    if isinstance(text, bool):
        raise ValueError(f"budget {text!r}: use a kept fraction in (0, 1) or an entry count >= 1")
    if isinstance(text, int):
        value: int | float = text
    elif isinstance(text, float):
        value = text
    else:
        raw = str(text).strip()
        try:
            value = float(raw[:-1]) / 100 if raw.endswith("%") else _number(raw)
        except ValueError:
            raise ValueError(
                f"budget {text!r} is not a number: use a kept fraction in (0, 1) (0.25 or 25%) "
                "or an entry count >= 1 (256)"
            ) from None
    if isinstance(value, int) and value < 1:
        raise ValueError(f"budget {text!r}: an entry count must be >= 1")
    if isinstance(value, float) and not 0 < value < 1:
        raise ValueError(
            f"budget {text!r}: a decimal budget is a kept fraction and must lie in (0, 1); "
            "write an entry count without a decimal point (e.g. 256)"
        )
    return value


def _number(text: str) -> int | float:
    """``"256"`` -> 256, ``"0.25"`` -> 0.25 (``"2.0"`` stays a float)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def budget_label(budget: int | float) -> str:
    """``0.25`` -> ``"25%"``, ``256`` -> ``"256"`` (:class:`~judgeq_cache.cache.budget.Budget`'s label)."""
    return str(Budget.parse(budget))


def read_records(*paths: str | os.PathLike) -> list[Record]:
    """All records in the JSONL files ``paths`` (``.jsonl.gz`` too; missing files are skipped; later
    duplicates win)."""
    by_key: dict[tuple, Record] = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        for line in text.splitlines():
            if line.strip():
                record = Record(**json.loads(line))
                by_key[record.key] = record
    return list(by_key.values())


def append_record(path: str | os.PathLike, record: Record) -> None:
    """Append one line (flushed, so an interrupted run can ``--resume``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(asdict(record)) + "\n")
