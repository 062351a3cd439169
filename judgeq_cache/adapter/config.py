"""The Judge Q adapter's configuration (``adapter_config.json``) and its file-format constants."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

#: The adapter modules share one logger, named after the public module.
logger = logging.getLogger("judgeq_cache.adapter")


@dataclass
class JudgeQAdapterConfig:
    """What an adapter was made for and how.

    Attributes
    ----------
    base_model : str
        Name or path of the model the rows were trained on (``config._name_or_path``).
    model_type : str
        ``config.model_type`` of that model (``"llama"``, ``"qwen2"``...).
    hidden_size : int
        Width of each soft-token row; must equal the model's embedding width.
    num_soft_tokens : int
        Number of rows (the paper uses 32).
    init : str
        How the rows were initialised (see :meth:`JudgeQAdapter.init_for`).
    model_signature : dict
        What identifies the base model whatever its path: architecture, sizes and the norms of a few
        embedding rows (see :func:`model_signature`). Empty in adapters saved before it existed.
    """

    base_model: str
    model_type: str
    hidden_size: int
    num_soft_tokens: int
    init: str = "vocab"
    dtype: str = "float32"
    library_version: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    model_signature: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "adapter_config.json") -> JudgeQAdapterConfig:
        """Validate ``data`` (parsed ``adapter_config.json``) and build a config; unknown keys are ignored."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if "peft_type" in data and "adapter_type" not in data:
            raise ValueError(
                f"{source}: this is a PEFT adapter config (peft_type={data['peft_type']!r}), not a Judge Q adapter; "
                "load it with peft (PeftModel.from_pretrained), or pass a directory written by "
                "JudgeQAdapter.save_pretrained"
            )
        version = data.get("format_version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"{source}: format_version must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{source}: format_version {version} is newer than this judgeq-cache reads (up to "
                f"{FORMAT_VERSION}); upgrade it: pip install -U judgeq-cache"
            )
        kind = data.get("adapter_type", ADAPTER_TYPE)
        if kind != ADAPTER_TYPE:
            hint = ""
            if "peft_type" in data:
                hint = f" (this is a PEFT {data['peft_type']} adapter; load it with peft, not judgeq_cache)"
            raise ValueError(f"{source}: adapter_type is {kind!r}, expected {ADAPTER_TYPE!r}{hint}")
        missing = [k for k in _REQUIRED_KEYS if k not in data]
        if missing:
            raise ValueError(f"{source}: missing required keys {missing}; is this a Judge Q adapter config?")
        for key in ("hidden_size", "num_soft_tokens"):
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{source}: {key} must be a positive integer, got {value!r}")
        for key in ("base_model", "model_type"):
            if not isinstance(data[key], str):
                raise ValueError(f"{source}: {key} must be a string, got {data[key]!r}")
        dtype = data.get("dtype", "float32")
        if dtype not in ROW_DTYPES:
            raise ValueError(f"{source}: dtype must be one of {sorted(ROW_DTYPES)}, got {dtype!r}")
        for key in ("training", "metrics", "model_signature"):
            if key in data and not isinstance(data[key], dict):
                raise ValueError(f"{source}: {key} must be a JSON object, got {type(data[key]).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names - _FILE_KEYS)
        if unknown:
            logger.debug("%s: ignoring unknown keys %s", source, unknown)
        return cls(**{k: v for k, v in data.items() if k in names})


#: ``adapter_type`` written to ``adapter_config.json`` (PEFT files carry ``peft_type`` instead).
ADAPTER_TYPE = "JUDGEQ"
#: File-format version of ``adapter_config.json`` + ``adapter_model.safetensors``.
FORMAT_VERSION = 1
_REQUIRED_KEYS = ("base_model", "model_type", "hidden_size", "num_soft_tokens")
_FILE_KEYS = {"adapter_type", "format_version"}
#: Row dtypes an adapter file may hold.
ROW_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
