"""JudgeQAdapter: the trained soft-token embedding rows and their configuration."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import weakref
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .utils import atomic_write

logger = logging.getLogger(__name__)


@dataclass
class JudgeQAdapterConfig:
    """What an adapter was made for and how.

    Attributes
    ----------
    base_model : str
        Name or path of the model the rows were trained on (``config._name_or_path``).
    model_type : str
        ``config.model_type`` of that model (``"llama"``, ``"qwen2"``...).
    hidden_size : int
        Width of each soft-token row; must equal the model's embedding width.
    num_soft_tokens : int
        Number of rows (the paper uses 32).
    init : str
        How the rows were initialised (see :meth:`JudgeQAdapter.init_for`).
    model_signature : dict
        What identifies the base model whatever its path: architecture, sizes and the norms of a few
        embedding rows (see :func:`model_signature`). Empty in adapters saved before it existed.
    """

    base_model: str
    model_type: str
    hidden_size: int
    num_soft_tokens: int
    init: str = "vocab"
    dtype: str = "float32"
    library_version: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    model_signature: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "adapter_config.json") -> JudgeQAdapterConfig:
        """Validate ``data`` (parsed ``adapter_config.json``) and build a config; unknown keys are ignored."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if "peft_type" in data and "adapter_type" not in data:
            raise ValueError(
                f"{source}: this is a PEFT adapter config (peft_type={data['peft_type']!r}), not a Judge Q adapter; "
                "load it with peft (PeftModel.from_pretrained), or pass a directory written by "
                "JudgeQAdapter.save_pretrained"
            )
        version = data.get("format_version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"{source}: format_version must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"{source}: format_version {version} is newer than this judgeq-cache reads (up to "
                f"{FORMAT_VERSION}); upgrade it: pip install -U judgeq-cache"
            )
        kind = data.get("adapter_type", ADAPTER_TYPE)
        if kind != ADAPTER_TYPE:
            hint = ""
            if "peft_type" in data:
                hint = f" (this is a PEFT {data['peft_type']} adapter; load it with peft, not judgeq_cache)"
            raise ValueError(f"{source}: adapter_type is {kind!r}, expected {ADAPTER_TYPE!r}{hint}")
        missing = [k for k in _REQUIRED_KEYS if k not in data]
        if missing:
            raise ValueError(f"{source}: missing required keys {missing}; is this a Judge Q adapter config?")
        for key in ("hidden_size", "num_soft_tokens"):
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{source}: {key} must be a positive integer, got {value!r}")
        for key in ("base_model", "model_type"):
            if not isinstance(data[key], str):
                raise ValueError(f"{source}: {key} must be a string, got {data[key]!r}")
        dtype = data.get("dtype", "float32")
        if dtype not in _DTYPES:
            raise ValueError(f"{source}: dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        for key in ("training", "metrics", "model_signature"):
            if key in data and not isinstance(data[key], dict):
                raise ValueError(f"{source}: {key} must be a JSON object, got {type(data[key]).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names - _FILE_KEYS)
        if unknown:
            logger.debug("%s: ignoring unknown keys %s", source, unknown)
        return cls(**{k: v for k, v in data.items() if k in names})


#: ``adapter_type`` written to ``adapter_config.json`` (PEFT files carry ``peft_type`` instead).
ADAPTER_TYPE = "JUDGEQ"
#: File-format version of ``adapter_config.json`` + ``adapter_model.safetensors``.
FORMAT_VERSION = 1
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
#: The one tensor in ``adapter_model.safetensors``.
TENSOR_KEY = "soft_tokens"
_REQUIRED_KEYS = ("base_model", "model_type", "hidden_size", "num_soft_tokens")
_FILE_KEYS = {"adapter_type", "format_version"}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _text_config(model: nn.Module):
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


#: Models already warned about, per adapter ``id`` (so the mismatch warning is logged once, not for
#: every cache built with the pair).
_WARNED: weakref.WeakKeyDictionary[nn.Module, set[int]] = weakref.WeakKeyDictionary()

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
    config = _text_config(model)
    signature: dict[str, Any] = {k: getattr(config, k, None) for k in _SIGNATURE_SIZES}
    weight = model.get_input_embeddings().weight
    vocab = weight.shape[0]
    rows = sorted({round(i * (vocab - 1) / (_SIGNATURE_ROWS - 1)) for i in range(_SIGNATURE_ROWS)})
    with torch.no_grad():
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


class JudgeQAdapter(nn.Module):
    """Soft-token rows ``[num_soft_tokens, hidden_size]`` fed to the model as ``inputs_embeds``.

    Only these rows are trained; the model stays frozen. They never become vocabulary ids, so
    tied-embedding models cannot emit them.
    """

    def __init__(self, rows: torch.Tensor, config: JudgeQAdapterConfig):
        super().__init__()
        if rows.ndim != 2:
            raise ValueError(
                f"soft-token rows must be 2-D [num_soft_tokens, hidden_size], got {tuple(rows.shape)}"
            )
        if tuple(rows.shape) != (config.num_soft_tokens, config.hidden_size):
            raise ValueError(
                f"rows have shape {tuple(rows.shape)} but the config says "
                f"[{config.num_soft_tokens}, {config.hidden_size}]"
            )
        self.rows = nn.Parameter(rows.detach().clone().float())
        self.config = config

    @property
    def num_soft_tokens(self) -> int:
        return self.rows.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.rows.shape[1]

    @classmethod
    def init_for(
        cls, model: nn.Module, num_soft_tokens: int = 32, seed: int = 0, init: str = "vocab"
    ) -> JudgeQAdapter:
        """Fresh, untrained rows for ``model``.

        ``init="vocab"`` (default) copies the embeddings of ``num_soft_tokens`` random vocabulary
        ids (as the model's embedding module returns them, scaling included), so the rows start on
        the manifold of real inputs. ``init="mean"`` starts every row at the mean embedding plus
        small noise.
        """
        if num_soft_tokens < 1:
            raise ValueError(f"num_soft_tokens must be >= 1, got {num_soft_tokens}")
        embed = model.get_input_embeddings()
        text_config = _text_config(model)
        generator = torch.Generator().manual_seed(seed)
        weight = embed.weight
        with torch.no_grad():
            if init == "vocab":
                ids = torch.randint(0, weight.shape[0], (num_soft_tokens,), generator=generator)
                rows = embed(ids.to(weight.device)).float().cpu()
            elif init == "mean":
                mean = embed(torch.arange(weight.shape[0], device=weight.device)).float().mean(0).cpu()
                std = weight.float().std().item()
                noise = torch.randn((num_soft_tokens, weight.shape[1]), generator=generator) * 0.1 * std
                rows = mean[None] + noise
            else:
                raise ValueError(f"init must be 'vocab' or 'mean', got {init!r}")
        from . import __version__

        config = JudgeQAdapterConfig(
            base_model=getattr(text_config, "_name_or_path", "") or getattr(model, "name_or_path", ""),
            model_type=getattr(text_config, "model_type", ""),
            hidden_size=rows.shape[1],
            num_soft_tokens=num_soft_tokens,
            init=init,
            library_version=__version__,
            model_signature=model_signature(model),
        )
        return cls(rows, config)

    def check_compatible(self, model: nn.Module) -> None:
        """Raise if the rows cannot feed ``model`` (width, NaN/Inf); warn (once per model) if they were
        trained on another model.

        "Another model" is judged by what matters, not by the path it was loaded from: the
        architecture, the sizes and a fingerprint of the embedding weights recorded in
        ``config.model_signature`` (adapters saved without one compare ``model_type`` only).
        """
        hidden = model.get_input_embeddings().weight.shape[1]
        if self.hidden_size != hidden:
            raise ValueError(
                f"adapter rows have hidden size {self.hidden_size} but the model's embeddings are {hidden} wide: "
                f"this adapter was made for {self.config.base_model or 'another model'!r}; load or train an adapter "
                "for this model (JudgeQAdapter.init_for(model) / `judgeq train`)"
            )
        if not torch.isfinite(self.rows.detach()).all():
            raise ValueError(
                "adapter rows contain NaN or Inf values (diverged training?): they cannot score a prompt; "
                "reload a saved adapter or retrain with a lower learning rate"
            )
        expected = self.config.model_signature or {"model_type": self.config.model_type}
        diffs = signature_differences(expected, model)
        warned = _WARNED.setdefault(model, set())
        if diffs and id(self) not in warned:
            warned.add(id(self))
            name = getattr(_text_config(model), "_name_or_path", "") or type(model).__name__
            logger.warning(
                "JudgeQ adapter was trained on %r but is used with %r, which differs in %s; eviction quality "
                "may suffer (train an adapter for this model: `judgeq train`)",
                self.config.base_model or "another model",
                name,
                ", ".join(diffs),
            )

    def embeds_for(self, batch_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The rows as ``inputs_embeds`` ``[batch_size, num_soft_tokens, hidden_size]``."""
        return self.rows.to(device=device, dtype=dtype).unsqueeze(0).expand(batch_size, -1, -1)

    # ------------------------------------------------------------------ files
    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (PEFT's file names) to a directory.

        The weights file holds one tensor, ``soft_tokens`` ``[num_soft_tokens, hidden_size]`` in
        ``config.dtype`` (kilobytes). Files are written atomically (temp file + rename).
        """
        from safetensors.torch import save_file

        from . import __version__

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        rows = self.rows.detach()
        if not torch.isfinite(rows).all():
            raise ValueError("refusing to save soft-token rows that contain NaN or Inf")
        if not self.config.library_version:
            self.config.library_version = __version__
        dtype = _DTYPES.get(self.config.dtype)
        if dtype is None:
            raise ValueError(f"config.dtype must be one of {sorted(_DTYPES)}, got {self.config.dtype!r}")
        config = {"adapter_type": ADAPTER_TYPE, "format_version": FORMAT_VERSION, **self.config.to_dict()}
        tensors = {TENSOR_KEY: rows.to(device="cpu", dtype=dtype).contiguous()}
        metadata = {"format": "pt", "adapter_type": ADAPTER_TYPE, "base_model": self.config.base_model}
        atomic_write(directory / WEIGHTS_NAME, lambda path: save_file(tensors, str(path), metadata=metadata))
        text = json.dumps(config, indent=2, sort_keys=False) + "\n"
        atomic_write(directory / CONFIG_NAME, lambda path: Path(path).write_text(text))
        return directory

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        model: nn.Module | None = None,
        **hub_kwargs: Any,
    ) -> JudgeQAdapter:
        """Load an adapter from a local directory or a Hugging Face Hub repo id.

        Parameters
        ----------
        name_or_path :
            A directory holding ``adapter_config.json`` + ``adapter_model.safetensors``, or a Hub repo id
            (``"org/name"``), fetched with ``huggingface_hub.snapshot_download``.
        revision :
            Hub branch, tag or commit (Hub ids only).
        model :
            If given, :meth:`check_compatible` runs against it (hidden-size mismatch raises, a different
            base model warns).
        **hub_kwargs :
            Passed to ``snapshot_download`` (``cache_dir``, ``token``, ``local_files_only``...).

        Raises
        ------
        FileNotFoundError / OSError
            Missing directory or files, unknown or unreachable Hub repo (the message names the id).
        ValueError
            Corrupt, truncated or inconsistent files (bad JSON, missing keys, bad safetensors header,
            wrong shape or dtype, NaN/Inf values).
        """
        directory = _resolve(name_or_path, revision, hub_kwargs)
        adapter = cls._load_dir(directory, str(name_or_path))
        if model is not None:
            adapter.check_compatible(model)
        return adapter

    @classmethod
    def _load_dir(cls, directory: Path, name: str) -> JudgeQAdapter:
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"Judge Q adapter {name!r}: {path.name} not found in {directory} (an adapter directory holds "
                    f"{CONFIG_NAME} and {WEIGHTS_NAME}, as written by JudgeQAdapter.save_pretrained)"
                )
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"Judge Q adapter {name!r}: {config_path} is not valid JSON ({err})") from err
        config = JudgeQAdapterConfig.from_dict(data, source=str(config_path))
        rows = _read_rows(weights_path, config, name)
        return cls(rows, config)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str = "Upload Judge Q adapter",
        extra_files: dict[str, str | os.PathLike] | None = None,
    ) -> str:
        """Upload the adapter (with a generated ``README.md`` model card) to the Hub repo ``repo_id``.

        ``extra_files`` maps names in the repo to local files (e.g. ``{"loss_curve.png": path}``).
        Returns the commit URL.
        """
        import shutil

        from huggingface_hub import HfApi

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)  # validates the rows before anything touches the network
            for name, path in (extra_files or {}).items():
                shutil.copyfile(path, Path(tmp) / name)
            images = [n for n in (extra_files or {}) if n.endswith(".png")]
            (Path(tmp) / "README.md").write_text(model_card(self, repo_id=repo_id, images=images))
            try:
                api = HfApi(token=token)
                api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
                info = api.upload_folder(
                    repo_id=repo_id, folder_path=tmp, commit_message=commit_message, revision=revision
                )
            except Exception as err:  # network, authentication and HTTP errors
                raise OSError(
                    f"could not push the Judge Q adapter to the Hub repo {repo_id!r} ({type(err).__name__}: {err}); "
                    "check the network, your token (huggingface-cli login) and write access to the repo, "
                    "or save it locally with save_pretrained(dir)"
                ) from err
        return str(getattr(info, "commit_url", info))


