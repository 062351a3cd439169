"""Paired comparison of two methods: accuracy difference on the same prompts, with a bootstrap
confidence interval and how many prompts each scored higher on (McNemar's counts for 0/1 scores)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .records import Record, method_label

__all__ = ["MetricAgreement", "PairedDifference", "metric_agreement", "paired_difference", "parse_pairs"]


@dataclass(frozen=True)
class PairedDifference:
    """``a`` minus ``b`` on the ``n`` prompts both answered at one setting and budget.

    Attributes
    ----------
    diff : float
        Accuracy of ``a`` minus accuracy of ``b`` (fraction, -1..1).
    low, high : float
        Percentile bootstrap interval of ``diff`` (prompts resampled with replacement).
    a_only, b_only : int
        Prompts where ``a`` (``b``) scored higher; with 0/1 scores, the prompts only it answered.
        The rest are ties.
    n : int
        Prompts both methods answered.
    """

    diff: float
    low: float
    high: float
    a_only: int
    b_only: int
    n: int


def paired_difference(
    records: Iterable[Record],
    a: str,
    b: str,
    setting: str,
    budget: str,
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> PairedDifference | None:
    """Compare methods ``a`` and ``b`` (report labels, e.g. ``judgeq`` or ``kvpress-tova``) on the
    prompts (task, sample) both answered at ``setting`` and ``budget``; the full cache is matched at
    any budget. ``None`` when they share no prompt. Deterministic for a given ``seed``."""
    scores: dict[str, dict[tuple[str, int], float]] = {a: {}, b: {}}
    for r in records:
        label = method_label(r)
        if label in scores and r.setting == setting and (r.budget == budget or label == "full"):
            scores[label][(r.task, r.index)] = r.score
    prompts = sorted(scores[a].keys() & scores[b].keys())
    if not prompts:
        return None
    delta = np.array([scores[a][p] - scores[b][p] for p in prompts], dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = delta[rng.integers(0, len(delta), size=(resamples, len(delta)))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    return PairedDifference(
        diff=float(delta.mean()),
        low=float(np.percentile(means, tail)),
        high=float(np.percentile(means, 100 - tail)),
        a_only=int((delta > 0).sum()),
        b_only=int((delta < 0).sum()),
        n=len(delta),
    )


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``"judgeq:snapkv,judgeq:kvpress-tova"`` -> ``[("judgeq", "snapkv"), ...]``."""
    pairs = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        a, sep, b = item.partition(":")
        if not sep or not a.strip() or not b.strip():
            raise ValueError(f"--compare expects method pairs like 'judgeq:snapkv', got {item!r}")
        pairs.append((a.strip(), b.strip()))
    return pairs


@dataclass(frozen=True)
class MetricAgreement:
    """How well a kept-set metric (``hit_rate``, ``needle_recall``) tells right answers from wrong ones.

    Attributes
    ----------
    correlation : float
        Pearson correlation of the metric with the answer score (point-biserial for 0/1 scores).
    auc : float
        Probability that a right answer's metric exceeds a wrong answer's (ties count half; 0.5 = no
        information, 1 = perfect separation).
    n : int
        Compressed answers that have the metric.
    """

    correlation: float
    auc: float
    n: int


def metric_agreement(records: Iterable[Record], field: str) -> MetricAgreement | None:
    """:class:`MetricAgreement` of ``field`` (a record attribute or a key of ``record.extra``) over
    the compressed answers (not the full cache) that carry it; ``None`` with fewer than two of each
    of right and wrong answers."""
    pairs = []
    for r in records:
        value = getattr(r, field, None)
        if value is None:
            value = (r.extra or {}).get(field)
        if value is not None and r.budget != "full":
            pairs.append((float(value), float(r.score)))
    if not pairs:
        return None
    values, scores = np.array(pairs).T
    right, wrong = values[scores >= 1], values[scores < 1]
    if len(right) < 2 or len(wrong) < 2:
        return None
    greater = (right[:, None] > wrong[None, :]).mean() + 0.5 * (right[:, None] == wrong[None, :]).mean()
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant metric has no correlation (nan)
        correlation = float(np.corrcoef(values, scores)[0, 1])
    return MetricAgreement(correlation, float(greater), len(values))
