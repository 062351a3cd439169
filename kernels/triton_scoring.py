"""Triton kernels: fused soft-query scoring and KV compaction.

:func:`attention_scores` computes exactly what :func:`reference.attention_scores` computes (the mean,
over the valid queries and over the query heads of each GQA group, of the softmax attention
probabilities, returned per KV head as ``[B, Hkv, num_out]`` fp32) without ever writing the
``[Hq, m, N]`` probability matrix to global memory. The queries of one GQA group are handled as
``R = group * m`` rows that share one key head (row ``r`` is query ``r % m`` of head ``r // m`` of
the group). Three launches:

1. ``_row_stats_kernel``: grid ``(B * Hkv, row blocks, splits)``. Each program keeps a block of
   query rows in registers, streams its share of the keys and keeps an online row max and row
   sum of ``exp`` (base 2, fp32). The key axis is split so that long contexts fill the GPU.
2. ``_combine_kernel``: grid ``(B * Hkv, row blocks)``. Merges the split statistics into one
   row max and one row weight ``valid_i / (sum_i * count * group)``; the query validity (a query
   whose own position ``causal_offset + i`` is padding is left out) and ``count`` are computed
   here from ``key_mask``, as in the reference.
3. ``_accumulate_kernel``: grid ``(B * Hkv, key blocks of the first num_out keys)``. Each program
   owns one key block of one KV head, so no atomics are needed: it loads that key block once,
   recomputes the logits of all ``R`` rows, turns them into normalised, weighted probabilities
   and sums them over the rows straight into the output.

Keys are read twice (passes 1 and 3); queries are tiny and stay in L2. Logits are accumulated in
fp32 (``tl.dot`` with fp32 accumulation; IEEE fp32 products for fp32 inputs). Padded head dims
(``D`` not a power of two) are masked. Under ``TRITON_INTERPRET=1`` the tiles are upcast to fp32
before ``tl.dot`` because the Triton 3.9 interpreter computes bf16 ``tl.dot`` wrongly.

:func:`gather_kv` is a Triton compaction kernel: one launch copies the kept rows of both K and V
(grid ``(B * H, k blocks)``; each program copies ``BLOCK_K`` rows of K and of V). Whether it beats
``torch.gather`` has not been measured yet (no GPU was lent to the task that wrote it), so the
dispatcher keeps ``torch.gather`` by default on CUDA and uses this kernel only when
``JUDGEQ_KERNELS=triton`` forces Triton; ``benchmarks/kernels.py`` times both.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

__all__ = ["attention_scores", "gather_kv"]

_LOG2E = 1.4426950408889634


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _logits(
    q,
    k,
    qk_scale,
    softcap,
    HAS_SOFTCAP: tl.constexpr,
    DOT_FP32: tl.constexpr,
    IEEE: tl.constexpr,
):
    """``[BLOCK_M, BLOCK_N]`` fp32 logits in base-2 units (``log2(e) * logit``)."""
    if DOT_FP32:
        q = q.to(tl.float32)
        k = k.to(tl.float32)
    if IEEE:  # noqa: SIM108 (constexpr branch inside a Triton kernel)
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    if HAS_SOFTCAP:
        # qk_scale is the model scale here; tanh(x) = 2 * sigmoid(2x) - 1.
        x = s * (qk_scale / softcap)
        s = (2.0 * tl.sigmoid(2.0 * x) - 1.0) * (softcap * 1.4426950408889634)
    else:
        # qk_scale already holds scale * log2(e).
        s = s * qk_scale
    return s


@triton.jit
def _allowed(
    rows,
    cols,
    mask_ptr,
    stride_mb,
    b,
    num_rows,
    n_keys,
    m_queries,
    causal_offset,
    HAS_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """``[BLOCK_M, BLOCK_N]`` bool: key ``cols`` is visible to row ``rows``."""
    ok = (rows[:, None] < num_rows) & (cols[None, :] < n_keys)
    if CAUSAL:
        q_pos = causal_offset + rows % m_queries
        ok = ok & (cols[None, :] <= q_pos[:, None])
    if HAS_MASK:
        km = tl.load(mask_ptr + b * stride_mb + cols, mask=cols < n_keys, other=0)
        ok = ok & (km[None, :] != 0)
    return ok


@triton.jit
def _row_stats_kernel(
    q_ptr,
    k_ptr,
    mask_ptr,
    max_ptr,
    sum_ptr,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_mb,
    num_kv_heads,
    group,
    m_queries,
    n_keys,
    n_limit,
    keys_per_split,
    num_splits,
    head_dim,
    causal_offset,
    qk_scale,
    softcap,
    HAS_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    DOT_FP32: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    D_PAD: tl.constexpr,
):
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_r = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // num_kv_heads
    h = pid_bh % num_kv_heads
    num_rows = group * m_queries

    rows = pid_r * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, D_PAD)
    row_ok = rows < num_rows
    q_head = h * group + rows // m_queries
    q_off = b * stride_qb + q_head.to(tl.int64) * stride_qh + (rows % m_queries) * stride_qm
    q = tl.load(
        q_ptr + q_off[:, None] + dims[None, :] * stride_qd,
        mask=row_ok[:, None] & (dims[None, :] < head_dim),
        other=0.0,
    )

    k_base = k_ptr + b * stride_kb + h * stride_kh
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    start = pid_s * keys_per_split
    stop = tl.minimum(start + keys_per_split, n_limit)
    for n0 in range(start, stop, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        k = tl.load(
            k_base + cols[:, None].to(tl.int64) * stride_kn + dims[None, :] * stride_kd,
            mask=(cols[:, None] < stop) & (dims[None, :] < head_dim),
            other=0.0,
        )
        s = _logits(q, k, qk_scale, softcap, HAS_SOFTCAP, DOT_FP32, IEEE)
        ok = _allowed(
            rows, cols, mask_ptr, stride_mb, b, num_rows, stop, m_queries, causal_offset, HAS_MASK, CAUSAL
        )
        s = tl.where(ok, s, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(s, axis=1))
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        row_sum = row_sum * tl.exp2(row_max - safe_max) + tl.sum(tl.exp2(s - safe_max[:, None]), axis=1)
        row_max = new_max

    out_off = (pid_bh * num_splits + pid_s) * num_rows + rows
    tl.store(max_ptr + out_off, row_max, mask=row_ok)
    tl.store(sum_ptr + out_off, row_sum, mask=row_ok)


@triton.jit
def _combine_kernel(
    max_ptr,
    sum_ptr,
    mask_ptr,
    rmax_ptr,
    weight_ptr,
    stride_mb,
    num_kv_heads,
    group,
    m_queries,
    n_keys,
    num_splits,
    causal_offset,
    HAS_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    S_PAD: tl.constexpr,
    M_PAD: tl.constexpr,
):
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_r = tl.program_id(1)
    b = pid_bh // num_kv_heads
    num_rows = group * m_queries
    rows = pid_r * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < num_rows
    splits = tl.arange(0, S_PAD)
    off = (pid_bh * num_splits + splits[:, None]) * num_rows + rows[None, :]
    ok = (splits[:, None] < num_splits) & row_ok[None, :]
    part_max = tl.load(max_ptr + off, mask=ok, other=float("-inf"))
    part_sum = tl.load(sum_ptr + off, mask=ok, other=0.0)
    row_max = tl.max(part_max, axis=0)
    safe_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    row_sum = tl.sum(part_sum * tl.exp2(part_max - safe_max[None, :]), axis=0)

    if HAS_MASK and CAUSAL:
        # Mirrors reference._query_validity: position clamped to n - 1, negative wraps around.
        qi = tl.arange(0, M_PAD)
        pos = tl.minimum(causal_offset + qi, n_keys - 1)
        pos = tl.maximum(tl.where(pos < 0, pos + n_keys, pos), 0)
        vq = tl.load(mask_ptr + b * stride_mb + pos, mask=qi < m_queries, other=0)
        count = tl.sum((vq != 0).to(tl.float32), axis=0)
        rpos = tl.minimum(causal_offset + rows % m_queries, n_keys - 1)
        rpos = tl.maximum(tl.where(rpos < 0, rpos + n_keys, rpos), 0)
        vr = tl.load(mask_ptr + b * stride_mb + rpos, mask=row_ok, other=0)
        valid = (vr != 0).to(tl.float32)
    else:
        count = m_queries * 1.0
        valid = tl.full([BLOCK_M], 1.0, tl.float32)
    denom = tl.maximum(count * group, 1.0)
    weight = tl.where(row_sum > 0, valid / (tl.where(row_sum > 0, row_sum, 1.0) * denom), 0.0)
    out_off = pid_bh * num_rows + rows
    tl.store(rmax_ptr + out_off, safe_max, mask=row_ok)
    tl.store(weight_ptr + out_off, weight, mask=row_ok)


@triton.jit
def _accumulate_kernel(
    q_ptr,
    k_ptr,
    mask_ptr,
    rmax_ptr,
    weight_ptr,
    out_ptr,
    stride_qb,
    stride_qh,
    stride_qm,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_mb,
    num_kv_heads,
    group,
    m_queries,
    n_keys,
    num_out,
    head_dim,
    causal_offset,
    qk_scale,
    softcap,
    HAS_MASK: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    DOT_FP32: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    D_PAD: tl.constexpr,
):
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    b = pid_bh // num_kv_heads
    h = pid_bh % num_kv_heads
    num_rows = group * m_queries

    dims = tl.arange(0, D_PAD)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.load(
        k_ptr
        + b * stride_kb
        + h * stride_kh
        + cols[:, None].to(tl.int64) * stride_kn
        + dims[None, :] * stride_kd,
        mask=(cols[:, None] < n_keys) & (dims[None, :] < head_dim),
        other=0.0,
    )
    acc = tl.zeros([BLOCK_N], tl.float32)
    for r0 in range(0, num_rows, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        row_ok = rows < num_rows
        q_head = h * group + rows // m_queries
        q_off = b * stride_qb + q_head.to(tl.int64) * stride_qh + (rows % m_queries) * stride_qm
        q = tl.load(
            q_ptr + q_off[:, None] + dims[None, :] * stride_qd,
            mask=row_ok[:, None] & (dims[None, :] < head_dim),
            other=0.0,
        )
        row_max = tl.load(rmax_ptr + pid_bh * num_rows + rows, mask=row_ok, other=0.0)
        weight = tl.load(weight_ptr + pid_bh * num_rows + rows, mask=row_ok, other=0.0)
        s = _logits(q, k, qk_scale, softcap, HAS_SOFTCAP, DOT_FP32, IEEE)
        ok = _allowed(
            rows, cols, mask_ptr, stride_mb, b, num_rows, n_keys, m_queries, causal_offset, HAS_MASK, CAUSAL
        )
        p = tl.where(ok, tl.exp2(s - row_max[:, None]), 0.0) * weight[:, None]
        acc += tl.sum(p, axis=0)
    tl.store(out_ptr + pid_bh * num_out + cols, acc, mask=cols < num_out)


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
    _row_stats_kernel[(bh, row_blocks, splits)](
        query,
        key,
        mask,
        part_max,
        part_sum,
        *query.stride(),
        *key.stride(),
        stride_mb,
        num_kv_heads,
        group,
        m,
        n,
        n_limit,
        keys_per_split,
        splits,
        dim,
        offset,
        qk_scale,
        softcap_f,
        **flags,
        HAS_SOFTCAP=has_softcap,
        DOT_FP32=dot_fp32,
        IEEE=ieee,
        BLOCK_M=block_m1,
        BLOCK_N=block_n,
        D_PAD=d_pad,
        num_warps=warps1,
    )
    row_max = torch.empty((bh, rows), dtype=torch.float32, device=query.device)
    weight = torch.empty_like(row_max)
    _combine_kernel[(bh, triton.cdiv(rows, 64))](
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
    _accumulate_kernel[(bh, triton.cdiv(num_out, block_n))](
        query,
        key,
        mask,
        row_max,
        weight,
        out,
        *query.stride(),
        *key.stride(),
        stride_mb,
        num_kv_heads,
        group,
        m,
        n,
        num_out,
        dim,
        offset,
        qk_scale,
        softcap_f,
        **flags,
        HAS_SOFTCAP=has_softcap,
        DOT_FP32=dot_fp32,
        IEEE=ieee,
        BLOCK_M=block_m2,
        BLOCK_N=block_n,
        D_PAD=d_pad,
    )
    return out


@triton.jit
def _gather_kernel(
    k_ptr,
    v_ptr,
    idx_ptr,
    ko_ptr,
    vo_ptr,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ib,
    stride_ih,
    stride_ik,
    num_heads,
    num_keep,
    k_dim,
    v_dim,
    BLOCK_K: tl.constexpr,
    DK_PAD: tl.constexpr,
    DV_PAD: tl.constexpr,
):
    pid_bh = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1)
    b = pid_bh // num_heads
    h = pid_bh % num_heads
    slots = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    slot_ok = slots < num_keep
    src = tl.load(idx_ptr + b * stride_ib + h * stride_ih + slots * stride_ik, mask=slot_ok, other=0)
    src = src.to(tl.int64)

    dk = tl.arange(0, DK_PAD)
    ok_k = slot_ok[:, None] & (dk[None, :] < k_dim)
    kv = tl.load(
        k_ptr + b * stride_kb + h * stride_kh + src[:, None] * stride_kn + dk[None, :] * stride_kd, mask=ok_k
    )
    tl.store(ko_ptr + (pid_bh * num_keep + slots[:, None]) * k_dim + dk[None, :], kv, mask=ok_k)

    dv = tl.arange(0, DV_PAD)
    ok_v = slot_ok[:, None] & (dv[None, :] < v_dim)
    vv = tl.load(
        v_ptr + b * stride_vb + h * stride_vh + src[:, None] * stride_vn + dv[None, :] * stride_vd, mask=ok_v
    )
    tl.store(vo_ptr + (pid_bh * num_keep + slots[:, None]) * v_dim + dv[None, :], vv, mask=ok_v)


def gather_kv(
    keys: torch.Tensor, values: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of :func:`reference.gather_kv`: new contiguous ``[B, H, k, D]`` keys and values.

    Indices must lie in ``[0, N)`` (not checked on the device, as with any gather kernel).
    """
    bsz, heads, _, k_dim = keys.shape
    v_dim = values.shape[-1]
    if values.shape[:3] != keys.shape[:3] or indices.shape[:2] != (bsz, heads) or indices.dim() != 3:
        raise ValueError(
            f"keys {tuple(keys.shape)}, values {tuple(values.shape)}, indices {tuple(indices.shape)} do not match"
        )
    num_keep = indices.shape[-1]
    k_out = torch.empty((bsz, heads, num_keep, k_dim), dtype=keys.dtype, device=keys.device)
    v_out = torch.empty((bsz, heads, num_keep, v_dim), dtype=values.dtype, device=values.device)
    if k_out.numel() == 0 and v_out.numel() == 0:
        return k_out, v_out
    dk_pad = max(16, triton.next_power_of_2(k_dim))
    dv_pad = max(16, triton.next_power_of_2(v_dim))
    block_k = 64 if keys.device.type != "cuda" else max(8, 4096 // max(dk_pad, dv_pad))
    grid = (bsz * heads, triton.cdiv(num_keep, block_k))
    _gather_kernel[grid](
        keys,
        values,
        indices,
        k_out,
        v_out,
        *keys.stride(),
        *values.stride(),
        *indices.stride(),
        heads,
        num_keep,
        k_dim,
        v_dim,
        BLOCK_K=block_k,
        DK_PAD=dk_pad,
        DV_PAD=dv_pad,
    )
    return k_out, v_out
