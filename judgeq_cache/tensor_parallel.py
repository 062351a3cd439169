"""Tensor-parallel models (transformers' ``tp_plan``): selection that agrees across ranks.

Under tensor parallelism each rank holds a shard of the KV heads, and its cache stores only those
heads. Per-head selection is local to a rank and needs nothing. Shared-heads selection (Judge Q's
default) averages the scores over *all* KV heads, so each rank sums its own heads and the sums are
all-reduced over the tensor-parallel group: every rank then keeps the same positions, the ones a
single process would keep.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .cache.capture import attention_modules
from .utils import text_config

if TYPE_CHECKING:
    from .scorers import Scorer


@dataclass(frozen=True)
class HeadShards:
    """How a model's KV heads are split over ranks: the process ``group`` and the model's KV heads."""

    group: Any  # torch.distributed.ProcessGroup
    total_heads: int


def head_shards(model: nn.Module) -> HeadShards | None:
    """The tensor-parallel group over which ``model``'s KV heads are sharded (None: not sharded)."""
    size = getattr(model, "tp_size", None)
    if not isinstance(size, int) or size <= 1:
        return None
    config = text_config(model)
    total = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    group = _attention_group(model)
    return None if group is None else HeadShards(group, int(total))


def bind(scorer: Scorer, model: nn.Module) -> Scorer:
    """``scorer`` made aware of ``model``'s head shards, so that shared-heads selection all-reduces its
    scores. Refuses up front a shared-heads scorer on a tensor-parallel model whose group is unknown."""
    shards = head_shards(model)
    if shards is None:
        if scorer.shared_heads and (getattr(model, "tp_size", None) or 1) > 1:
            raise ValueError(
                f"{type(model).__name__} is tensor parallel (tp_size={model.tp_size}) but neither its attention "
                "weights nor the model carry a device mesh, so the ranks cannot agree on shared-heads selection; pass "
                "shared_heads=False (per-head selection is local to each rank)"
            )
        return scorer
    if scorer.head_shards == shards:
        return scorer
    return dataclasses.replace(scorer, head_shards=shards)


def mean_over_heads(scores: torch.Tensor, shards: HeadShards | None) -> torch.Tensor:
    """``scores`` ``[B, H, N]`` averaged over every KV head of the model, expanded back to ``[B, H, N]``:
    over the local heads, or, when this rank holds a shard of them, summed over the ranks of
    ``shards.group`` (a collective: every rank evicts the same layers in the same order)."""
    if shards is None or scores.shape[1] == shards.total_heads:
        return scores.mean(dim=1, keepdim=True).expand_as(scores)
    import torch.distributed as dist

    total = scores.sum(dim=1, keepdim=True).contiguous()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=shards.group)
    return (total / shards.total_heads).expand_as(scores)


def _attention_group(model: nn.Module) -> Any:
    """The tensor-parallel process group: from the device mesh of the attention weights' DTensors
    (transformers 5.25 shards them into DTensors), else from the mesh transformers keeps on the model
    (read only; 5.2 shards into plain tensors); None when neither is there."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return None
    for module in attention_modules(model):
        for param in module.parameters():
            if isinstance(param, DTensor):
                return _mesh_group(param.device_mesh)
    mesh = getattr(model, "_device_mesh", None)
    return None if mesh is None else _mesh_group(mesh)


def _mesh_group(mesh: Any) -> Any:
    """The process group of a 1-D mesh, or of the ``"tp"`` dimension of a larger one (None otherwise)."""
    if mesh.ndim == 1:
        return mesh.get_group()
    if "tp" in (mesh.mesh_dim_names or ()):
        return mesh.get_group("tp")
    return None
