"""Trained adapters that ship inside the package, loadable by a short name.

``JudgeQAdapter.from_pretrained("smollm2-135m-instruct")`` reads the folder of that name next to this
file, so a pip user has the trained adapter with no checkout and no Hub access. Each folder holds
PEFT's two files (``adapter_config.json``, ``adapter_model.safetensors``) and its model card; how it
was trained is in ``docs/training.md`` (``scripts/train_bundled.py`` reproduces it).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["shipped_adapter_names", "shipped_adapter_path"]

_HERE = Path(__file__).resolve().parent
_CONFIG = "adapter_config.json"


def shipped_adapter_names() -> list[str]:
    """Short names of the adapters that ship with the package (sorted)."""
    return sorted(p.name for p in _HERE.iterdir() if (p / _CONFIG).is_file())


def shipped_adapter_path(name: str) -> Path | None:
    """The folder of the shipped adapter ``name`` (case-insensitive), or ``None``."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    path = _HERE / name.lower()
    return path if (path / _CONFIG).is_file() else None


def shipped_base_models() -> dict[str, str]:
    """``{short name: base model id}`` of every shipped adapter (read from its config)."""
    out = {}
    for name in shipped_adapter_names():
        data = json.loads((_HERE / name / _CONFIG).read_text(encoding="utf-8"))
        out[name] = data.get("base_model", "")
    return out
