"""Compatibility path: this module moved to :mod:`judgeq_cache.cache.budget` (the same module object)."""

import sys

from .cache import budget

sys.modules[__name__] = budget
