"""JudgeQCache: an :class:`~judgeq_cache.cache.EvictionCache` scored by a trained adapter's soft tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedModel

from ..adapter import JudgeQAdapter
from ..scorers import JudgeQScorer
from .budget import Budget
from .eviction_cache import EvictionCache
from .schedule import Trigger


class JudgeQCache(EvictionCache):
    """Eviction scored by a trained :class:`JudgeQAdapter`'s soft tokens.

    ``JudgeQCache(model, JudgeQAdapter.from_pretrained(path), budget=512)`` then
    ``model.generate(**inputs, past_key_values=cache)``.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        adapter: JudgeQAdapter,
        budget: int | float | Budget,
        *,
        auto_compress: bool = True,
        decode_every: int | None = None,
        triggers: Sequence[Trigger] = (),
        **scorer_options: Any,
    ) -> None:
        if not isinstance(adapter, JudgeQAdapter):
            raise TypeError(
                f"JudgeQCache needs a JudgeQAdapter, got {type(adapter).__name__}; "
                "use JudgeQAdapter.from_pretrained(path_or_hub_id) or JudgeQAdapter.init_for(model)"
            )
        adapter.check_compatible(model)
        scorer = JudgeQScorer(adapter=adapter, **scorer_options)
        super().__init__(
            model, budget, scorer, auto_compress=auto_compress, decode_every=decode_every, triggers=triggers
        )

    @property
    def adapter(self) -> JudgeQAdapter:
        return self.scorer.adapter


# The public import path (``from judgeq_cache.cache import JudgeQCache``), also for pickling.
JudgeQCache.__module__ = "judgeq_cache.cache"
