"""The Hub model card (``README.md``) of a Judge Q adapter."""

from __future__ import annotations

import json
from typing import Any


def model_card(adapter: Any, repo_id: str | None = None, images: list[str] | tuple[str, ...] = ()) -> str:
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


def _short(name: str) -> str:
    return name.rstrip("/").split("/")[-1].lower()
