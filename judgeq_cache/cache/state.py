"""The state of an :class:`~judgeq_cache.cache.EvictionCache`, in two small dataclasses.

The cache is a list of layers (keys and values, :mod:`.layers`) plus these two records; the modules
that act on forwards (:mod:`.compression`, :mod:`.triggers`) read and write them and keep nothing of
their own.

- :class:`PromptState`: what the cache learned from the prompt it holds (its record, the kept
  positions, the attention kept for later evictions, whether it is compressed). ``reset()`` replaces
  it with a fresh one, ``fork()`` and ``stack()`` build theirs from it, ``copy.deepcopy`` copies it.
- :class:`ForwardState`: the bookkeeping of the forward running now (nesting depth, the capture it
  opened, the scoring pass); it outlives ``reset()``, which may be called between forwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..utils import cache_kwarg
from .capture import AttentionCapture, attention_implementations, attention_modules
from .prefill_record import Drafts, PrefillRecord

if TYPE_CHECKING:
    from .triggers import PrefillTrigger


@dataclass
class QueryScores:
    """The summed attention of every query added since the last eviction, per layer, over the stored
    entries (``[B, Hkv, stored]``; entries added later have seen fewer queries)."""

    sums: dict[int, torch.Tensor] = field(default_factory=dict)
    queries: int = 0

    def add(self, scores: dict[int, torch.Tensor], count: int) -> None:
        """Add the mean attention ``scores`` of ``count`` queries of one forward."""
        for layer, mean in scores.items():
            total = mean.detach() * count
            old = self.sums.get(layer)
            if old is not None:
                total[..., : old.shape[-1]] += old
            self.sums[layer] = total
        self.queries += count

    def mean(self) -> dict[int, torch.Tensor] | None:
        if not self.queries:
            return None
        return {layer: total / self.queries for layer, total in self.sums.items()}

    def clear(self) -> None:
        self.sums, self.queries = {}, 0


@dataclass
class PromptState:
    """What an :class:`~judgeq_cache.cache.EvictionCache` knows about the prompt it holds.

    Attributes
    ----------
    prompt_length : int
        Tokens in the prompt (in a chunked prefill, the chunks so far).
    kept_indices : dict[int, Tensor]
        Logical positions each evicted layer kept at its last eviction, ``[B, Hkv, k]``.
    compression_seconds : float
        Wall time spent scoring and evicting this prompt (all chunks and decode-time evictions).
    prefill : PrefillRecord or None
        The prompt's length, padding and positions (None before the prefill).
    drafts : Drafts or None
        Candidate tokens of assisted decoding that arrived with the prefill forward.
    last_queries : dict[int, Tensor] or None
        The last prompt queries' attention ``{layer: [B, Hkv, N]}``, kept for scorers that mix it
        into their own (:attr:`~judgeq_cache.scorers.QueryNeeds.hybrid`).
    hidden_states : dict[int, Tensor]
        Each layer's attention input at the prefill, for scorers that read it.
    compressed : bool
        The prompt was compressed (or compression was skipped); later forwards append.
    failed : bool
        The prefill forward raised and left the cache half filled (only ``reset()`` helps).
    prefill_trigger : PrefillTrigger or None
        When the prefill under way is evicted (:class:`~.triggers.OneShot`,
        :class:`~.triggers.ChunkedPrefill`); None before the prefill and once it is compressed.
    decode_queries : QueryScores
        Attention of the tokens added since the last eviction, for decode-time eviction.
    decode_budgets : list[list[int]] or None
        Entries kept per KV head by decode-time eviction, ``[layer][row]`` (computed once).
    """

    prompt_length: int = 0
    kept_indices: dict[int, torch.Tensor] = field(default_factory=dict)
    compression_seconds: float = 0.0
    prefill: PrefillRecord | None = None
    drafts: Drafts | None = None
    last_queries: dict[int, torch.Tensor] | None = None
    hidden_states: dict[int, torch.Tensor] = field(default_factory=dict)
    compressed: bool = False
    failed: bool = False
    prefill_trigger: PrefillTrigger | None = None
    decode_queries: QueryScores = field(default_factory=QueryScores)
    decode_budgets: list[list[int]] | None = None

    @property
    def chunking(self) -> bool:
        """Whether a chunked prefill is under way (evicted after each chunk)."""
        return self.prefill_trigger is not None and self.prefill_trigger.chunked

    def prefilled(self) -> PromptState:
        """A fresh state holding this one's uncompressed prefill (what ``fork()`` starts from)."""
        return PromptState(
            prompt_length=self.prompt_length,
            prefill=self.prefill,
            drafts=self.drafts,
            last_queries=self.last_queries,
            hidden_states=dict(self.hidden_states),
        )


@dataclass(frozen=True, eq=False)
class ModelBinding:
    """What a cache knows of the model it was built for; fixed for the cache's life and shared by its
    copies (``fork``, ``copy.deepcopy``)."""

    model: nn.Module = field(repr=False)
    base_model: nn.Module = field(repr=False)
    #: The attention modules of the decoder, and the same by layer index.
    attention_modules: tuple[nn.Module, ...] = field(repr=False)
    attention_by_layer: dict[int, nn.Module] = field(repr=False)
    #: The attention implementations the modules use (``"sdpa"``, ``"eager"``, ...).
    attention_implementations: frozenset[str]
    #: The forward argument a cache is passed as (``"cache"`` on transformers >= 5.24).
    cache_kwarg: str
    #: The full-attention layers the cache scores and evicts.
    evictable: tuple[int, ...]

    @classmethod
    def of(cls, model: nn.Module, evictable: tuple[int, ...]) -> ModelBinding:
        """The binding of a cache built for ``model`` that evicts the layers ``evictable``."""
        base = model.base_model
        modules = tuple(attention_modules(base))
        return cls(
            model=model,
            base_model=base,
            attention_modules=modules,
            attention_by_layer={m.layer_idx: m for m in modules},
            attention_implementations=frozenset(attention_implementations(model)),
            cache_kwarg=cache_kwarg(base),
            evictable=evictable,
        )


@dataclass
class ForwardState:
    """The bookkeeping of the forward that runs now (see the module docstring).

    Attributes
    ----------
    depth : int
        Decoder forwards into this cache that started and have not returned.
    logits_to_keep : Any
        The running model call's ``logits_to_keep`` (candidates of assisted decoding).
    scoring_pass : bool
        Inside :meth:`~judgeq_cache.cache.EvictionCache.scoring_pass`: forwards attend over the cache
        and store nothing.
    manual_chunks : bool
        Inside ``with cache.chunked_prefill():``.
    capture : AttentionCapture or None
        The query capture this forward opened.
    step : PrefillRecord or None
        The tokens this forward adds after the prefill (a chunk, decoded tokens).
    """

    depth: int = 0
    logits_to_keep: Any = None
    scoring_pass: bool = False
    manual_chunks: bool = False
    capture: AttentionCapture | None = None
    step: PrefillRecord | None = None

    @contextlib.contextmanager
    def scoring(self) -> Iterator[None]:
        """Mark the forwards inside the block as a scoring pass."""
        self.scoring_pass = True
        try:
            yield
        finally:
            self.scoring_pass = False
