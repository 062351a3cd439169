"""judgeq-cache: trained-query (Judge Q) KV-cache eviction for Hugging Face transformers.

>>> cache = JudgeQCache(model, JudgeQAdapter.from_pretrained("path/or/hub-id"), budget=512)
>>> out = model.generate(**inputs, past_key_values=cache, max_new_tokens=128)

The names below are imported on first use, so ``import judgeq_cache`` (and ``judgeq --help``) does
not import torch or transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

__version__ = "0.1.0"

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "JudgeQAdapter": ".adapter",
    "JudgeQAdapterConfig": ".adapter",
    "Budget": ".cache.budget",
    "EvictionCache": ".cache.eviction_cache",
    "JudgeQCache": ".cache.judgeq",
    "DecodeEvery": ".cache.schedule",
    "Trigger": ".cache.schedule",
    "SCORERS": ".scorers",
    "Scorer": ".scorers",
    "make_scorer": ".scorers",
}

__all__ = [
    "SCORERS",
    "Budget",
    "DecodeEvery",
    "EvictionCache",
    "JudgeQAdapter",
    "JudgeQAdapterConfig",
    "JudgeQCache",
    "Scorer",
    "Trigger",
    "__version__",
    "make_scorer",
]

if TYPE_CHECKING:
    from .adapter import JudgeQAdapter, JudgeQAdapterConfig
    from .cache.budget import Budget
    from .cache.eviction_cache import EvictionCache
    from .cache.judgeq import JudgeQCache
    from .cache.schedule import DecodeEvery, Trigger
    from .scorers import SCORERS, Scorer, make_scorer


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
