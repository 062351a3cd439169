"""Scoring, selection and compaction kernels (installed as ``judgeq_cache.kernels``).

The cache calls only the functions of this module. Dispatch rule (:func:`backend_for`):

* ``JUDGEQ_KERNELS=torch`` (or ``reference``): always the torch reference.
* ``JUDGEQ_KERNELS=triton``: Triton for CUDA tensors, and also for CPU tensors when
  ``TRITON_INTERPRET=1`` (the Triton interpreter; this is how the tests exercise the kernels
  without a GPU). Other devices (CPU without the interpreter, MPS, ...) cannot run Triton and
  get the torch reference. Raises if Triton is not installed.
* unset: Triton for CUDA tensors when Triton is importable, the torch reference elsewhere.

Tensors that need a gradient always take the torch reference (the Triton kernels have no
backward). :func:`attention_scores` uses the fused Triton scoring kernel whenever the backend
is ``"triton"``. :func:`gather_kv` uses the Triton compaction kernel only when Triton is forced
with ``JUDGEQ_KERNELS=triton``: by default it keeps ``torch.gather`` until a GPU benchmark
(``benchmarks/kernel_speed.py``) shows the kernel is faster. :func:`select_indices` is always torch
(pooling + ``topk`` + ``sort`` on ``[B, H, N]`` scores is cheap next to the scoring pass).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from . import reference

__all__ = ["attention_scores", "attention_scores_and_output", "select_indices", "gather_kv", "backend_for"]


_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@functools.cache
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _forced() -> str:
    forced = os.environ.get("JUDGEQ_KERNELS", "").strip().lower()
    if forced in ("torch", "reference"):
        return "torch"
    if forced == "triton":
        if not _triton_available():
            raise RuntimeError(
                "JUDGEQ_KERNELS=triton but triton is not installed: pip install 'judgeq-cache[kernels]'"
            )
        return "triton"
    if forced:
        raise ValueError(f"JUDGEQ_KERNELS must be 'torch' or 'triton', got {forced!r}")
    return ""


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip() == "1"


def backend_for(tensor: torch.Tensor) -> str:
    """The backend that would run for ``tensor``: ``"triton"`` or ``"torch"`` (see the module docstring)."""
    forced = _forced()
    if forced == "torch":
        return "torch"
    if forced == "triton":
        return "triton" if tensor.is_cuda or (tensor.device.type == "cpu" and _interpreting()) else "torch"
    if tensor.is_cuda and _triton_available():
        return "triton"
    return "torch"


def attention_scores(query: torch.Tensor, key: torch.Tensor, **options: Any) -> torch.Tensor:
    """Mean attention of ``query`` over ``key`` per KV head: :func:`reference.attention_scores` or
    its Triton version, which take the same keyword ``options`` (``scaling``, ``key_mask``,
    ``causal_offset``, ``num_out``, ``softcap``; see :func:`reference.attention_scores`)."""
    if (
        query.requires_grad
        or key.requires_grad
        or query.dtype not in _TRITON_DTYPES
        or key.dtype not in _TRITON_DTYPES
        or backend_for(query) == "torch"
    ):
        return reference.attention_scores(query, key, **options)
    from . import triton_scoring

    return triton_scoring.attention_scores(query, key, **options)


def attention_scores_and_output(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **options: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attention_scores` and the attention output ``[B, m, Hq, D]`` from one softmax: always
    the torch reference. Callers fuse only where :func:`backend_for` is ``"torch"``; on a GPU the
    Triton scoring kernel next to the model's own fused attention is the faster pair."""
    return reference.attention_scores_and_output(query, key, value, **options)


#: Per-head top-``k`` indices in original order: always the torch reference (see above).
select_indices = reference.select_indices


def gather_kv(
    keys: torch.Tensor, values: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous kept keys/values; see :func:`reference.gather_kv`.

    The Triton compaction kernel runs only when ``JUDGEQ_KERNELS=triton`` forces it (see above).
    """
    if (
        _forced() == "triton"
        and backend_for(keys) == "triton"
        and not (keys.requires_grad or values.requires_grad)
        and keys.device == values.device == indices.device
    ):
        from . import triton_gather

        return triton_gather.gather_kv(keys, values, indices)
    return reference.gather_kv(keys, values, indices)
