"""The alignment loss and the held-out metrics (critical-KV hit rate and needle recall)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .. import kernels
from ..adapter import JudgeQAdapter
from ..cache.budget import Budget
from ..hitrate import hit_rate, needle_recall
from ..scorers import LayerInputs, Scorer, make_scorer
from .config import LOSSES, TrainConfig
from .data import Example, prefill_prompt
from .prepared import WINDOW

logger = logging.getLogger(__name__)

#: Kept fraction whose oracle set the "topk" loss aims at.
TOPK_FRACTION = 0.1


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
    normalising both over the real positions. ``"mse-shared"``/``"kl-shared"``: the same on the
    KV heads' mean (the quantity ``shared_heads=True`` selection ranks by). ``"topk"``: ``KL(t_k || p)``
    where ``t_k`` keeps only the target's top ``TOPK_FRACTION`` entries per head: the soft tokens put
    their mass on what the oracle keeps at small budgets and need not model the rest. The first
    ``ignore_first`` real tokens (attention sinks, which take a large, uninformative share of both)
    and padding are left out.
    """
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    mask = attention_mask.bool().to(next(iter(pred.values())).device)
    real_index = mask.long().cumsum(-1) - 1
    valid = (mask & (real_index >= ignore_first)).float()[:, None, :]  # [B, 1, N]
    count = valid.sum(-1).clamp(min=1.0)  # [B, 1]
    losses = []
    for layer, t in target.items():
        p = pred[layer]
        t = t.to(p.device)
        if kind.endswith("-shared"):
            p, t = p.mean(1, keepdim=True), t.mean(1, keepdim=True)
        if kind.startswith("mse"):
            n = count[..., None]
            err = ((p - t) * n) ** 2 * valid
            losses.append((err.sum(-1) / count).mean())
            continue
        eps = 1e-8
        tn = t * valid
        if kind == "topk":
            k = max(1, int(TOPK_FRACTION * float(count.max())))
            top = tn.topk(min(k, tn.shape[-1]), dim=-1).indices
            tn = torch.zeros_like(tn).scatter(-1, top, tn.gather(-1, top))
        pn = p * valid
        pn = pn / pn.sum(-1, keepdim=True).clamp(min=eps)
        tn = tn / tn.sum(-1, keepdim=True).clamp(min=eps)
        kl = (tn * (torch.log(tn + eps) - torch.log(pn + eps))) * valid
        losses.append(kl.sum(-1).mean())
    return torch.stack(losses).mean()


# --------------------------------------------------------------------------- evaluation


def kept_by(scorer: Scorer, scores: torch.Tensor, k: int, window: torch.Tensor | None = None) -> torch.Tensor:
    """What ``scorer`` keeps at ``k`` given its ``scores`` ``[1, Hkv, N]`` (and, for hybrid scorers,
    the last prompt queries' attention ``window``), through its own selection path."""
    key_mask = torch.ones(scores.shape[0], scores.shape[-1], dtype=torch.bool, device=scores.device)
    inputs = LayerInputs(
        layer_idx=0,
        keys=scores[..., None],
        values=scores[..., None],
        attention=scores,
        key_mask=key_mask,
        budget=k,
        window_attention=window,
    )
    return scorer.select(inputs)


def soft_attention(model, adapter, example, grad: bool) -> tuple[dict[int, torch.Tensor], Any]:
    """The soft tokens' attention over ``example``'s prompt (kept, re-prefilled or loaded prefill)."""
    from ..cache import JudgeQCache

    cache = example.cache if isinstance(example, Example) else None
    if cache is None:
        if hasattr(example, "prefilled"):
            cache = example.prefilled(model, JudgeQCache(model, adapter, budget=0.5, auto_compress=False))
        else:
            device = model.get_input_embeddings().weight.device
            cache, _, _ = prefill_prompt(
                model, adapter, example.input_ids.to(device), example.attention_mask.to(device)
            )
    if cache.adapter is not adapter:
        cache.scorer.adapter = adapter
    with torch.set_grad_enabled(grad):
        pred = cache.appended_attention(cache.scorer.appended_inputs(example.input_ids.shape[0], model))
    return pred, cache


