"""Small helpers shared across the package: one home each, no torch import at module level.

* :func:`cache_kwarg`: the forward/generate keyword a cache is passed under;
* :func:`eos_token_ids`: the token ids that end an answer;
* :func:`text_config`: the decoder's config of a (possibly multimodal) model;
* :func:`kv_bytes`: bytes of keys and values a cache stores;
* :func:`atomic_write`: write a file so that readers never see it half written.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "cache_kwarg", "eos_token_ids", "kv_bytes", "text_config"]


def cache_kwarg(model: Any) -> str:
    """``"cache"`` on transformers >= 5.24 (which renamed the argument), ``"past_key_values"`` before.

    ``model`` is anything with a ``forward`` (a model, or the base model inside it).
    """
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def text_config(model_or_config: Any) -> Any:
    """The text (decoder) config: ``config.get_text_config(decoder=True)`` where it exists (multimodal
    configs nest it), else the config itself. Takes a model or a config."""
    config = getattr(model_or_config, "config", model_or_config)
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def eos_token_ids(model: Any, tokenizer: Any = None) -> set[int]:
    """Every token id that ends an answer: the ``eos_token_id`` (an int or a list) of the model's
    generation config, its config, its text config and the tokenizer, joined."""
    config = getattr(model, "config", None)
    sources = (
        getattr(model, "generation_config", None),
        config,
        text_config(model) if config is not None else None,
    )
    ids: set[int] = set()
    for source in (*sources, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def kv_bytes(cache: Any) -> int:
    """Bytes of the keys and values stored in ``cache`` right now, all layers (any transformers
    ``Cache`` with ``layers``; layers not filled yet count 0)."""
    total = 0
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if tensor is not None and hasattr(tensor, "element_size"):
                total += tensor.numel() * tensor.element_size()
    return total


def atomic_write(target: str | os.PathLike, data: str | bytes | Callable[[str], object]) -> Path:
    """Write ``target`` all at once: into a temporary file in the same directory, then ``os.replace``.

    ``data`` is text (written as UTF-8), bytes, or a function that writes the file at the path it is
    given (e.g. ``lambda p: safetensors.torch.save_file(tensors, p)``). The file gets the permissions
    a plain ``open()`` would give it (``0o666`` less the umask). If anything fails, ``target`` is left
    as it was and the temporary file is removed. The parent directory must exist. Returns ``target``
    as a ``Path``.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        if isinstance(data, str):
            Path(tmp).write_text(data, encoding="utf-8")
        elif isinstance(data, bytes):
            Path(tmp).write_bytes(data)
        else:
            data(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