def model_card(
    adapter: JudgeQAdapter, repo_id: str | None = None, images: list[str] | tuple[str, ...] = ()
) -> str:
    """A Markdown model card (Hub ``README.md``) describing the adapter, its training and metrics."""
    cfg = adapter.config
    name = repo_id or f"judgeq-{_short(cfg.base_model) or 'adapter'}"
    lines = [
        "---",
        "library_name: judgeq-cache",
        *([f"base_model: {cfg.base_model}"] if cfg.base_model else []),
        "tags:",
        "- judgeq",
        "- kv-cache",
        "- kv-cache-eviction",
        "- soft-tokens",
        "---",
        "",
        f"# {name}",
        "",
        f"Judge Q soft tokens (arXiv 2509.10798) for `{cfg.base_model or 'unknown model'}`: "
        f"{cfg.num_soft_tokens} trained embedding rows of width {cfg.hidden_size} "
        f"({cfg.dtype}). They are appended after the prompt in a logits-free scoring pass; their attention "
        "over the prompt decides which KV entries the cache keeps. The model itself is unchanged.",
        "",
        "```python",
        "from judgeq_cache import JudgeQAdapter, JudgeQCache",
        "",
        f'adapter = JudgeQAdapter.from_pretrained("{repo_id or "path/to/this/dir"}")',
        "cache = JudgeQCache(model, adapter, budget=0.25)",
        "out = model.generate(**inputs, past_key_values=cache, max_new_tokens=128)",
        "```",
        "",
        f"- initialisation: `{cfg.init}`",
        f"- judgeq-cache version: `{cfg.library_version}`",
    ]
    if cfg.training:
        lines += ["", "## Training", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in cfg.training.items()]
    if cfg.metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in cfg.metrics.items()]
    for image in images:
        lines += ["", f"![{image}]({image})"]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple, dict)):
        return f"`{json.dumps(value)}`"
    return str(value).replace("|", "\\|")


