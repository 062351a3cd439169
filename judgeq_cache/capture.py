"""Compatibility path: this module moved to :mod:`judgeq_cache.cache.capture` (the same module object)."""

import sys

from .cache import capture

sys.modules[__name__] = capture
