"""Triton fused soft-query scoring: the host side (block sizes, grids, launches).

:func:`attention_scores` computes exactly what :func:`reference.attention_scores` computes (the mean,
over the valid queries and over the query heads of each GQA group, of the softmax attention
probabilities, returned per KV head as ``[B, Hkv, num_out]`` fp32) without ever writing the
``[Hq, m, N]`` probability matrix to global memory. The queries of one GQA group are handled as
``R = group * m`` rows that share one key head (row ``r`` is query ``r % m`` of head ``r // m`` of
the group). Three launches:

1. ``row_stats_kernel``: grid ``(B * Hkv, row blocks, splits)``. Each program keeps a block of
   query rows in registers, streams its share of the keys and keeps an online row max and row
   sum of ``exp`` (base 2, fp32). The key axis is split so that long contexts fill the GPU.
2. ``combine_kernel``: grid ``(B * Hkv, row blocks)``. Merges the split statistics into one
   row max and one row weight ``valid_i / (sum_i * count * group)``; the query validity (a query
   whose own position ``causal_offset + i`` is padding is left out) and ``count`` are computed
   here from ``key_mask``, as in the reference.
3. ``accumulate_kernel``: grid ``(B * Hkv, key blocks of the first num_out keys)``. Each program
   owns one key block of one KV head, so no atomics are needed: it loads that key block once,
   recomputes the logits of all ``R`` rows, turns them into normalised, weighted probabilities
   and sums them over the rows straight into the output.

Keys are read twice (passes 1 and 3); queries are tiny and stay in L2. Logits are accumulated in
fp32 (``tl.dot`` with fp32 accumulation; IEEE fp32 products for fp32 inputs). Padded head dims
(``D`` not a power of two) are masked. Under ``TRITON_INTERPRET=1`` the tiles are upcast to fp32
before ``tl.dot`` because the Triton 3.9 interpreter computes bf16 ``tl.dot`` wrongly.

The kernels themselves live in :mod:`.triton_scoring_kernels`; the compaction kernel
(:func:`gather_kv`) in :mod:`.triton_gather`.
"""

from __future__ import annotations

import math
import os

import torch
import triton

from .triton_scoring_kernels import accumulate_kernel, combine_kernel, row_stats_kernel

__all__ = ["attention_scores"]

_LOG2E = 1.4426950408889634


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _blocks(rows: int, head_dim_pad: int, device: torch.device) -> tuple[int, int, int, int]:
    """``(BLOCK_M pass 1, BLOCK_M pass 3, BLOCK_N, num_warps pass 1)``: untuned heuristics.

    Under the interpreter: big tiles (fewer programs are faster). On GPU, pass 1 keeps up to 128
    query rows per program so that a group's ``R = group * m`` rows (128 for Hq 32 / Hkv 8 / m 32)
    read each key once; pass 3 uses 64-row tiles to stay within registers.
    """
    if device.type != "cuda":
        block_m = max(16, min(128, triton.next_power_of_2(rows)))
        return block_m, block_m, 64, 4
    block_m1 = max(16, min(128 if head_dim_pad <= 128 else 64, triton.next_power_of_2(rows)))
    block_m2 = max(16, min(64, triton.next_power_of_2(rows)))
    block_n = 64 if head_dim_pad <= 128 else 32
    return block_m1, block_m2, block_n, 8 if block_m1 >= 128 else 4


def _num_splits(programs: int, n_blocks: int, device: torch.device) -> int:
    """Key-axis splits for pass 1 so that ``programs * splits`` covers the GPU a few times over."""
    if device.type != "cuda":
        return min(n_blocks, 3)  # exercises the split/merge path under the interpreter
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_blocks, math.ceil(4 * sms / max(programs, 1))))


