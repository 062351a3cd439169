"""judgeq-cache: trained-query (Judge Q) KV-cache eviction for Hugging Face transformers.

>>> cache = JudgeQCache(model, JudgeQAdapter.from_pretrained("path/or/hub-id"), budget=512)
>>> out = model.generate(**inputs, past_key_values=cache, max_new_tokens=128)
"""

__version__ = "0.1.0"

from .adapter import JudgeQAdapter, JudgeQAdapterConfig
from .budget import Budget
from .cache import EvictionCache, JudgeQCache
from .scorers import SCORERS, Scorer, make_scorer

__all__ = [
    "SCORERS",
    "Budget",
    "EvictionCache",
    "JudgeQAdapter",
    "JudgeQAdapterConfig",
    "JudgeQCache",
    "Scorer",
    "__version__",
    "make_scorer",
]
