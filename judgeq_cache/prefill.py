"""Compatibility path: this module moved to :mod:`judgeq_cache.cache.prefill` (the same module object)."""

import sys

from .cache import prefill

sys.modules[__name__] = prefill
