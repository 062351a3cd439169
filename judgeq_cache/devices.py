"""Models that accelerate dispatched with a ``device_map``: where to create inputs, how to read weights.

With CPU or disk offload, accelerate leaves the offloaded parameters on the ``meta`` device and its
hooks load them (and move every input to the module's execution device) for each forward. So a
tensor created "on the embedding's device" would be a meta tensor without data. These helpers give
the one place that knows it: inputs go to a real device (the hooks move them on), and weights are
read inside accelerate's public :func:`~accelerate.utils.align_module_device`. Tensor-parallel
weights (``tp_plan``) are DTensors: they are read whole with ``full_tensor()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def input_device(model: nn.Module) -> torch.device:
    """The device to create ``model``'s inputs on: its input embedding's device, or the CPU when
    that embedding was offloaded by accelerate (its hook moves inputs to the execution device)."""
    device = model.get_input_embeddings().weight.device
    return torch.device("cpu") if device.type == "meta" else device


@contextlib.contextmanager
def readable_weight(module: nn.Module) -> Iterator[torch.Tensor]:
    """``module.weight`` with data: as it is, the whole tensor of a tensor-parallel shard (a collective:
    every rank must call it), or loaded by accelerate for the block when offloaded."""
    weight = module.weight
    if _is_dtensor(weight):
        yield weight.full_tensor()
        return
    if weight.device.type != "meta":
        yield weight
        return
    try:
        from accelerate.utils import align_module_device
    except ImportError as error:
        raise RuntimeError(_no_data(module)) from error
    with align_module_device(module):
        if module.weight.device.type == "meta":  # no accelerate hook holds this weight
            raise RuntimeError(_no_data(module))
        yield module.weight


def _is_dtensor(tensor: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support
        return False
    return isinstance(tensor, DTensor)


def _no_data(module: nn.Module) -> str:
    return (
        f"{type(module).__name__}'s weight is on the meta device and no accelerate hook loads it; load "
        "the model's weights first (from_pretrained, or accelerate's dispatch_model with a device_map)"
    )
