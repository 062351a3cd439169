"""Triggers: plug-in objects that decide when a compressed cache evicts again.

After the prefill is compressed, every forward into the cache (a decoded token, a question, a
second turn) is reported to each of the cache's triggers with the number of tokens it added; when
one of them says an eviction is due, the cache scores what it stores with the queries of every
token added since the last eviction (for scorers that read queries), keeps the scorer's
``decode_recent_tokens`` newest entries and evicts back to the budget, through the same selection
and compaction as the prefill. A trigger owns its state: the cache calls :meth:`Trigger.reset` from
its own ``reset()`` and copies triggers with the cache (``fork``, ``copy.deepcopy``).

A new trigger is one subclass of :class:`Trigger`, passed as ``EvictionCache(..., triggers=[...])``::

    class EverySecondForward(Trigger):
        def __init__(self):
            self.forwards = 0

        def reset(self):
            self.forwards = 0

        def after_forward(self, tokens):
            self.forwards += 1
            return self.forwards % 2 == 0

(``decode_every=N`` is :class:`DecodeEvery` ``(N)``.) The prefill itself is evicted once when it
returns, or after each chunk of a chunked prefill (:mod:`judgeq_cache.triggers`).
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Sequence


class Trigger(ABC):
    """When a compressed cache evicts again (see the module docstring)."""

    @abstractmethod
    def after_forward(self, tokens: int) -> bool:
        """A forward added ``tokens`` tokens to the compressed cache; return True to evict now."""

    def reset(self) -> None:  # noqa: B027 (a trigger without state needs nothing here)
        """Forget everything counted so far (the cache was reset)."""


class DecodeEvery(Trigger):
    """``decode_every=N``: evict once ``N`` tokens were added since the last eviction (or since the
    prefill), back to the budget (an ``int`` as it is; a fraction of each row's prompt length),
    keeping the scorer's ``decode_recent_tokens`` newest entries (Judge Q: half of each layer's
    budget). The cache then never stores more than ``max(budget, kept prompt) + N - 1 + T`` entries
    per KV head, ``T`` the tokens of the largest forward after the prefill (so ``+ N`` when decoding
    token by token; a 10-token question right after ``N - 1`` decoded tokens reaches the bound)."""

    def __init__(self, every: int) -> None:
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
            raise ValueError(f"decode_every must be a positive int (tokens between evictions), got {every!r}")
        self.every = int(every)
        self.since = 0

    def after_forward(self, tokens: int) -> bool:
        self.since += tokens
        if self.since < self.every:
            return False
        self.since = 0
        return True

    def reset(self) -> None:
        self.since = 0

    def __repr__(self) -> str:
        return f"DecodeEvery({self.every})"


def make_triggers(decode_every: int | None, triggers: Sequence[Trigger]) -> list[Trigger]:
    """A cache's triggers: ``DecodeEvery(decode_every)`` (unless None), then ``triggers``."""
    made = [] if decode_every is None else [DecodeEvery(decode_every)]
    for trigger in triggers:
        if not isinstance(trigger, Trigger):
            raise TypeError(f"triggers must be judgeq_cache.Trigger instances, got {type(trigger).__name__}")
        made.append(trigger)
    return made
