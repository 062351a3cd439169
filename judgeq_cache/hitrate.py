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


def token_positions(tokenizer, text: str, needles: list[str]) -> list[int]:
    """Token indices (in ``tokenizer.encode(text, add_special_tokens=False)``) that overlap any
    occurrence of the strings ``needles`` in ``text`` (a fast tokenizer's offsets are used)."""
    spans = []
    for needle in needles:
        start = text.find(needle)
        while needle and start >= 0:
            spans.append((start, start + len(needle)))
            start = text.find(needle, start + 1)
    if not spans:
        return []
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [i for i, (a, b) in enumerate(offsets) if any(a < e and b > s for s, e in spans)]


def needle_recall(kept: dict[int, torch.Tensor], positions: list[int] | torch.Tensor) -> float:
    """Share of the needle's prompt ``positions`` kept, averaged over layers, batch rows and KV heads.

    It looks at what the answer needs (the tokens of the answer values), so it tracks answer accuracy
    more closely than :func:`hit_rate`, whose oracle set is dominated by entries that many answers
    attend to (sinks, the question, punctuation). ``kept`` as in :func:`hit_rate`; layers absent from
    ``kept`` evicted nothing and count as fully kept.
    """
    positions = torch.as_tensor(positions, dtype=torch.long).flatten()
    if positions.numel() == 0:
        raise ValueError("no needle positions: the needle text was not found in the prompt")
    rates = []
    for indices in kept.values():
        n = int(max(int(indices.max()), int(positions.max()))) + 1
        mine = torch.zeros(*indices.shape[:2], n, dtype=torch.bool)
        mine.scatter_(-1, indices.cpu(), True)
        rates.append(mine[..., positions].float().mean())
    return torch.stack(rates).mean().item() if rates else 1.0
