"""The cache core: :class:`EvictionCache` / :class:`JudgeQCache` and the modules they are made of.

See ``docs/architecture.md`` for the data flow. The names below are imported on first use, so
importing one module of this package (``judgeq_cache.cache.budget``) does not import the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module of this package that defines it.
_EXPORTS = {
    "EvictionCache": ".eviction_cache",
    "JudgeQCache": ".judgeq",
    "Budget": ".budget",
    "SharedPrefill": ".prefill",
    "Trigger": ".schedule",
    "DecodeEvery": ".schedule",
}

__all__ = ["Budget", "DecodeEvery", "EvictionCache", "JudgeQCache", "SharedPrefill", "Trigger"]

if TYPE_CHECKING:
    from .budget import Budget
    from .eviction_cache import EvictionCache
    from .judgeq import JudgeQCache
    from .prefill import SharedPrefill
    from .schedule import DecodeEvery, Trigger


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