def _read_rows(path: Path, config: JudgeQAdapterConfig, name: str) -> torch.Tensor:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if TENSOR_KEY not in keys:
                raise ValueError(
                    f"Judge Q adapter {name!r}: {path.name} holds tensors {keys} but not {TENSOR_KEY!r}"
                )
            rows = f.get_tensor(TENSOR_KEY)
    except ValueError:
        raise
    except Exception as err:  # safetensors raises SafetensorError (header/size checks) or OSError
        raise ValueError(
            f"Judge Q adapter {name!r}: {path} is corrupt or truncated ({type(err).__name__}: {err}); "
            "re-download or re-save it"
        ) from err
    expected = (config.num_soft_tokens, config.hidden_size)
    if tuple(rows.shape) != expected:
        raise ValueError(
            f"Judge Q adapter {name!r}: {path.name} has soft_tokens of shape {tuple(rows.shape)}, "
            f"but {CONFIG_NAME} says {list(expected)}"
        )
    if not rows.is_floating_point():
        raise ValueError(f"Judge Q adapter {name!r}: soft_tokens must be floating point, got {rows.dtype}")
    if rows.dtype != _DTYPES[config.dtype]:
        raise ValueError(
            f"Judge Q adapter {name!r}: soft_tokens are {rows.dtype} but {CONFIG_NAME} says dtype={config.dtype!r}"
        )
    if not torch.isfinite(rows).all():
        raise ValueError(f"Judge Q adapter {name!r}: soft_tokens contain NaN or Inf values")
    return rows.float()


