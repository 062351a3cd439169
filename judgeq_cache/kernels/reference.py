"""Torch reference implementations of the scoring, selection and compaction kernels.

These run everywhere (CPU, CUDA, autograd) and are the test oracle for the Triton kernels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: Queries scored at once; bounds the ``[B, Hq, chunk, N]`` fp32 intermediate.
QUERY_CHUNK = 256


class ScoreOptions(TypedDict, total=False):
    """The optional keywords of :func:`attention_scores` and :func:`attention_scores_and_output`."""

    key_mask: torch.Tensor | None
    causal_offset: int | None
    num_out: int | None
    softcap: float | None


def attention_scores(
    query: torch.Tensor, key: torch.Tensor, *, scaling: float, **options: Unpack[ScoreOptions]
) -> torch.Tensor:
    """Mean softmax attention of ``query`` over ``key``, aggregated per KV head.

    Parameters
    ----------
    query : Tensor ``[B, Hq, m, D]``
        Post-RoPE queries (any float dtype; accumulation is fp32).
    key : Tensor ``[B, Hkv, N, D]``
        Post-RoPE keys; ``Hq`` must be a multiple of ``Hkv`` (GQA groups are averaged).
    scaling : float
        The model's attention scale (usually ``D ** -0.5``).
    key_mask : bool Tensor ``[B, N]``, optional
        ``False`` marks padding keys: they get no probability. A query whose own position
        (``causal_offset + i``) is padding is left out of the mean.
    causal_offset : int, optional
        Query ``i`` sits at key position ``causal_offset + i`` and sees keys ``j <= causal_offset + i``.
        ``None`` means every query sees every key.
    num_out : int, optional
        Return only the first ``num_out`` key columns (the prompt, when queries were appended).
    softcap : float, optional
        Logit soft-capping (Gemma-2 style): ``tanh(logits / softcap) * softcap``.

    Returns
    -------
    Tensor ``[B, Hkv, num_out]`` float32
        Probabilities averaged over the valid queries and the query heads of each KV group.
    """
    return _scores(query, key, None, scaling, **options)[0]


def attention_scores_and_output(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    scaling: float,
    **options: Unpack[ScoreOptions],
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attention_scores` plus the attention output those probabilities give, from one softmax.

    ``value`` is ``[B, Hkv, N, D]``; the output is ``[B, m, Hq, D]`` in ``query``'s dtype (the layout
    transformers' attention functions return). Rows of queries that see no key are zero.
    """
    return _scores(query, key, value, scaling, **options)


