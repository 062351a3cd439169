"""What identifies a base model whatever its path: the signature an adapter records and compares."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..devices import readable_weight
from ..utils import text_config

#: Config entries compared by :func:`signature_differences` (besides the embedding norms).
_SIGNATURE_SIZES = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)
#: Embedding rows whose norms fingerprint the weights (spread over the vocabulary).
_SIGNATURE_ROWS = 8
#: Relative tolerance of the norm comparison (the same weights in fp32, bf16 or fp16 agree well within it).
_SIGNATURE_RTOL = 1e-2


def model_signature(model: nn.Module) -> dict[str, Any]:
    """What identifies ``model`` whatever its path: ``config.model_type``, its sizes, and the norms of
    :data:`_SIGNATURE_ROWS` embedding rows spread over the vocabulary (a fingerprint of the weights
    that survives dtype casts and conversions of the same checkpoint)."""
    config = text_config(model)
    signature: dict[str, Any] = {k: getattr(config, k, None) for k in _SIGNATURE_SIZES}
    embed = model.get_input_embeddings()
    vocab = embed.weight.shape[0]
    rows = sorted({round(i * (vocab - 1) / (_SIGNATURE_ROWS - 1)) for i in range(_SIGNATURE_ROWS)})
    with torch.no_grad(), readable_weight(embed) as weight:
        norms = weight[torch.tensor(rows, device=weight.device)].float().norm(dim=-1).cpu().tolist()
    signature["embedding_rows"] = rows
    signature["embedding_norms"] = [float(f"{n:.6g}") for n in norms]
    return signature


def signature_differences(expected: dict[str, Any], model: nn.Module) -> list[str]:
    """How ``model`` differs from the model an adapter recorded in ``expected`` (empty = the same)."""
    actual = model_signature(model)
    diffs = [
        f"{key} {expected[key]!r} vs {actual[key]!r}"
        for key in _SIGNATURE_SIZES
        if expected.get(key) is not None and actual.get(key) is not None and expected[key] != actual[key]
    ]
    rows, norms = expected.get("embedding_rows"), expected.get("embedding_norms")
    comparable = not diffs and rows and norms and rows == actual["embedding_rows"]
    if comparable and any(
        not math.isclose(a, b, rel_tol=_SIGNATURE_RTOL) for a, b in zip(norms, actual["embedding_norms"])
    ):
        diffs.append("embedding weights (fingerprint of a few rows)")
    return diffs
