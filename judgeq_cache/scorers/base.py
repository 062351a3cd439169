"""The scorer interface: one score per prompt entry, per KV head, per layer."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from .. import kernels
from ..cache.budget import Budget
from ..tensor_parallel import HeadShards, mean_over_heads
from .spans import span_scores

#: Where a scorer's queries come from.
#: ``"none"``: keys/positions only; ``"window"``: the last prompt queries (captured during prefill);
#: ``"all"``: every prompt query; ``"appended"``: extra tokens run after prefill (soft tokens, oracle).
QuerySource = Literal["none", "window", "all", "appended"]


@dataclass(frozen=True)
class QueryNeeds:
    """The queries a scorer declares it needs; the cache builds its capture plan from this alone.

    Attributes
    ----------
    prompt : bool
        ``LayerInputs.attention`` is the attention of captured prompt queries (at a decode-time
        eviction: of every token added since the last one).
    last : int
        How many of the last prompt queries are captured during the prefill (and the last of each
        prefill chunk): for a ``prompt`` scorer, its window (0: every query of the prefill); for an
        ``appended`` scorer, the window it mixes in (``LayerInputs.window_attention``, the hybrid).
    every_query : bool
        Every prompt query (H2O), whatever ``last`` says.
    appended : bool
        ``LayerInputs.attention`` comes from tokens run after the prompt (:meth:`Scorer.appended_inputs`:
        soft tokens, the oracle's future tokens).
    """

    prompt: bool = False
    last: int = 0
    every_query: bool = False
    appended: bool = False

    @property
    def hybrid(self) -> bool:
        """An appended pass that also mixes in the last prompt queries' attention."""
        return self.appended and self.last > 0

    @property
    def any(self) -> bool:
        """Whether the scorer reads queries at all."""
        return self.prompt or self.appended


def protected_mask(key_mask: torch.Tensor, sinks: int, recent: int) -> torch.Tensor | None:
    """``[B, N]`` bool: the first ``sinks`` real tokens of each row and the last ``recent`` positions."""
    if sinks <= 0 and recent <= 0:
        return None
    n = key_mask.shape[-1]
    real_index = key_mask.long().cumsum(-1) - 1
    protected = key_mask & (real_index < sinks)
    if recent > 0:
        protected[:, max(0, n - recent) :] = True
    return protected & key_mask


@dataclass(kw_only=True)
class LayerInputs:
    """What a scorer sees for one layer.

    Attributes
    ----------
    layer_idx : int
    keys, values : Tensor ``[B, Hkv, N, D]``
        The prompt's post-RoPE keys and values.
    attention : Tensor ``[B, Hkv, N]`` or None
        Mean attention of the scorer's queries over the prompt (fp32); None for ``"none"`` scorers.
    key_mask : bool Tensor ``[B, N]``
        ``False`` marks padding.
    window_attention : Tensor ``[B, Hkv, N]`` or None
        For scorers that mix in the last prompt queries' attention (see
        :meth:`Scorer.captured_window`): that attention, captured during the prefill.
    budget : int
        Entries this layer keeps per head.
    module : nn.Module or None
        The layer's attention module (the kvpress-style escape hatch: a score from the module, the
        hidden states, the keys and the values).
    hidden_states : Tensor ``[B, N, hidden]`` or None
        The attention module's input at the prefill, for scorers with ``needs_hidden_states``; given
        at the one-shot prefill eviction only (None after chunks and at decode-time evictions).
    """

    layer_idx: int
    keys: torch.Tensor
    values: torch.Tensor
    attention: torch.Tensor | None
    key_mask: torch.Tensor
    budget: int
    window_attention: torch.Tensor | None = None
    module: nn.Module | None = None
    hidden_states: torch.Tensor | None = None


@dataclass(kw_only=True)
class Scorer(ABC):
    """Base class: subclasses set ``name`` and ``query_source`` and implement :meth:`score`.

    Parameters
    ----------
    pooling_kernel : int
        Odd window of the smoothing applied to scores before top-k (1 = none).
    pooling : {"max", "avg"}
        Smoothing operator.
    sink_tokens : int
        First real tokens always kept.
    recent_tokens : int or float
        Last prompt tokens always kept; a float in ``(0, 1]`` is that fraction of each layer's budget
        (the entries the layer keeps), so it follows fractional and per-layer budgets.
    decode_recent_tokens : int, float or None
        Newest stored entries always kept at decode-time evictions (``decode_every``), as a count or
        a fraction of each layer's budget like ``recent_tokens``; None: as ``recent_tokens``. Generated
        text mostly needs the text just before it, which a scorer of the prompt may not rank high.
    span_tokens : int
        Span-aware selection (:mod:`~judgeq_cache.scorers.spans`): half the budget keeps whole spans of
        ``2 * span_tokens + 1`` positions around the best-scored ones (0: off, a plain top-k).
    shared_heads : bool
        Keep the same positions in every KV head of a layer (scores averaged over the heads before the
        top-k, as TOVA does) instead of a separate top-k per head.
    head_shards : HeadShards or None
        Set by the cache on a tensor-parallel model (:mod:`~judgeq_cache.tensor_parallel`): the heads
        are averaged over every rank, so all ranks keep the same positions.
    """

    pooling_kernel: int = 1
    pooling: str = "max"
    sink_tokens: int = 0
    recent_tokens: int | float = 0
    decode_recent_tokens: int | float | None = None
    span_tokens: int = 0
    shared_heads: bool = False
    head_shards: HeadShards | None = dataclasses.field(default=None, repr=False, compare=False)

    name: ClassVar[str] = ""
    query_source: ClassVar[QuerySource] = "none"
    #: Keep each layer's attention input of the prefill for :attr:`LayerInputs.hidden_states`.
    needs_hidden_states: ClassVar[bool] = False
    #: Number of last prompt queries used by ``"window"`` scorers.
    window_size: int = 0

    def __post_init__(self) -> None:
        if self.pooling_kernel < 1 or self.pooling_kernel % 2 == 0:
            raise ValueError(f"pooling_kernel must be a positive odd number, got {self.pooling_kernel}")
        if self.pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {self.pooling!r}")
        if self.sink_tokens < 0 or self.recent_tokens < 0 or (self.decode_recent_tokens or 0) < 0:
            raise ValueError("sink_tokens, recent_tokens and decode_recent_tokens must be >= 0")
        if (
            isinstance(self.span_tokens, bool)
            or not isinstance(self.span_tokens, int)
            or self.span_tokens < 0
        ):
            raise ValueError(f"span_tokens must be an int >= 0 (0: off), got {self.span_tokens!r}")
        for name in ("recent_tokens", "decode_recent_tokens"):
            value = getattr(self, name)
            if isinstance(value, float) and not 0.0 < value <= 1.0:
                raise ValueError(
                    f"{name}={value}: a float is a fraction of each layer's budget and must lie in (0, 1]; "
                    "pass an int for a number of tokens"
                )

    @abstractmethod
    def score(self, inputs: LayerInputs) -> torch.Tensor:
        """Importance ``[B, Hkv, N]`` of each prompt entry (higher is kept first)."""

    def select(self, inputs: LayerInputs) -> torch.Tensor:
        """Kept indices ``[B, Hkv, budget]`` (ascending): score, average the heads if
        ``shared_heads``, protect sinks and recent tokens (sinks first, then as many of the newest
        entries as the budget leaves room for), pool, top-k. The one selection path, used
        by the cache and by the training/held-out code alike."""
        scores = self.score(inputs)
        if self.shared_heads:
            scores = mean_over_heads(scores, self.head_shards)
        sinks, recent = self.protected_counts(inputs.budget)
        recent = min(recent, max(0, inputs.budget - sinks))  # the newest ones when they cannot all fit
        pooling_kernel = self.pooling_kernel
        if self.span_tokens:  # pooled here, spans ranked first (scorers/spans.py)
            scores = span_scores(
                scores, inputs.key_mask, inputs.budget, self.span_tokens, self.pooling_kernel, self.pooling
            )
            pooling_kernel = 1
        return kernels.select_indices(
            scores,
            inputs.budget,
            key_mask=inputs.key_mask,
            protected=protected_mask(inputs.key_mask, sinks, recent),
            pooling_kernel=pooling_kernel,
            pooling=self.pooling,
        )

    def queries(self) -> QueryNeeds:
        """What queries this scorer needs (override it; the default reads an older subclass's
        ``query_source`` declaration)."""
        return _LEGACY_SOURCES[self.query_source](self)

    def captured_window(self) -> int:
        """Last prompt queries whose attention the cache captures during the prefill for this scorer
        (:attr:`QueryNeeds.last`)."""
        return self.queries().last

    def for_decoding(self) -> Scorer:
        """The scorer of decode-time evictions: this one, protecting ``decode_recent_tokens`` recent
        entries instead of ``recent_tokens``."""
        if self.decode_recent_tokens is None or self.decode_recent_tokens == self.recent_tokens:
            return self
        return dataclasses.replace(self, recent_tokens=self.decode_recent_tokens)

    def protected_counts(self, budget: int) -> tuple[int, int]:
        """``(sinks, recent)`` entries always kept for a layer keeping ``budget`` entries."""
        return self.sink_tokens, self.recent_count(budget)

    def recent_count(self, budget: int) -> int:
        """``recent_tokens`` for a layer keeping ``budget`` entries (a fraction resolved, rounded down)."""
        if isinstance(self.recent_tokens, float):
            return int(budget * self.recent_tokens)
        return self.recent_tokens

    def layer_budgets(self, budget: Budget, prompt_length: int, num_layers: int) -> list[int]:
        """Entries kept per head for each evictable layer (uniform by default)."""
        return [budget.entries(prompt_length)] * num_layers

    def appended_length(self) -> int:
        """Number of tokens :meth:`appended_inputs` will return (0 for other scorers)."""
        return 0

    def appended_inputs(self, batch_size: int, model: nn.Module) -> dict[str, torch.Tensor]:
        """Inputs of the tokens run after prefill (``"appended"`` scorers only)."""
        raise NotImplementedError(f"{type(self).__name__} has no appended tokens")


#: ``query_source`` declarations of scorers written before :meth:`Scorer.queries`.
_LEGACY_SOURCES = {
    "none": lambda scorer: QueryNeeds(),
    "window": lambda scorer: QueryNeeds(prompt=True, last=scorer.window_size),
    "all": lambda scorer: QueryNeeds(prompt=True, every_query=True),
    "appended": lambda scorer: QueryNeeds(appended=True),
}
