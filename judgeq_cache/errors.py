"""Errors a user can fix by changing what they asked for.

The ``judgeq`` command line reports a :class:`UserError` as one line and exit status 2, never as a
traceback; library callers catch it like the built-in error it also derives from.
"""

from __future__ import annotations

__all__ = ["UntrainedAdapterError", "UserError"]


class UserError(Exception):
    """Bad input or a missing resource, with a message that names the fix."""


class UntrainedAdapterError(UserError, ValueError):
    """A quality figure would come from an untrained adapter, and nobody asked for that."""
