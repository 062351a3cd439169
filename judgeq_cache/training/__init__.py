"""Attention-alignment training of Judge Q soft tokens (``judgeq train`` and :func:`train`).

Recipe (paper + our documented choices, see ``docs/training.md``):

1. Prompts (ShareGPT-style files, ``datasets`` datasets, bundled long-context text) in the chat
   template; too long ones are middle-truncated.
2. The frozen model answers each prompt itself (greedy by default); responses are cached in a JSONL
   file and reused on resume.
3. Per prompt: prefill into a ``JudgeQCache(auto_compress=False)``; target = mean attention of the
   response tokens over the prompt keys (``cache.appended_attention(response)``, no grad); prediction =
   the same call with the soft tokens (differentiable w.r.t. ``adapter.rows``) -- the very code the cache
   uses at inference.
4. Loss over every full-attention layer and KV head (GQA: mean over the query heads of a group):
   scaled MSE (default, the paper's loss) or KL between the normalised distributions.
5. AdamW on the rows only, warm-up + cosine, gradient accumulation, checkpoints + resume, held-out
   critical-KV hit rate of Judge Q vs SnapKV.

With ``keep_prefill=True`` (default) each prompt is prefilled once and its KV kept in memory, so a
training step is only the soft-token pass (32 tokens) and its backward. Where that store does not fit,
``targets="on-the-fly"`` keeps only the responses and prefills each step's prompts again
(:mod:`.onthefly`); ``judgeq train --dry-run`` prints the memory and time plan (:mod:`.plan`). Multi-GPU: run this module
under ``accelerate launch``; prompts are sharded across processes and row gradients all-reduced.

The names below load on first use, so ``judgeq train``'s parser (:mod:`.cli`) checks its arguments
before torch is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "Example": ".data",
    "ResponseStore": ".data",
    "TrainConfig": ".config",
    "TrainData": ".config",
    "TrainingError": ".config",
    "add_arguments": ".cli",
    "alignment_loss": ".objective",
    "evaluate_hit_rates": ".objective",
    "main": ".cli",
    "plot_loss": ".outputs",
    "prepare_examples": ".data",
    "register_cli": ".cli",
    "run_cli": ".cli",
    "train": ".loop",
}

__all__ = [
    "Example",
    "ResponseStore",
    "TrainConfig",
    "TrainData",
    "TrainingError",
    "add_arguments",
    "alignment_loss",
    "evaluate_hit_rates",
    "main",
    "plot_loss",
    "prepare_examples",
    "register_cli",
    "run_cli",
    "train",
]

if TYPE_CHECKING:
    from .cli import add_arguments, main, register_cli, run_cli
    from .config import TrainConfig, TrainData, TrainingError
    from .data import Example, ResponseStore, prepare_examples
    from .loop import train
    from .objective import alignment_loss, evaluate_hit_rates
    from .outputs import plot_loss


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
