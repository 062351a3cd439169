"""Prepared examples on disk: each token prompt prefilled once, its KV and attention targets saved.

Preparing is the expensive part of training (a full prefill per prompt; ~10 s for 2k tokens on a
2-core CPU), and its results do not depend on the soft tokens. :func:`prepare_to_disk` writes one
``<id>.safetensors`` per prompt (KV in fp16, targets and baseline attention in fp32) and skips files
that exist, so an interrupted run resumes and every later training run, loss variant or selection
sweep reuses the same data. :class:`DiskExample` loads the small tensors eagerly and the KV only when
a step needs it, so hundreds of 2k-token prompts fit in a few hundred MB of RAM.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from ..cache import EvictionCache
from .facts import TokenPrompt

logger = logging.getLogger(__name__)

__all__ = ["DiskExample", "load_prepared", "prepare_to_disk"]

#: Last prompt queries captured for the SnapKV baseline (its default window).
WINDOW = 32


@dataclass
class DiskExample:
    """One prepared prompt (batch of one). ``target``/``window``/``last`` are
    ``{layer: [1, Hkv, N]}`` fp32: the futures' mean attention, the last-32 and the last-query
    attention (SnapKV's and TOVA's scores)."""

    id: str
    path: Path
    input_ids: torch.Tensor
    target: dict[int, torch.Tensor]
    window: dict[int, torch.Tensor]
    last: dict[int, torch.Tensor]
    needles: list[int]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return [self.id]

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.ones_like(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [self.input_ids.shape[1]]

    def kv(self, dtype: torch.dtype, device: torch.device | str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The prompt's KV per layer, read from disk."""
        tensors = load_file(self.path, device=str(device))
        layers = len([k for k in tensors if k.startswith("k.")])
        return [(tensors[f"k.{i}"].to(dtype), tensors[f"v.{i}"].to(dtype)) for i in range(layers)]

    def prefilled(self, model: nn.Module, cache: EvictionCache) -> EvictionCache:
        """``cache`` (new, empty, built for ``model``) holding this prompt's prefill."""
        weight = model.get_input_embeddings().weight
        cache.load_prefill(self.kv(weight.dtype, weight.device))
        return cache


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)


@torch.no_grad()
def _prepare_one(model: nn.Module, prompt: TokenPrompt, path: Path) -> None:
    device = model.get_input_embeddings().weight.device
    ids = torch.tensor([prompt.prompt_ids], device=device)
    n = ids.shape[1]
    cache = EvictionCache(model, 1, "random", auto_compress=False)
    w = min(WINDOW, n)
    window = cache.query_capture(slice(n - w, None), n - w, n, None)
    last = cache.query_capture(slice(n - 1, None), n - 1, n, None)
    with window, last:
        model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache.cache_kwarg: cache})
    target: dict[int, torch.Tensor] = {}
    for future in prompt.futures:
        scores = cache.appended_attention({"input_ids": torch.tensor([future], device=device)})
        for layer, s in scores.items():
            target[layer] = target.get(layer, 0) + s / len(prompt.futures)
    tensors = {"input_ids": ids.cpu(), "needles": torch.tensor(prompt.needles, dtype=torch.long)}
    for i, layer in enumerate(cache.layers):
        tensors[f"k.{i}"] = layer.keys.half().cpu().contiguous()
        tensors[f"v.{i}"] = layer.values.half().cpu().contiguous()
    for name, scores in (("target", target), ("window", window.scores), ("last", last.scores)):
        for layer, s in scores.items():
            tensors[f"{name}.{layer}"] = s.float().cpu().contiguous()
    _atomic_save(tensors, path, {"id": prompt.id, "meta": json.dumps(prompt.meta)})


def prepare_to_disk(
    model: nn.Module, prompts: Sequence[TokenPrompt], directory: str | os.PathLike, *, progress: bool = True
) -> list[DiskExample]:
    """Prefill every prompt once and save its KV and attention targets under ``directory``.

    Prompts whose file exists are skipped (resume). Returns the examples in prompt order.
    """
    from tqdm.auto import tqdm

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.eval()
    todo = [p for p in prompts if not (directory / f"{p.id}.safetensors").is_file()]
    if len(todo) < len(prompts):
        logger.info(
            "%s: %d of %d prompts already prepared", directory, len(prompts) - len(todo), len(prompts)
        )
    for prompt in tqdm(todo, desc=f"prepare {directory.name}", disable=not progress):
        _prepare_one(model, prompt, directory / f"{prompt.id}.safetensors")
    return [load_prepared(directory / f"{p.id}.safetensors") for p in prompts]


def load_prepared(path: str | os.PathLike) -> DiskExample:
    """A :class:`DiskExample` from one prepared file (the KV stays on disk until needed)."""
    path = Path(path)
    small: dict[str, dict[int, torch.Tensor]] = {"target": {}, "window": {}, "last": {}}
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        input_ids = f.get_tensor("input_ids")
        needles = f.get_tensor("needles").tolist()
        for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            name, _, layer = key.partition(".")
            if name in small:
                small[name][int(layer)] = f.get_tensor(key)
    return DiskExample(
        id=metadata.get("id", path.stem),
        path=path,
        input_ids=input_ids,
        target=small["target"],
        window=small["window"],
        last=small["last"],
        needles=needles,
        meta=json.loads(metadata.get("meta", "{}")),
    )
