"""Judge Q: trained soft tokens appended after the prompt score it with global information."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..adapter import JudgeQAdapter
from ..devices import input_device
from .attention import AttentionScorer
from .base import LayerInputs, QueryNeeds, QuerySource


@dataclass(kw_only=True)
class JudgeQScorer(AttentionScorer):
    """Score = mean attention of the adapter's soft tokens over the prompt, max-pooled.

    The soft tokens run as a second, logits-free forward over the prefilled cache (equivalent to
    appending them to the prompt); their keys and values are never stored.
    """

    adapter: JudgeQAdapter | None = field(default=None, repr=False)
    #: Defaults chosen on a dev split for the bundled adapter (needle tasks, seed 1; docs/selection.md):
    #: the same positions in every KV head of a layer, max-pool 7, the soft tokens' score alone.
    #: ``shared_heads=False`` is the paper's per-head selection.
    shared_heads: bool = True
    pooling_kernel: int = 7
    #: Our choice (the paper is silent): keep 4 attention sinks and the last 8 prompt tokens (the chat
    #: template's assistant header), a few dozen bytes that decoding always needs.
    sink_tokens: int = 4
    recent_tokens: int = 8
    #: Decode-time evictions (``decode_every``) keep the newest half of each layer's budget: generated
    #: text needs the text just before it, which the soft tokens (trained on questions about the
    #: prompt) do not rank. Chosen on dev prompts (``scripts/decode_sweep.py``, docs/decode_sweep.md:
    #: 128 at budget 256, 256 at budget 512).
    decode_recent_tokens: int | float | None = 0.5
    #: Hybrid score: ``(1 - w) * soft + w * window``, where ``window`` is the attention of the last
    #: ``window_size`` prompt queries captured during the prefill (``window_size=1``: TOVA's last
    #: query). 0 = the soft tokens alone (the paper's, and the default: the hybrid helped the first
    #: bundled adapter on dev, not the current one).
    window_weight: float = 0.0
    window_size: int = 1
    name: ClassVar[str] = "judgeq"
    query_source: ClassVar[QuerySource] = "appended"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.adapter, JudgeQAdapter):
            raise TypeError(
                "JudgeQScorer needs a JudgeQAdapter: JudgeQAdapter.from_pretrained(path) or "
                f"JudgeQAdapter.init_for(model), got {type(self.adapter).__name__}"
            )
        if not 0.0 <= self.window_weight < 1.0:
            raise ValueError(f"window_weight must lie in [0, 1), got {self.window_weight}")
        if self.window_weight and self.window_size < 1:
            raise ValueError("window_weight > 0 mixes in the last prompt queries: set window_size >= 1")

    def queries(self) -> QueryNeeds:
        return QueryNeeds(appended=True, last=self.window_size if self.window_weight else 0)

    def score(self, inputs: LayerInputs) -> torch.Tensor:
        soft = super().score(inputs)
        if not self.window_weight:
            return soft
        if inputs.window_attention is None:
            raise RuntimeError(
                "judgeq with window_weight > 0 needs the last prompt queries' attention, captured during "
                "the prefill; with auto_compress=False pass it to compress(window=...)"
            )
        return (1 - self.window_weight) * soft + self.window_weight * inputs.window_attention

    def appended_length(self) -> int:
        return self.adapter.num_soft_tokens

    def appended_inputs(self, batch_size: int, model: nn.Module) -> dict[str, torch.Tensor]:
        dtype = model.get_input_embeddings().weight.dtype
        return {"inputs_embeds": self.adapter.embeds_for(batch_size, dtype, input_device(model))}
