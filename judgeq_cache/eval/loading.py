"""Adapter and sample loading shared by ``judgeq eval`` and ``judgeq demo`` (models load with
:func:`judgeq_cache.models.load_model`)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..adapter import JudgeQAdapter

logger = logging.getLogger(__name__)

__all__ = ["BUNDLED_ADAPTER", "load_adapter", "load_samples"]

#: The adapter trained for the embedded model (repository checkout or installed package data).
BUNDLED_ADAPTER = "smollm2-135m-instruct"
_ADAPTER_DIRS = (
    Path(__file__).resolve().parents[2] / "adapters",
    Path(__file__).resolve().parents[1] / "adapters",
)


def _find_bundled(name: str) -> Path | None:
    for root in _ADAPTER_DIRS:
        path = root / name
        if path.is_dir() and any(path.glob("*.safetensors")):
            return path
    return None


def load_adapter(model, path: str | None = None) -> tuple[JudgeQAdapter, str]:
    """``(adapter, label)``. ``path`` (a directory or Hub id), else the bundled adapter for the
    embedded model, else a fresh ``JudgeQAdapter.init_for(model)`` labelled "untrained adapter".
    ``path="untrained"`` asks for that fresh adapter on purpose (the training's starting point, for
    ablations); its rows are reported as ``judgeq-untrained``."""
    if path == "untrained":
        return JudgeQAdapter.init_for(model), "untrained adapter (init_for, vocab, seed 0)"
    if path:
        return JudgeQAdapter.from_pretrained(path), str(path)
    bundled = _find_bundled(BUNDLED_ADAPTER)
    name = (getattr(model.config, "_name_or_path", "") or "").lower()
    if bundled is not None and "smollm2-135m" in name:
        return JudgeQAdapter.from_pretrained(str(bundled)), f"bundled {BUNDLED_ADAPTER}"
    logger.warning("no trained Judge Q adapter found: using an UNTRAINED adapter (JudgeQAdapter.init_for)")
    return JudgeQAdapter.init_for(model), "untrained adapter"


def load_samples(
    spec: str, num_samples: int, length: int, tokenizer, *, data_dir: str | None = None, **synthetic
):
    """Samples for ``spec``: a synthetic task name, ``longbench:<dataset>`` or ``ruler:<task>``
    (``data_dir`` holds local JSONL files ``<dataset>.jsonl``; without it, the Hub via ``datasets``).
    ``synthetic`` options (``seed``, ``corpus``, ...) go to :func:`~judgeq_cache.eval.tasks.make_samples`."""
    if spec.startswith("longbench:"):
        from .longbench import load_longbench

        return load_longbench(spec.split(":", 1)[1], data_dir=data_dir, limit=num_samples)
    if spec.startswith("ruler:"):
        from .ruler import load_ruler

        return load_ruler(spec.split(":", 1)[1], data_dir=data_dir, limit=num_samples)
    from .tasks import make_samples

    return make_samples(spec, num_samples, length, tokenizer, **synthetic)