def _scores(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor | None,
    scaling: float,
    key_mask: torch.Tensor | None = None,
    causal_offset: int | None = None,
    num_out: int | None = None,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    bsz, num_q_heads, m, dim = query.shape
    _, num_kv_heads, n, _ = key.shape
    if num_q_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_q_heads}) must be a multiple of key heads ({num_kv_heads})")
    group = num_q_heads // num_kv_heads
    num_out = n if num_out is None else num_out
    if key_mask is not None and bool(key_mask.all()):
        key_mask = None  # nothing to mask (the usual unpadded batch): skip the masking work
    q = query.float().view(bsz, num_kv_heads, group, m, dim)
    k = key.float()
    out = query.new_zeros((bsz, num_kv_heads, num_out), dtype=torch.float32)
    count = query.new_zeros((bsz, 1, 1), dtype=torch.float32)
    key_pos = torch.arange(n, device=query.device)
    outputs = []
    for start in range(0, m, QUERY_CHUNK):
        stop = min(m, start + QUERY_CHUNK)
        # Keys after the chunk's last query are causally invisible to all of it: skip them.
        seen = n if causal_offset is None else max(1, min(n, causal_offset + stop))
        logits = torch.einsum("bhgqd,bhkd->bhgqk", q[:, :, :, start:stop], k[:, :, :seen]) * scaling
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[:, None, None, None, :seen].bool(), float("-inf"))
        if causal_offset is not None:
            # Keys up to the chunk's first query are seen by all of its queries: only the columns
            # after it need the causal mask (a few, for appended tokens over a long prompt).
            tail = max(0, causal_offset + start + 1)
            if tail < seen:
                q_pos = torch.arange(start, stop, device=query.device) + causal_offset
                logits[..., tail:seen].masked_fill_(key_pos[None, tail:seen] > q_pos[:, None], float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if key_mask is not None or (causal_offset is not None and causal_offset + start < 0):
            probs = probs.nan_to_num(0.0)  # queries that see no key at all
        if value is not None:
            outputs.append(torch.einsum("bhgqk,bhkd->bhgqd", probs, value[:, :, :seen].float()))
        valid = _query_validity(key_mask, causal_offset, start, stop, bsz, n, query.device)
        if key_mask is not None:
            probs = probs * valid[:, None, None, :, None]
        cols = min(num_out, seen)
        out[..., :cols] += probs[..., :cols].sum(dim=(2, 3))
        count = count + valid.sum(dim=-1).view(bsz, 1, 1)
    scores = out / (count * group).clamp_min(1.0)
    if value is None:
        return scores, None
    output = torch.cat(outputs, dim=3).reshape(bsz, num_q_heads, m, -1).transpose(1, 2)
    return scores, output.to(query.dtype).contiguous()


def _query_validity(
    key_mask: torch.Tensor | None,
    causal_offset: int | None,
    start: int,
    stop: int,
    bsz: int,
    n: int,
    device: torch.device,
) -> torch.Tensor:
    """``[B, stop - start]`` float: 1 where the query's own position is a real (non-padding) token."""
    if key_mask is None or causal_offset is None:
        return torch.ones((bsz, stop - start), device=device)
    pos = (torch.arange(start, stop, device=device) + causal_offset).clamp_max(n - 1)
    return key_mask[:, pos].float()


def pool_scores(scores: torch.Tensor, kernel_size: int, mode: str = "max") -> torch.Tensor:
    """Smooth ``[B, H, N]`` scores along N with a centred window (SnapKV's clustering step)."""
    if kernel_size <= 1:
        return scores
    if kernel_size % 2 == 0:
        raise ValueError(f"pooling kernel must be odd, got {kernel_size}")
    bsz, heads, n = scores.shape
    flat = scores.reshape(bsz * heads, 1, n)
    pad = kernel_size // 2
    if mode == "max":
        pooled = F.max_pool1d(flat, kernel_size, stride=1, padding=pad)
    elif mode == "avg":
        pooled = F.avg_pool1d(flat, kernel_size, stride=1, padding=pad, count_include_pad=False)
    else:
        raise ValueError(f"pooling mode must be 'max' or 'avg', got {mode!r}")
    return pooled.view(bsz, heads, n)


def select_indices(
    scores: torch.Tensor,
    k: int,
    *,
    key_mask: torch.Tensor | None = None,
    protected: torch.Tensor | None = None,
    pooling_kernel: int = 1,
    pooling: str = "max",
) -> torch.Tensor:
    """Indices of the ``k`` best entries per head, in original (ascending) order.

    Parameters
    ----------
    scores : Tensor ``[B, H, N]``
    k : int
        Entries kept per head, ``1 <= k <= N``.
    key_mask : bool Tensor ``[B, N]``, optional
        Padding (``False``) is never chosen before a real token.
    protected : bool Tensor ``[B, N]``, optional
        Always kept (sinks, recent window) unless padding.
    pooling_kernel, pooling :
        Window smoothing applied before the top-k (see :func:`pool_scores`).

    Returns
    -------
    LongTensor ``[B, H, k]``
    """
    s = pool_scores(scores.float().nan_to_num(0.0), pooling_kernel, pooling)
    if protected is not None:
        s = s.masked_fill(protected[:, None, :].bool(), float("inf"))
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, :].bool(), float("-inf"))
    # A stable sort breaks ties (frequent after max-pooling) by position, so a row scores the same
    # whatever left padding precedes it.
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices
    return order[..., :k].sort(dim=-1).values


def gather_kv(
    keys: torch.Tensor, values: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact ``[B, H, N, D]`` keys/values to the ``[B, H, k]`` ``indices`` (new contiguous tensors)."""
    idx_k = indices[..., None].expand(-1, -1, -1, keys.shape[-1])
    idx_v = indices[..., None].expand(-1, -1, -1, values.shape[-1])
    return keys.gather(2, idx_k), values.gather(2, idx_v)