def _looks_local(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or os.sep + os.sep in name
        or name.count("/") > 1
        or (os.altsep is not None and os.altsep in name)
    )


def _resolve(name_or_path: str | os.PathLike, revision: str | None, hub_kwargs: dict[str, Any]) -> Path:
    """A local directory for ``name_or_path`` (downloading it from the Hub for repo ids)."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if revision is not None:
            logger.warning("revision=%r is ignored for the local directory %s", revision, local)
        return local
    name = str(name_or_path)
    if local.exists():
        raise NotADirectoryError(
            f"Judge Q adapter {name!r} is a file; pass the directory that holds {CONFIG_NAME}"
        )
    if isinstance(name_or_path, Path) or _looks_local(name):
        raise FileNotFoundError(f"Judge Q adapter directory {name!r} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" at revision {revision!r}" if revision else ""
    try:
        path = snapshot_download(
            repo_id=name,
            revision=revision,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "README.md"],
            **hub_kwargs,
        )
    except HFValidationError as err:
        raise FileNotFoundError(
            f"Judge Q adapter {name!r} is neither an existing local directory nor a valid Hub repo id ({err})"
        ) from err
    except RevisionNotFoundError as err:
        raise OSError(f"Judge Q adapter {name!r}: revision {revision!r} not found on the Hub") from err
    except GatedRepoError as err:
        raise OSError(f"Judge Q adapter {name!r} is gated: accept its terms and pass token=...") from err
    except RepositoryNotFoundError as err:
        raise OSError(
            f"Judge Q adapter {name!r}{at} not found on the Hugging Face Hub (private repos need token=...) "
            "and no local directory of that name exists"
        ) from err
    except LocalEntryNotFoundError as err:
        raise OSError(
            f"Judge Q adapter {name!r}{at} is not in the local Hub cache and the Hub cannot be reached "
            "(offline, HF_HUB_OFFLINE=1 or local_files_only=True); download it once online or pass a local directory"
        ) from err
    except Exception as err:  # network errors, HTTP errors
        raise OSError(f"Judge Q adapter {name!r}{at}: could not download it from the Hub ({err})") from err
    return Path(path)


def _short(name: str) -> str:
    return name.rstrip("/").split("/")[-1].lower()