def attention_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    scaling: float,
    key_mask: torch.Tensor | None = None,
    causal_offset: int | None = None,
    num_out: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Triton version of :func:`reference.attention_scores` (same arguments, same result)."""
    bsz, num_q_heads, m, dim = query.shape
    kb, num_kv_heads, n, kdim = key.shape
    if num_q_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_q_heads}) must be a multiple of key heads ({num_kv_heads})")
    if kb != bsz or kdim != dim:
        raise ValueError(f"query {tuple(query.shape)} and key {tuple(key.shape)} do not match")
    group = num_q_heads // num_kv_heads
    num_out = n if num_out is None else int(num_out)
    if not 0 <= num_out <= n:
        raise ValueError(f"num_out must be in [0, {n}], got {num_out}")
    out = torch.zeros((bsz, num_kv_heads, num_out), dtype=torch.float32, device=query.device)
    if bsz == 0 or num_kv_heads == 0 or m == 0 or num_out == 0:
        return out
    if n == 0:
        return out

    has_mask = key_mask is not None
    if has_mask:
        if key_mask.shape != (bsz, n):
            raise ValueError(f"key_mask must be [{bsz}, {n}], got {tuple(key_mask.shape)}")
        mask = key_mask if key_mask.dtype == torch.bool else key_mask != 0
        mask = mask.contiguous().view(torch.uint8)
        stride_mb = mask.stride(0)
    else:
        mask = out  # never read
        stride_mb = 0
    causal = causal_offset is not None
    offset = int(causal_offset) if causal else 0
    n_limit = n if not causal else max(0, min(n, offset + m))

    interp = _interpreting()
    dot_fp32 = interp or query.dtype != key.dtype
    ieee = dot_fp32 or query.dtype == torch.float32
    has_softcap = softcap is not None
    qk_scale = float(scaling) if has_softcap else float(scaling) * _LOG2E
    softcap_f = float(softcap) if has_softcap else 1.0

    rows = group * m
    d_pad = max(16, triton.next_power_of_2(dim))
    block_m1, block_m2, block_n, warps1 = _blocks(rows, d_pad, query.device)
    row_blocks = triton.cdiv(rows, block_m1)
    bh = bsz * num_kv_heads
    n_blocks = max(1, triton.cdiv(n_limit, block_n))
    splits = _num_splits(bh * row_blocks, n_blocks, query.device)
    keys_per_split = triton.cdiv(n_blocks, splits) * block_n
    splits = max(1, triton.cdiv(n_limit, keys_per_split))

    part_max = torch.empty((bh, splits, rows), dtype=torch.float32, device=query.device)
    part_sum = torch.empty_like(part_max)
    flags = dict(HAS_MASK=has_mask, CAUSAL=causal)
    # Arguments passes 1 and 3 share: the layout before their own scalars, the logits after them.
    layout = (*query.stride(), *key.stride(), stride_mb, num_kv_heads, group, m, n)
    logits = (dim, offset, qk_scale, softcap_f)
    logit_flags = dict(
        flags, HAS_SOFTCAP=has_softcap, DOT_FP32=dot_fp32, IEEE=ieee, BLOCK_N=block_n, D_PAD=d_pad
    )
    row_stats_kernel[(bh, row_blocks, splits)](
        query,
        key,
        mask,
        part_max,
        part_sum,
        *layout,
        n_limit,
        keys_per_split,
        splits,
        *logits,
        **logit_flags,
        BLOCK_M=block_m1,
        num_warps=warps1,
    )
    row_max = torch.empty((bh, rows), dtype=torch.float32, device=query.device)
    weight = torch.empty_like(row_max)
    combine_kernel[(bh, triton.cdiv(rows, 64))](
        part_max,
        part_sum,
        mask,
        row_max,
        weight,
        stride_mb,
        num_kv_heads,
        group,
        m,
        n,
        splits,
        offset,
        **flags,
        BLOCK_M=64,
        S_PAD=max(2, triton.next_power_of_2(splits)),
        M_PAD=max(2, triton.next_power_of_2(m)),
    )
    accumulate_kernel[(bh, triton.cdiv(num_out, block_n))](
        query, key, mask, row_max, weight, out, *layout, num_out, *logits, **logit_flags, BLOCK_M=block_m2
    )
    return out
