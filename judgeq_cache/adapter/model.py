"""JudgeQAdapter: the trained soft-token embedding rows (an ``nn.Module``).

Its config (:mod:`.config`), signature checks (:mod:`.signature`), file and Hub I/O (:mod:`.io`) and
model card (:mod:`.card`) live beside it; :mod:`judgeq_cache.adapter` is the public import path.
"""

from __future__ import annotations

import logging
import weakref

import torch
from torch import nn

from ..devices import input_device, readable_weight
from ..utils import text_config
from .config import JudgeQAdapterConfig
from .io import AdapterIOMixin
from .signature import model_signature, signature_differences

logger = logging.getLogger(__name__)


#: Models already warned about, per adapter ``id`` (so the mismatch warning is logged once, not for
#: every cache built with the pair).
_WARNED: weakref.WeakKeyDictionary[nn.Module, set[int]] = weakref.WeakKeyDictionary()


class JudgeQAdapter(AdapterIOMixin, nn.Module):
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
        model_config = text_config(model)
        generator = torch.Generator().manual_seed(seed)
        weight = embed.weight
        with torch.no_grad():
            if init == "vocab":
                ids = torch.randint(0, weight.shape[0], (num_soft_tokens,), generator=generator)
                rows = embed(ids.to(input_device(model))).float().cpu()
            elif init == "mean":
                mean = embed(torch.arange(weight.shape[0], device=input_device(model))).float().mean(0).cpu()
                with readable_weight(embed) as real:
                    std = real.float().std().item()
                noise = torch.randn((num_soft_tokens, weight.shape[1]), generator=generator) * 0.1 * std
                rows = mean[None] + noise
            else:
                raise ValueError(f"init must be 'vocab' or 'mean', got {init!r}")
        from .. import __version__

        config = JudgeQAdapterConfig(
            base_model=getattr(model_config, "_name_or_path", "") or getattr(model, "name_or_path", ""),
            model_type=getattr(model_config, "model_type", ""),
            hidden_size=rows.shape[1],
            num_soft_tokens=num_soft_tokens,
            init=init,
            library_version=__version__,
            model_signature=model_signature(model),
        )
        return cls(rows, config)

    @property
    def is_trained(self) -> bool:
        """Whether the rows came out of training (``config.training`` records the run); an adapter
        from :meth:`init_for` is not, and scores no better than chance."""
        return bool(self.config.training)

    @classmethod
    def for_model(cls, model: nn.Module) -> JudgeQAdapter:
        """The trained adapter that ships with the package for ``model``.

        Matched by what matters (architecture, sizes and a fingerprint of the embedding weights), not
        by the path the model was loaded from. Raises ``LookupError`` naming ``judgeq train`` when no
        shipped adapter fits.
        """
        from ..pretrained import shipped_adapter_names, shipped_adapter_path

        for name in shipped_adapter_names():
            adapter = cls.from_pretrained(shipped_adapter_path(name))
            signature = adapter.config.model_signature
            width = model.get_input_embeddings().weight.shape[1]
            if signature and adapter.hidden_size == width and not signature_differences(signature, model):
                return adapter
        name = getattr(text_config(model), "_name_or_path", "") or type(model).__name__
        raise LookupError(
            f"no Judge Q adapter ships for {name!r} (shipped: {', '.join(shipped_adapter_names())}); train one "
            "with `judgeq train --model <model> --output <dir>` and load it with JudgeQAdapter.from_pretrained(dir)"
        )

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
            name = getattr(text_config(model), "_name_or_path", "") or type(model).__name__
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
