"""Span-aware selection: keep whole spans around the best-scored positions.

At small budgets a top-k over token scores often keeps part of what the model needs: a 7-digit number
is 7 tokens, and when the budget runs out inside it, the answer is copied garbled. With
``span_tokens = r`` (a :class:`~judgeq_cache.scorers.Scorer` option, 0 = off), half of each head's
budget goes to whole spans: the ``budget // (2 * (2r + 1))`` best positions (after the scorer's
pooling) are taken as anchors, and every position within ``r`` of an anchor ranks above all others;
the rest of the budget is filled by score as usual. Protected entries (sinks, recent) still come first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.reference import pool_scores


def span_scores(
    scores: torch.Tensor,
    key_mask: torch.Tensor,
    budget: int,
    span_tokens: int,
    pooling_kernel: int = 1,
    pooling: str = "max",
) -> torch.Tensor:
    """``[B, H, N]`` scores, already pooled, in which the spans of radius ``span_tokens`` around the
    best anchors rank above every other position (pass them to the top-k without pooling again)."""
    pooled = pool_scores(scores.float().nan_to_num(0.0), pooling_kernel, pooling)
    width = 2 * span_tokens + 1
    anchors = budget // (2 * width)
    if span_tokens <= 0 or anchors < 1:
        return pooled
    real = pooled.masked_fill(~key_mask[:, None, :].bool(), float("-inf"))
    top = torch.sort(real, dim=-1, descending=True, stable=True).indices[..., :anchors]  # earliest on ties
    marked = torch.zeros_like(pooled).scatter_(-1, top, 1.0)
    bsz, heads, n = marked.shape
    spans = F.max_pool1d(marked.view(bsz * heads, 1, n), width, stride=1, padding=span_tokens).view(
        bsz, heads, n
    )
    # Ranks: every span position above every other one, by its own score within each group.
    bonus = pooled.abs().amax(dim=-1, keepdim=True) * 2 + 1
    return pooled + spans * bonus
