"""Speed and memory of eviction vs a plain cache, measured side by side (``judgeq bench``, whose
command line is :mod:`judgeq_cache.cli.bench`).

Reports ratios, not absolute times (this runs on shared CPUs too):

- scoring overhead = (prefill + scoring pass + eviction) / plain prefill, for Judge Q and SnapKV;
- Judge Q's compression time over the rest of the same prefill (``cache.compression_seconds``): the
  overhead measured inside one run, which run-to-run CPU drift does not blur;
- for both, the median with a bootstrap 95 % interval and the range over the runs;
- decode ms per token with ``kept`` of the prompt kept vs the full cache;
- KV bytes after eviction vs the full cache;
- peak RSS of a fresh process that prefills and decodes, evicted vs full (optional).

Runs alternate between kinds and the median of ``repeats`` is used, so drift hits every kind alike.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from ..adapter import JudgeQAdapter
from ..cache import EvictionCache, JudgeQCache
from ..utils import cache_kwarg, kv_bytes

logger = logging.getLogger(__name__)


@dataclass
class OverheadRow:
    """Ratios for one prompt length."""

    prompt_tokens: int
    judgeq_overhead: float
    snapkv_overhead: float
    decode_ms_full: float
    decode_ms_kept: float
    kv_bytes_ratio: float
    peak_rss_full_mib: float | None = None
    peak_rss_kept_mib: float | None = None
    #: Every alternating pair's Judge Q / full ratio, in run order (so runs can be pooled).
    judgeq_overhead_pairs: list[float] = field(default_factory=list)
    #: Per Judge Q run, its compression (soft-token pass, scoring, selection, gather) over the rest of
    #: the same prefill: the overhead measured within one run, free of run-to-run drift.
    judgeq_compress_share: list[float] = field(default_factory=list)
    #: Per pair, Judge Q's prefill without its compression over the plain prefill (the hooks' cost).
    judgeq_uncompressed_pairs: list[float] = field(default_factory=list)

    @property
    def decode_ratio(self) -> float:
        return self.decode_ms_kept / self.decode_ms_full


def make_cache(model: PreTrainedModel, kind: str, kept: float, adapter: JudgeQAdapter):
    """``"full"`` (plain DynamicCache), ``"judgeq"`` or any scorer name."""
    if kind == "full":
        return DynamicCache(config=model.config)
    if kind == "judgeq":
        return JudgeQCache(model, adapter, kept)
    return EvictionCache(model, kept, kind)


def _kw(model: PreTrainedModel, cache) -> dict:
    return {cache_kwarg(model): cache}


@torch.no_grad()
def prefill_seconds(model: PreTrainedModel, ids: torch.Tensor, cache) -> float:
    """Seconds of one prefill as ``generate`` runs it (``logits_to_keep=1``: the lm_head only on the
    last position), eviction included."""
    start = time.perf_counter()
    model(input_ids=ids, logits_to_keep=1, **_kw(model, cache))
    return time.perf_counter() - start


@torch.no_grad()
def decode_ms_per_token(model: PreTrainedModel, ids: torch.Tensor, cache, steps: int) -> float:
    token = model(input_ids=ids, **_kw(model, cache)).logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(steps):
        token = model(input_ids=token, **_kw(model, cache)).logits[:, -1:].argmax(-1)
    return 1e3 * (time.perf_counter() - start) / steps


def corpus_prompt(tokenizer, length: int, corpus: str = "moby_dick", offset: int = 0) -> torch.Tensor:
    """``[1, length]`` token ids of bundled book text: from the start of ``corpus``, or from its first
    paragraph at or after character ``offset``."""
    from ..data import load_corpus

    text = load_corpus(corpus)
    start = 0 if offset == 0 else text.find("\n\n", offset)
    if start < 0:
        raise ValueError(f"{corpus} has no paragraph after character {offset}")
    start += 0 if offset == 0 else 2
    ids = tokenizer(text[start : start + length * 6], return_tensors="pt").input_ids[:, :length]
    if ids.shape[1] < length:
        raise ValueError(f"{corpus} has fewer than {length} tokens after character {start}")
    return ids


def measure(
    model: PreTrainedModel,
    ids: torch.Tensor,
    adapter: JudgeQAdapter,
    kept: float = 0.1,
    repeats: int = 5,
    decode_steps: int = 32,
) -> OverheadRow:
    """Side-by-side ratios for one prompt."""
    prefill_seconds(model, ids, make_cache(model, "full", kept, adapter))  # warm-up
    times: dict[str, list[float]] = {"full": [], "judgeq": [], "snapkv": []}
    compress: list[float] = []
    for _ in range(repeats):
        for kind in times:
            cache = make_cache(model, kind, kept, adapter)
            times[kind].append(prefill_seconds(model, ids, cache))
            if kind == "judgeq":
                compress.append(cache.compression_seconds)
    med = {kind: statistics.median(t) for kind, t in times.items()}
    pairs = [j / f for j, f in zip(times["judgeq"], times["full"])]
    rest = [j - c for j, c in zip(times["judgeq"], compress)]
    decode: dict[str, list[float]] = {"full": [], "judgeq": []}
    for _ in range(max(1, repeats // 2)):
        for kind in decode:
            decode[kind].append(
                decode_ms_per_token(model, ids, make_cache(model, kind, kept, adapter), decode_steps)
            )
    full, evicted = make_cache(model, "full", kept, adapter), make_cache(model, "judgeq", kept, adapter)
    prefill_seconds(model, ids, full)
    prefill_seconds(model, ids, evicted)
    return OverheadRow(
        prompt_tokens=ids.shape[1],
        judgeq_overhead=statistics.median(pairs),
        judgeq_overhead_pairs=pairs,
        judgeq_compress_share=[c / r for c, r in zip(compress, rest)],
        judgeq_uncompressed_pairs=[r / f for r, f in zip(rest, times["full"])],
        snapkv_overhead=med["snapkv"] / med["full"],
        decode_ms_full=statistics.median(decode["full"]),
        decode_ms_kept=statistics.median(decode["judgeq"]),
        kv_bytes_ratio=kv_bytes(evicted) / kv_bytes(full),
    )


def markdown(rows: list[OverheadRow], kept: float) -> str:
    lines = [
        "| prompt tokens | Judge Q scoring overhead (median of pairs) | compression / rest of "
        "the same prefill (median) | SnapKV overhead | decode ms/token full | decode ms/token "
        f"{kept:.0%} kept | decode ratio | KV bytes ratio | peak RSS full / {kept:.0%} kept (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rss = "-" if r.peak_rss_full_mib is None else f"{r.peak_rss_full_mib:.0f} / {r.peak_rss_kept_mib:.0f}"
        lines.append(
            f"| {r.prompt_tokens} | {_spread(r.judgeq_overhead_pairs, '.3f')} | "
            f"{_spread(r.judgeq_compress_share, '.1%')} | {r.snapkv_overhead:.3f} | {r.decode_ms_full:.1f} | "
            f"{r.decode_ms_kept:.1f} | {r.decode_ratio:.2f} | {r.kv_bytes_ratio:.3f} | {rss} |"
        )
    return "\n".join(lines)


def median_interval(values: list[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of the median of ``values`` (deterministic for ``seed``)."""
    data = np.asarray(values, dtype=np.float64)
    draws = data[np.random.default_rng(seed).integers(0, len(data), size=(resamples, len(data)))]
    low, high = np.percentile(np.median(draws, axis=1), [2.5, 97.5])
    return float(low), float(high)


def _spread(values: list[float], fmt: str) -> str:
    """``median (95 % CI low-high; runs min-max)`` of per-run values."""
    low, high = median_interval(values)
    return (
        f"{format(statistics.median(values), fmt)} (CI {format(low, fmt)}–{format(high, fmt)}; "
        f"runs {format(min(values), fmt)}–{format(max(values), fmt)})"
    )
