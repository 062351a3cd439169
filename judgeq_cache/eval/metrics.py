"""Answer scoring: RULER's string match and LongBench's official metrics (compact re-implementations).

Every metric maps ``(prediction, references)`` to a score in ``[0, 1]``.
"""

from __future__ import annotations

import difflib
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

__all__ = [
    "METRICS",
    "classification_score",
    "code_sim_score",
    "count_score",
    "qa_f1_score",
    "retrieval_score",
    "rouge_l_score",
    "score",
    "string_match_all",
    "string_match_part",
]


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """RULER: fraction of references found (case-insensitive substring) in the prediction."""
    pred = prediction.lower()
    return sum(ref.lower() in pred for ref in references) / max(1, len(references))


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """RULER (QA tasks): 1 if any reference occurs in the prediction."""
    pred = prediction.lower()
    return float(any(ref.lower() in pred for ref in references))


def normalize_answer(text: str) -> str:
    """SQuAD/LongBench normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(pred_tokens: list[str], ref_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(ref_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1_score(prediction: str, references: Sequence[str]) -> float:
    """LongBench ``qa_f1_score``: best token F1 over references after :func:`normalize_answer`."""
    pred = normalize_answer(prediction).split()
    return max((_f1(pred, normalize_answer(r).split()) for r in references), default=0.0)


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_score(prediction: str, references: Sequence[str]) -> float:
    """ROUGE-L F-measure on lower-cased word tokens (LongBench uses the ``rouge`` package's rouge-l f)."""
    best = 0.0
    pred = prediction.lower().split()
    for ref in references:
        ref_tokens = ref.lower().split()
        lcs = _lcs(pred, ref_tokens)
        if lcs == 0:
            continue
        p, r = lcs / len(pred), lcs / len(ref_tokens)
        best = max(best, 2 * p * r / (p + r))
    return best


def classification_score(
    prediction: str, references: Sequence[str], all_classes: Sequence[str] = ()
) -> float:
    """LongBench: 1 if the reference class is among the class names in the prediction (split credit
    when other, non-overlapping classes are named too)."""
    matched = [c for c in all_classes if c in prediction]
    for a in list(matched):
        if any(a != b and a in b for b in matched):
            matched.remove(a)
    best = 0.0
    for ref in references:
        if ref in matched:
            best = max(best, 1.0 / len(matched))
    return best


def retrieval_score(prediction: str, references: Sequence[str]) -> float:
    """LongBench ``passage_retrieval_en``: fraction of the numbers in the prediction that name the
    right paragraph."""
    best = 0.0
    for ref in references:
        target = re.findall(r"Paragraph (\d+)", ref)
        numbers = re.findall(r"\d+", prediction)
        if target and numbers:
            best = max(best, sum(n == target[0] for n in numbers) / len(numbers))
    return best


def count_score(prediction: str, references: Sequence[str]) -> float:
    """LongBench ``passage_count``: fraction of the numbers in the prediction equal to the count."""
    numbers = re.findall(r"\d+", prediction)
    if not numbers:
        return 0.0
    return max(sum(n == str(ref) for n in numbers) / len(numbers) for ref in references)


def code_sim_score(prediction: str, references: Sequence[str]) -> float:
    """LongBench code completion: similarity of the first code-looking line (LongBench uses
    fuzzywuzzy's ratio; difflib's ratio is the same Ratcliff/Obershelp measure)."""
    line = ""
    for candidate in prediction.lstrip("\n").split("\n"):
        if "`" not in candidate and "#" not in candidate and "//" not in candidate:
            line = candidate
            break
    return max(
        (difflib.SequenceMatcher(None, line, ref).ratio() for ref in references),
        default=0.0,
    )


METRICS: dict[str, Callable[..., float]] = {
    "string_match_all": string_match_all,
    "string_match_part": string_match_part,
    "qa_f1": qa_f1_score,
    "rouge_l": rouge_l_score,
    "classification": classification_score,
    "retrieval": retrieval_score,
    "count": count_score,
    "code_sim": code_sim_score,
}


def score(metric: str, prediction: str, references: Sequence[str], **kwargs) -> float:
    """Score ``prediction`` with the metric named ``metric``."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {sorted(METRICS)}")
    return float(METRICS[metric](prediction, references, **kwargs))
