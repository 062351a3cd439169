"""The cache core: :class:`EvictionCache` / :class:`JudgeQCache` and the modules they are made of.

See ``docs/architecture.md`` for the data flow. The names below are imported on first use, so
importing one module of this package (``judgeq_cache.cache.budget``) does not import the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
