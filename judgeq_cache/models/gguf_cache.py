"""Converting a GGUF once into a safetensors cache, and loading that cache.

The first load of an embedded model dequantises its GGUF with transformers (``gguf_file=``; needs
the ``gguf`` and ``accelerate`` packages, ~20-30 s on a CPU) and saves a float32 safetensors copy
plus the tokenizer under the cache dir; later loads read that copy (~1 s). The copy is written to a
temporary directory and renamed into place, so an interrupted conversion is never reused.

Cache location: ``$JUDGEQ_CACHE_DIR/models/<name>``, else ``~/.cache/judgeq_cache/models/<name>``
(or the ``cache_dir`` a loader is given). Which models exist, and where their GGUF comes from, is
the table in :mod:`judgeq_cache.models.specs`.
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .specs import EmbeddedModel

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_FORMAT",
    "META_FILE",
    "convert_gguf",
    "default_cache_root",
    "gguf_deps_hint",
    "have_gguf_deps",
    "load_cached",
    "package_dir",
    "valid_cache",
]

#: Bump when the on-disk layout of a converted cache changes: older caches are then rebuilt.
CACHE_FORMAT = 1
#: Written last into a converted cache: its presence marks a complete conversion.
META_FILE = "judgeq_conversion.json"


def gguf_deps_hint() -> str:
    return "pip install 'gguf>=0.10' 'accelerate>=1.0'  (or: pip install 'judgeq-cache[embedded]')"


def default_cache_root() -> Path:
    """``$JUDGEQ_CACHE_DIR`` or ``~/.cache/judgeq_cache``."""
    env = os.environ.get("JUDGEQ_CACHE_DIR", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "judgeq_cache"


def package_dir(package: str) -> Path | None:
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


def valid_cache(path: Path) -> bool:
    meta = path / META_FILE
    if not (meta.is_file() and (path / "config.json").is_file()):
        return False
    if not any(path.glob("*.safetensors")):
        return False
    try:
        return json.loads(meta.read_text()).get("format") == CACHE_FORMAT
    except (OSError, ValueError):
        return False


def have_gguf_deps() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("gguf", "accelerate"))


def _rebuild_byte_level_bpe(tokenizer: Any, spec: EmbeddedModel, max_len: int | None) -> Any:
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


def _fix_tokenizer(tokenizer: Any, spec: EmbeddedModel, max_len: int | None) -> Any:
    tokenizer = _rebuild_byte_level_bpe(tokenizer, spec, max_len)
    vocab = tokenizer.get_vocab()
    for attr, token in spec.special_tokens:
        if token in vocab:
            setattr(tokenizer, attr, token)
    if max_len:
        tokenizer.model_max_length = int(max_len)
    return tokenizer


def _check_tokenizer(tokenizer: Any, spec: EmbeddedModel) -> None:
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


def convert_gguf(gguf: Path, target: Path, spec: EmbeddedModel, extra_meta: dict[str, Any]) -> None:
    """Dequantise ``gguf`` with transformers and save safetensors + tokenizer atomically to ``target``."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not have_gguf_deps():
        raise ImportError(
            f"Converting the {spec.model_id} GGUF needs 'gguf' and 'accelerate': {gguf_deps_hint()}"
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
            "format": CACHE_FORMAT,
            "model_id": spec.model_id,
            "source_gguf": gguf.name,
            "source_gguf_bytes": gguf.stat().st_size,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "dtype": "float32",
            **extra_meta,
        }
        # Written last: its presence marks a complete conversion.
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700: a shared cache should be readable
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        del model
        if target.exists():
            # Stale/incomplete cache (or a concurrent process finished first): replace only if invalid.
            if valid_cache(target):
                shutil.rmtree(tmp, ignore_errors=True)
                return
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not valid_cache(target):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("judgeq_cache: converted %s in %.1f s -> %s", spec.model_id, time.perf_counter() - t0, target)


def load_cached(
    path: Path, spec: EmbeddedModel, dtype: torch.dtype, attn_implementation: str | None
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
