"""The alignment loss and the held-out critical-KV hit rate (Judge Q vs SnapKV)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .. import kernels
from ..adapter import JudgeQAdapter
from ..cache import protected_mask
from ..hitrate import hit_rate
from ..scorers import Scorer, make_scorer
from .config import TrainConfig
from .data import Example, _prefill

logger = logging.getLogger(__name__)


def alignment_loss(
    pred: dict[int, torch.Tensor],
    target: dict[int, torch.Tensor],
    attention_mask: torch.Tensor,
    kind: str = "mse",
    ignore_first: int = 0,
) -> torch.Tensor:
    """Loss between soft-token and response attention over the prompt, mean over layers, rows, KV heads.

    ``"mse"``: mean over real prompt positions of ``(N * p - N * t) ** 2`` (probabilities are ~1/N; the
    ``N`` factor makes the loss O(1) whatever the prompt length). ``"kl"``: ``KL(t || p)`` after
    normalising both over the real positions. The first ``ignore_first`` real tokens (attention sinks,
    which take a large, uninformative share of both) and padding are left out.
    """
    if kind not in ("mse", "kl"):
        raise ValueError(f"loss must be 'mse' or 'kl', got {kind!r}")
    mask = attention_mask.bool().to(next(iter(pred.values())).device)
    real_index = mask.long().cumsum(-1) - 1
    valid = (mask & (real_index >= ignore_first)).float()[:, None, :]  # [B, 1, N]
    count = valid.sum(-1).clamp(min=1.0)  # [B, 1]
    losses = []
    for layer, t in target.items():
        p = pred[layer]
        t = t.to(p.device)
        if kind == "mse":
            n = count[..., None]
            err = ((p - t) * n) ** 2 * valid
            losses.append((err.sum(-1) / count).mean())
        else:
            eps = 1e-8
            pn = p * valid
            tn = t * valid
            pn = pn / pn.sum(-1, keepdim=True).clamp(min=eps)
            tn = tn / tn.sum(-1, keepdim=True).clamp(min=eps)
            kl = (tn * (torch.log(tn + eps) - torch.log(pn + eps))) * valid
            losses.append(kl.sum(-1).mean())
    return torch.stack(losses).mean()


# --------------------------------------------------------------------------- evaluation


def _kept(scorer: Scorer, scores: torch.Tensor, k: int) -> torch.Tensor:
    key_mask = torch.ones(scores.shape[0], scores.shape[-1], dtype=torch.bool, device=scores.device)
    sinks, recent = scorer.protected_counts(k)
    return kernels.select_indices(
        scores,
        k,
        key_mask=key_mask,
        protected=protected_mask(key_mask, sinks, recent),
        pooling_kernel=scorer.pooling_kernel,
        pooling=scorer.pooling,
    )


def _soft_attention(model, adapter, example: Example, grad: bool) -> tuple[dict[int, torch.Tensor], Any]:
    cache = example.cache
    if cache is None:
        device = model.get_input_embeddings().weight.device
        cache, _, _ = _prefill(
            model, adapter, example.input_ids.to(device), example.attention_mask.to(device)
        )
    if cache.adapter is not adapter:
        cache.scorer.adapter = adapter
    with torch.set_grad_enabled(grad):
        pred = cache.appended_attention(cache.scorer.appended_inputs(example.input_ids.shape[0], model))
    return pred, cache


def evaluate_hit_rates(
    model: nn.Module,
    adapter: JudgeQAdapter,
    examples: Sequence[Example],
    budgets: Iterable[float] = (0.1, 0.25),
    config: TrainConfig | None = None,
) -> dict[str, float]:
    """Held-out metrics: critical-KV hit rate of Judge Q and SnapKV at each kept fraction, and the loss.

    Both selections go through :func:`judgeq_cache.kernels.select_indices` with the pooling and
    protected tokens their scorer uses in the cache; SnapKV's scores are the last-32-window attention
    captured during the prefill (what ``EvictionCache(model, budget, "snapkv")`` computes). The oracle
    is the top-k of the response attention at the same k. Rows are scored on their real tokens only.
    """
    config = config or TrainConfig()
    judgeq = make_scorer("judgeq", adapter=adapter)
    snapkv = make_scorer("snapkv")
    rates: dict[str, list[float]] = {}
    losses = []
    for example in examples:
        if example.window is None:
            raise ValueError("held-out examples need the SnapKV window: prepare them with window_size=32")
        pred, _ = _soft_attention(model, adapter, example, grad=False)
        losses.append(
            float(
                alignment_loss(pred, example.target, example.attention_mask, config.loss, config.ignore_first)
            )
        )
        for b, n in enumerate(example.lengths):
            for budget in budgets:
                k = max(1, min(n, round(budget * n)))
                critical = {
                    layer: kernels.select_indices(t[b : b + 1, :, -n:].float(), k)
                    for layer, t in example.target.items()
                }
                for name, scorer, scores in (("judgeq", judgeq, pred), ("snapkv", snapkv, example.window)):
                    kept = {
                        layer: _kept(scorer, scores[layer][b : b + 1, :, -n:].float(), k)
                        for layer in critical
                    }
                    rates.setdefault(f"hit_rate/{name}@{budget:.0%}", []).append(hit_rate(kept, critical))
    out = {key: sum(v) / len(v) for key, v in rates.items()}
    out["heldout_loss"] = sum(losses) / len(losses)
    out["heldout_prompts"] = sum(len(e.ids) for e in examples)
    return out


# --------------------------------------------------------------------------- training loop
