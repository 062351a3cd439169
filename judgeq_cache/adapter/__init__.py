"""The Judge Q adapter: trained soft-token rows and their config, apart from any model (as in PEFT).

- :mod:`.config`: :class:`JudgeQAdapterConfig`, what the rows were trained for;
- :mod:`.model`: :class:`JudgeQAdapter`, the rows as an ``nn.Module``;
- :mod:`.io`: save / load / Hub (plain files: ``adapter_config.json``, ``adapter_model.safetensors``);
- :mod:`.card`: the model card; :mod:`.signature`: the base model's weight signature.

Imports flow one way (``config`` ← ``card``, ``signature`` ← ``io`` ← ``model``): no cycle.
"""

from __future__ import annotations

from .card import model_card
from .config import ADAPTER_TYPE, FORMAT_VERSION, JudgeQAdapterConfig
from .io import CONFIG_NAME, TENSOR_KEY, WEIGHTS_NAME
from .model import JudgeQAdapter
from .signature import model_signature, signature_differences

__all__ = [
    "ADAPTER_TYPE",
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "TENSOR_KEY",
    "WEIGHTS_NAME",
    "JudgeQAdapter",
    "JudgeQAdapterConfig",
    "model_card",
    "model_signature",
    "signature_differences",
]
