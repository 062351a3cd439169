"""A model's shape from its config alone (no weights): what the training plan and the targets rule need.

:func:`resolve_shape` finds the config offline, in this order, and says which one it used:

1. ``--config-json PATH`` (a ``config.json`` file, or a directory holding one);
2. ``--model DIR`` when ``DIR`` is a local model directory (``transformers.AutoConfig``, offline);
3. an embedded model's alias (``smollm2``, ``gemma3``), looked up by its Hub id in the table below;
4. :data:`KNOWN_CONFIGS`, a small built-in table of well-known Hub ids (case-insensitive);
5. the local Hugging Face cache (``AutoConfig.from_pretrained(..., local_files_only=True)``).

The network is never used.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["KNOWN_CONFIGS", "ModelShape", "resolve_shape"]

#: The ``config.json`` fields the plan reads, in the order of a :func:`_config` row.
_FIELDS = (
    "model_type",
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
    "max_position_embeddings",
)


def _config(*row: Any, **extra: Any) -> dict[str, Any]:
    """A ``config.json`` dict from one row of :data:`_FIELDS` values (None: the field is absent) and
    ``extra`` fields."""
    return {field: value for field, value in zip(_FIELDS, row, strict=True) if value is not None} | extra


# type, layers, hidden, intermediate, q heads, KV heads, head dim, vocab, tied, max positions
_LLAMA_8B = _config("llama", 32, 4096, 14336, 32, 8, 128, 128256, False, 131072)
_LLAMA_3B = _config("llama", 28, 3072, 8192, 24, 8, 128, 128256, True, 131072)
_LLAMA_1B = _config("llama", 16, 2048, 8192, 32, 8, 64, 128256, True, 131072)
_QWEN_7B = _config("qwen2", 28, 3584, 18944, 28, 4, None, 152064, False, 32768)
_MISTRAL_7B = _config("mistral", 32, 4096, 14336, 32, 8, 128, 32768, False, 32768)
_SMOLLM2_135M = _config("llama", 30, 576, 1536, 9, 3, None, 49152, True, 8192)
_GEMMA3_270M = _config(
    "gemma3_text", 18, 640, 2048, 4, 1, 256, 262144, True, 32768, sliding_window=512, sliding_window_pattern=6
)

#: Well-known Hub ids (lower case) -> the fields of their ``config.json`` that the plan reads.
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "meta-llama/llama-3.1-8b": _LLAMA_8B,
    "meta-llama/llama-3.1-8b-instruct": _LLAMA_8B,
    "meta-llama/llama-3.2-3b": _LLAMA_3B,
    "meta-llama/llama-3.2-3b-instruct": _LLAMA_3B,
    "meta-llama/llama-3.2-1b": _LLAMA_1B,
    "meta-llama/llama-3.2-1b-instruct": _LLAMA_1B,
    "qwen/qwen2.5-7b": _QWEN_7B,
    "qwen/qwen2.5-7b-instruct": _QWEN_7B,
    "mistralai/mistral-7b-instruct-v0.3": _MISTRAL_7B,
    "huggingfacetb/smollm2-135m": _SMOLLM2_135M,
    "huggingfacetb/smollm2-135m-instruct": _SMOLLM2_135M,
    "google/gemma-3-270m": _GEMMA3_270M,
    "google/gemma-3-270m-it": _GEMMA3_270M,
}


@dataclass(frozen=True)
class ModelShape:
    """The sizes the plan needs. ``source`` says where they came from."""

    name: str
    source: str
    num_layers: int
    hidden: int
    intermediate: int
    q_heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    full_layers: int  # full-attention layers: the ones the cache evicts and the loss scores
    sliding_window: int | None = None  # the other layers keep at most this many entries
    qkv_bias: bool = False

    @property
    def sliding_layers(self) -> int:
        return self.num_layers - self.full_layers

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (attention, gated MLP, two norms)."""
        h, d = self.hidden, self.head_dim
        attn = 2 * h * self.q_heads * d + 2 * h * self.kv_heads * d
        if self.qkv_bias:
            attn += (self.q_heads + 2 * self.kv_heads) * d
        return attn + 3 * h * self.intermediate + 2 * h

    @property
    def matmul_params(self) -> int:
        """Parameters every token multiplies through (the decoder layers; no embeddings, no LM head)."""
        return self.num_layers * self.layer_params

    @property
    def params(self) -> int:
        """All parameters: layers, final norm, embeddings and (untied) LM head."""
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.matmul_params + self.hidden + embed

    def kv_entries(self, tokens: int) -> int:
        """Cached positions summed over layers for a ``tokens``-long prompt (sliding layers are capped)."""
        window = tokens if self.sliding_window is None else min(tokens, self.sliding_window)
        return self.full_layers * tokens + self.sliding_layers * window

    def kv_bytes(self, tokens: int, dtype_bytes: int) -> int:
        """Keys and values of one prompt of ``tokens`` tokens."""
        return 2 * self.kv_heads * self.head_dim * dtype_bytes * self.kv_entries(tokens)

    def target_bytes(self, tokens: int) -> int:
        """One fp32 attention map ``{layer: [Hkv, N]}`` over the evicted layers (a target, a prediction)."""
        return 4 * self.full_layers * self.kv_heads * tokens

    @classmethod
    def from_dict(cls, config: dict[str, Any], name: str, source: str) -> ModelShape:
        """From a ``config.json`` dict (a multimodal config's ``text_config`` is used when present)."""
        config = dict(config.get("text_config") or config)
        try:
            layers = int(config["num_hidden_layers"])
            hidden = int(config["hidden_size"])
            q_heads = int(config["num_attention_heads"])
            intermediate = int(config["intermediate_size"])
            vocab = int(config["vocab_size"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: not a causal LM config (missing or bad field {err})") from None
        kv_heads = int(config.get("num_key_value_heads") or q_heads)
        head_dim = int(config.get("head_dim") or hidden // q_heads)
        types = config.get("layer_types")
        pattern = config.get("sliding_window_pattern")
        window = config.get("sliding_window")
        if types:
            full = sum(1 for t in types if t != "sliding_attention")
        elif window and pattern:
            full = sum(1 for i in range(layers) if (i + 1) % int(pattern) == 0)
        else:
            full = layers
        return cls(
            name=name,
            source=source,
            num_layers=layers,
            hidden=hidden,
            intermediate=intermediate,
            q_heads=q_heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            vocab=vocab,
            tied=bool(config.get("tie_word_embeddings", True)),
            full_layers=full,
            sliding_window=int(window) if window and full < layers else None,
            qkv_bias=bool(config.get("attention_bias")) or config.get("model_type") == "qwen2",
        )


def shape_of_model(model: Any) -> ModelShape:
    """The shape of a loaded model, from its config."""
    from ..utils import text_config

    config = text_config(model).to_dict()
    return ModelShape.from_dict(config, str(getattr(model, "name_or_path", "")), "the loaded model's config")


def resolve_shape(model: str, config_json: str | None = None) -> ModelShape:
    """The shape of ``model`` from its config, offline (see the module docstring for the order).

    Raises ``ValueError`` naming the fix (``--config-json``) when no config is found.
    """
    if config_json:
        path = Path(config_json).expanduser()
        path = path / "config.json" if path.is_dir() else path
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"--config-json {config_json}: cannot read it as JSON ({err})") from None
        return ModelShape.from_dict(data, model, f"--config-json {path}")
    local = Path(model).expanduser()
    if local.is_dir():
        from transformers import AutoConfig

        return ModelShape.from_dict(
            AutoConfig.from_pretrained(local).to_dict(), model, f"{local}/config.json"
        )
    from ..models import embedded_model

    spec = embedded_model(model)
    hub_id = spec.model_id if spec is not None else model
    known = KNOWN_CONFIGS.get(hub_id.lower())
    if known is not None:
        return ModelShape.from_dict(known, hub_id, f"the built-in table entry for {hub_id}")
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(hub_id, local_files_only=True)
    except (OSError, ValueError) as err:
        logger.debug("no cached config for %s: %s", hub_id, err)
    else:
        return ModelShape.from_dict(config.to_dict(), hub_id, f"the Hugging Face cache's config of {hub_id}")
    raise ValueError(
        f"no config for {model!r} offline: pass --config-json path/to/config.json (the model's config.json "
        f"from the Hub), or a local model directory as --model; built-in: {', '.join(sorted(KNOWN_CONFIGS))}"
    )
