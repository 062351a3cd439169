"""Lazy package exports: a package's public names are imported from their modules on first use.

So ``import judgeq_cache`` (and ``judgeq --help``) imports neither torch nor transformers. A package
writes ``__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: dict[str, str], names: Iterable[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to the (relative)
    module that defines it; the value is cached on the package after its first import."""
    names = set(names)

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | names)

    return __getattr__, __dir__
