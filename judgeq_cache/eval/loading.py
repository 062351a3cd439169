"""Adapter and sample loading shared by ``judgeq eval`` and ``judgeq demo`` (models load with
:func:`judgeq_cache.models.load_model`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import UntrainedAdapterError

if TYPE_CHECKING:
    from ..adapter import JudgeQAdapter

logger = logging.getLogger(__name__)

__all__ = [
    "BUNDLED_ADAPTER",
    "UntrainedAdapterError",
    "load_adapter",
    "load_samples",
    "shipped_adapter_expected",
]

#: The adapter trained for the embedded model (ships inside the package, loads by this name).
BUNDLED_ADAPTER = "smollm2-135m-instruct"

#: What to do instead of measuring an untrained adapter (the end of every refusal).
UNTRAINED_FIX = (
    "pass --adapter DIR (or a shipped name such as 'smollm2-135m-instruct'), train one with "
    "`judgeq train --model <model> --output DIR`, or pass --allow-untrained to measure an untrained "
    "adapter on purpose (its rows are reported as judgeq-untrained)"
)


def load_adapter(
    model, path: str | None = None, *, allow_untrained: bool = False
) -> tuple[JudgeQAdapter, str]:
    """``(adapter, label)`` for the figures of ``judgeq eval``, ``demo`` and ``bench``.

    ``path`` is a directory, a shipped name or a Hub id; without it, the adapter that ships for
    ``model`` (:meth:`JudgeQAdapter.for_model`). ``path="untrained"`` asks for fresh rows on purpose
    (the training's starting point, for ablations). An untrained adapter anywhere else raises
    :class:`UntrainedAdapterError` unless ``allow_untrained``; its rows are labelled "untrained" so
    that they are reported as ``judgeq-untrained`` and never mix with a trained adapter's.
    """
    from ..adapter import JudgeQAdapter

    if path == "untrained":
        return JudgeQAdapter.init_for(model), "untrained adapter (init_for, vocab, seed 0)"
    if path:
        adapter = JudgeQAdapter.from_pretrained(path)
        if adapter.is_trained:
            return adapter, str(path)
        if not allow_untrained:
            raise UntrainedAdapterError(f"the Judge Q adapter {path!r} was never trained; {UNTRAINED_FIX}")
        return adapter, f"untrained adapter ({path})"
    try:
        adapter = JudgeQAdapter.for_model(model)
    except LookupError as err:
        if not allow_untrained:
            raise UntrainedAdapterError(f"{err}; or {UNTRAINED_FIX}") from err
        logger.warning(
            "no trained Judge Q adapter for this model: using an UNTRAINED one (--allow-untrained)"
        )
        return JudgeQAdapter.init_for(model), "untrained adapter"
    return adapter, f"bundled {adapter.config.base_model.split('/')[-1].lower()}"


def shipped_adapter_expected(model_name: str) -> bool:
    """Whether ``model_name`` (``--model``) is one a shipped adapter was trained on: the check the
    CLIs run *before* loading the model, so that a missing adapter is an argparse error."""
    from ..models import embedded_model
    from ..pretrained import shipped_base_models

    spec = embedded_model(model_name)
    model_id = spec.model_id if spec is not None else model_name
    return model_id.lower() in {m.lower() for m in shipped_base_models().values()}


def load_samples(
    spec: str, num_samples: int, length: int, tokenizer, *, data_dir: str | None = None, **synthetic
):
    """Samples for ``spec``: a synthetic task name, ``longbench:<dataset>`` or ``ruler:<task>``
    (``data_dir`` holds local JSONL files ``<dataset>.jsonl``; without it, the Hub via ``datasets``).
    ``synthetic`` options (``seed``, ``corpus``, ...) go to :func:`~judgeq_cache.eval.tasks.make_samples`."""
    if spec.startswith("longbench:"):
        from .longbench import load_longbench

        return load_longbench(spec.split(":", 1)[1], data_dir=data_dir, limit=num_samples)
    if spec.startswith("ruler:"):
        from .ruler import load_ruler

        return load_ruler(spec.split(":", 1)[1], data_dir=data_dir, limit=num_samples)
    from .tasks import make_samples

    return make_samples(spec, num_samples, length, tokenizer, **synthetic)
