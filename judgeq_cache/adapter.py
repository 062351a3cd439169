"""JudgeQAdapter: the trained soft-token embedding rows and their configuration."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text_config(model: nn.Module):
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


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
        )
        return cls(rows, config)

    def check_compatible(self, model: nn.Module) -> None:
        """Raise if the rows cannot feed ``model``; warn if they were trained on another model."""
        hidden = model.get_input_embeddings().weight.shape[1]
        if self.hidden_size != hidden:
            raise ValueError(
                f"adapter rows have hidden size {self.hidden_size} but the model's embeddings are {hidden} wide: "
                f"this adapter was made for {self.config.base_model or 'another model'!r}; load or train an adapter "
                "for this model (JudgeQAdapter.init_for(model) / `judgeq train`)"
            )
        name = getattr(_text_config(model), "_name_or_path", "") or ""
        base = self.config.base_model
        if base and name and _short(base) != _short(name):
            logger.warning(
                "JudgeQ adapter was trained on %r but is used with %r; eviction quality may suffer",
                base,
                name,
            )

    def embeds_for(self, batch_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The rows as ``inputs_embeds`` ``[batch_size, num_soft_tokens, hidden_size]``."""
        return self.rows.to(device=device, dtype=dtype).unsqueeze(0).expand(batch_size, -1, -1)


def _short(name: str) -> str:
    return name.rstrip("/").split("/")[-1].lower()
