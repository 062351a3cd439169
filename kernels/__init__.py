"""Scoring, selection and compaction kernels (installed as ``judgeq_cache.kernels``).

The cache calls only the functions of this module. Each dispatches to a Triton kernel on CUDA
tensors (when Triton is importable and no gradient is needed) and to the torch reference
elsewhere. ``JUDGEQ_KERNELS=torch`` or ``JUDGEQ_KERNELS=triton`` forces one backend.
"""

from __future__ import annotations

import os

import torch

from . import reference

__all__ = ["attention_scores", "select_indices", "gather_kv", "backend_for"]


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def backend_for(tensor: torch.Tensor) -> str:
    """The backend that would run for ``tensor``: ``"triton"`` or ``"torch"``."""
    forced = os.environ.get("JUDGEQ_KERNELS", "").strip().lower()
    if forced in ("torch", "reference"):
        return "torch"
    if forced == "triton":
        if not _triton_available():
            raise RuntimeError("JUDGEQ_KERNELS=triton but triton is not installed: pip install 'judgeq-cache[kernels]'")
        return "triton"
    if forced:
        raise ValueError(f"JUDGEQ_KERNELS must be 'torch' or 'triton', got {forced!r}")
    if tensor.is_cuda and _triton_available():
        return "triton"
    return "torch"


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
    """Mean attention of ``query`` over ``key`` per KV head; see :func:`reference.attention_scores`."""
    kwargs = dict(
        scaling=scaling, key_mask=key_mask, causal_offset=causal_offset, num_out=num_out, softcap=softcap
    )
    if query.requires_grad or backend_for(query) == "torch":
        return reference.attention_scores(query, key, **kwargs)
    from . import triton_scoring

    return triton_scoring.attention_scores(query, key, **kwargs)


def select_indices(
    scores: torch.Tensor,
    k: int,
    *,
    key_mask: torch.Tensor | None = None,
    protected: torch.Tensor | None = None,
    pooling_kernel: int = 1,
    pooling: str = "max",
) -> torch.Tensor:
    """Per-head top-``k`` indices in original order; see :func:`reference.select_indices`."""
    return reference.select_indices(
        scores, k, key_mask=key_mask, protected=protected, pooling_kernel=pooling_kernel, pooling=pooling
    )


def gather_kv(
    keys: torch.Tensor, values: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous kept keys/values; see :func:`reference.gather_kv`."""
    return reference.gather_kv(keys, values, indices)
