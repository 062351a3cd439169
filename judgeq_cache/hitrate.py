"""Critical-KV hit rate: how many of the entries the real answer attends to most a method kept."""

from __future__ import annotations

import torch


def hit_rate(kept: dict[int, torch.Tensor], critical: dict[int, torch.Tensor]) -> float:
    """Mean overlap ``|kept ∩ critical| / |critical|`` over layers, batch rows and KV heads.

    Parameters
    ----------
    kept : dict[int, LongTensor ``[B, H, k]``]
        Indices a method kept per layer (``EvictionCache.kept_indices``).
    critical : dict[int, LongTensor ``[B, H, k']``]
        The oracle's kept indices at the same budget (``EvictionCache(..., "oracle", future_ids=answer)``).
    """
    if not critical:
        raise ValueError("no critical entries: the oracle evicted nothing (budget >= prompt length?)")
    rates = []
    for layer, oracle_idx in critical.items():
        if layer not in kept:
            rates.append(torch.ones(oracle_idx.shape[:2]))  # nothing evicted there: every entry kept
            continue
        n = int(max(kept[layer].max(), oracle_idx.max())) + 1
        mine = torch.zeros(*kept[layer].shape[:2], n, dtype=torch.bool)
        mine.scatter_(-1, kept[layer].cpu(), True)
        rates.append(mine.gather(-1, oracle_idx.cpu()).float().mean(-1))
    return torch.stack(rates).mean().item()
