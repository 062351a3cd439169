"""File and Hub I/O of a Judge Q adapter: PEFT's file names, validation of what is read, Hub errors.

:class:`AdapterIOMixin` gives :class:`~judgeq_cache.adapter.JudgeQAdapter` ``save_pretrained``,
``from_pretrained`` and ``push_to_hub``, as PEFT's ``PushToHubMixin`` does for its models.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from ..utils import atomic_write
from .card import model_card
from .config import ADAPTER_TYPE, FORMAT_VERSION, ROW_DTYPES, JudgeQAdapterConfig

logger = logging.getLogger(__name__)

#: The adapter class the mixin is part of (:class:`~judgeq_cache.adapter.JudgeQAdapter`).
Adapter = TypeVar("Adapter", bound="AdapterIOMixin")


#: PEFT's file names: the config and the weights of an adapter directory.
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
#: The one tensor in ``adapter_model.safetensors``.
TENSOR_KEY = "soft_tokens"


class AdapterIOMixin:
    """``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for a module with ``rows`` and ``config``."""

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (PEFT's file names) to a directory.

        The weights file holds one tensor, ``soft_tokens`` ``[num_soft_tokens, hidden_size]`` in
        ``config.dtype`` (kilobytes). Files are written atomically (temp file + rename).
        """
        from safetensors.torch import save_file

        from .. import __version__

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        rows = self.rows.detach()
        if not torch.isfinite(rows).all():
            raise ValueError("refusing to save soft-token rows that contain NaN or Inf")
        if not self.config.library_version:
            self.config.library_version = __version__
        dtype = ROW_DTYPES.get(self.config.dtype)
        if dtype is None:
            raise ValueError(f"config.dtype must be one of {sorted(ROW_DTYPES)}, got {self.config.dtype!r}")
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
    ) -> Adapter:
        """Load an adapter from a local directory or a Hugging Face Hub repo id.

        Parameters
        ----------
        name_or_path :
            A directory holding ``adapter_config.json`` + ``adapter_model.safetensors`` (a path that
            exists is always a path), the short name of an adapter that ships with the package
            (``"smollm2-135m-instruct"``; see :func:`judgeq_cache.pretrained.shipped_adapter_names`), or
            a Hub repo id (``"org/name"``), fetched with ``huggingface_hub.snapshot_download``.
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
    def _load_dir(cls, directory: Path, name: str) -> Adapter:
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
                    "check the network, your token (`hf auth login`, or token=...) and write access to the repo, "
                    "or save it locally with save_pretrained(dir)"
                ) from err
        return str(getattr(info, "commit_url", info))


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
    if rows.dtype != ROW_DTYPES[config.dtype]:
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
    if not isinstance(name_or_path, Path):
        from ..pretrained import shipped_adapter_path

        shipped = shipped_adapter_path(name)
        if shipped is not None:
            if revision is not None:
                logger.warning("revision=%r is ignored for the shipped adapter %r", revision, name)
            return shipped
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