def baseline_scorers(
    adapter: JudgeQAdapter, judgeq_options: dict[str, Any] | None = None
) -> dict[str, tuple[Scorer, str]]:
    """The selections the held-out report compares: ``name -> (scorer, which scores it ranks)``."""
    options = {k: v for k, v in (judgeq_options or {}).items() if k not in ("shared_heads", "window_weight")}
    soft_only = {**options, "window_weight": 0.0}
    return {
        "judgeq": (make_scorer("judgeq", adapter=adapter, **(judgeq_options or {})), "soft"),
        "judgeq-perhead": (make_scorer("judgeq", adapter=adapter, **soft_only, shared_heads=False), "soft"),
        "judgeq-shared": (make_scorer("judgeq", adapter=adapter, **soft_only, shared_heads=True), "soft"),
        "snapkv": (make_scorer("snapkv"), "window"),
        "tova": (make_scorer("tova"), "last"),
        "streamingllm": (make_scorer("streamingllm"), "window"),
    }


def evaluate_hit_rates(
    model: nn.Module,
    adapter: JudgeQAdapter,
    examples: Sequence[Any],
    budgets: Iterable[float] = (0.1, 0.25),
    config: TrainConfig | None = None,
    scorers: dict[str, tuple[Scorer, str]] | None = None,
) -> dict[str, float]:
    """Held-out metrics at each kept fraction: critical-KV hit rate and (when the examples know where
    their needles are) needle recall, for Judge Q and the baselines, plus the loss.

    Every selection runs its scorer's own :meth:`~judgeq_cache.scorers.Scorer.select` (pooling,
    shared heads, protected tokens) on the scores it would see in the cache: the soft tokens'
    attention (Judge Q), the last-32 window (SnapKV) or last-query attention (TOVA) captured during
    the prefill. The oracle is the top-k of the target at the same k. Rows are scored on their real
    tokens only.
    """
    config = config or TrainConfig()
    scorers = scorers or baseline_scorers(adapter)
    rates: dict[str, list[float]] = {}
    losses = []
    for example in examples:
        if example.window is None:
            raise ValueError("held-out examples need the SnapKV window: prepare them with window_size=32")
        with torch.no_grad():
            pred, _ = soft_attention(model, adapter, example, grad=False)
        losses.append(
            float(
                alignment_loss(pred, example.target, example.attention_mask, config.loss, config.ignore_first)
            )
        )
        sources = {"soft": pred, "window": example.window, "last": getattr(example, "last", None)}
        needles = getattr(example, "needles", None)
        for b, n in enumerate(example.lengths):
            for budget in budgets:
                k = Budget.parse(budget).entries(n)
                critical = {
                    layer: kernels.select_indices(t[b : b + 1, :, -n:].float(), k)
                    for layer, t in example.target.items()
                }
                for name, (scorer, source) in scorers.items():
                    scores = sources[source]
                    size = scorer.captured_window() if source == "soft" else 0
                    window = {0: None, 1: sources["last"], WINDOW: sources["window"]}.get(size)
                    if scores is None or (size and window is None):
                        continue  # e.g. a hybrid selection on examples prepared without its window
                    kept = {
                        layer: kept_by(
                            scorer,
                            scores[layer][b : b + 1, :, -n:].float(),
                            k,
                            None if window is None else window[layer][b : b + 1, :, -n:].float(),
                        )
                        for layer in critical
                    }
                    rates.setdefault(f"hit_rate/{name}@{budget:.0%}", []).append(hit_rate(kept, critical))
                    if needles:
                        rates.setdefault(f"needle_recall/{name}@{budget:.0%}", []).append(
                            needle_recall(kept, needles)
                        )
                if needles:
                    rates.setdefault(f"needle_recall/oracle@{budget:.0%}", []).append(
                        needle_recall(critical, needles)
                    )
    out = {key: sum(v) / len(v) for key, v in rates.items()}
    out["heldout_loss"] = sum(losses) / len(losses)
    out["heldout_prompts"] = sum(len(e.ids) for e in examples)
    return out


# --------------------------------------------------------------------------- training loop
