"""The ``@triton.jit`` kernels of the fused soft-query scoring (launched by :mod:`.triton_scoring`).

``_logits``, ``_allowed``, ``_query_tile`` and ``_key_tile`` are device helpers shared by the passes; ``row_stats_kernel`` (pass 1),
``combine_kernel`` (pass 2) and ``accumulate_kernel`` (pass 3) are described in
:mod:`.triton_scoring`, which also chooses their block sizes and grids.
"""

from __future__ import annotations

import triton
import triton.language as tl


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
def _query_tile(
    q_ptr, b, h, rows, dims, stride_qb, stride_qh, stride_qm, stride_qd, group, m_queries, head_dim
):
    """``[BLOCK_M, D_PAD]`` query rows of KV head ``h``'s GQA group (row ``r``: query ``r % m`` of
    head ``h * group + r // m``); zeros past the last row and the head dim."""
    q_head = h * group + rows // m_queries
    q_off = b * stride_qb + q_head.to(tl.int64) * stride_qh + (rows % m_queries) * stride_qm
    return tl.load(
        q_ptr + q_off[:, None] + dims[None, :] * stride_qd,
        mask=(rows[:, None] < group * m_queries) & (dims[None, :] < head_dim),
        other=0.0,
    )


@triton.jit
def _key_tile(k_ptr, b, h, cols, dims, stride_kb, stride_kh, stride_kn, stride_kd, n_keys, head_dim):
    """``[BLOCK_N, D_PAD]`` keys ``cols`` of KV head ``h``; zeros from ``n_keys`` on and past the head dim."""
    return tl.load(
        k_ptr
        + b * stride_kb
        + h * stride_kh
        + cols[:, None].to(tl.int64) * stride_kn
        + dims[None, :] * stride_kd,
        mask=(cols[:, None] < n_keys) & (dims[None, :] < head_dim),
        other=0.0,
    )


@triton.jit
def row_stats_kernel(
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
    q = _query_tile(
        q_ptr, b, h, rows, dims, stride_qb, stride_qh, stride_qm, stride_qd, group, m_queries, head_dim
    )

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    start = pid_s * keys_per_split
    stop = tl.minimum(start + keys_per_split, n_limit)
    for n0 in range(start, stop, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        k = _key_tile(k_ptr, b, h, cols, dims, stride_kb, stride_kh, stride_kn, stride_kd, stop, head_dim)
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
def combine_kernel(
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
def accumulate_kernel(
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
    k = _key_tile(k_ptr, b, h, cols, dims, stride_kb, stride_kh, stride_kn, stride_kd, n_keys, head_dim)
    acc = tl.zeros([BLOCK_N], tl.float32)
    for r0 in range(0, num_rows, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        row_ok = rows < num_rows
        q = _query_tile(
            q_ptr, b, h, rows, dims, stride_qb, stride_qh, stride_qm, stride_qd, group, m_queries, head_dim
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
