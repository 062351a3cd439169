"""argparse ``type=`` callables shared by the ``judgeq`` subcommands.

A bad value becomes an argparse error (usage + one line naming the argument, exit code 2) before any
model is loaded, never a traceback halfway through a run. Every callable raises
``argparse.ArgumentTypeError`` with a message that says what is accepted.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "adapter_source",
    "at_least",
    "budget_list",
    "choice_list",
    "fraction",
    "int_list",
    "matplotlib_available",
    "model_source",
    "non_negative_int",
    "plot_path",
    "positive_float",
    "positive_int",
    "task_list",
]

#: Model dtypes accepted by ``--dtype`` (training and loading support these three).
DTYPES = ("float32", "bfloat16", "float16")


def _int(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def at_least(minimum: int) -> Callable[[str], int]:
    """A ``type=`` for integers ``>= minimum``."""

    def parse(text: str) -> int:
        value = _int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


positive_int = at_least(1)
non_negative_int = at_least(0)


def positive_float(text: str) -> float:
    """A ``type=`` for finite floats ``> 0``."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A ``type=`` for a kept fraction in ``(0, 1)``."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1), got {text!r}")
    return value


def _items(text: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def int_list(minimum: int = 1) -> Callable[[str], list[int]]:
    """A ``type=`` for comma lists of integers ``>= minimum`` (``"1024,2048"``)."""
    one = at_least(minimum)

    def parse(text: str) -> list[int]:
        return [one(item) for item in _items(text)]

    parse.__name__ = f"comma list of integers >= {minimum}"
    return parse


def budget_list(text: str) -> list[int | float]:
    """A ``type=`` for comma lists of budgets: integers are entries per KV head (``256``), decimals and
    percentages are kept fractions in ``(0, 1)`` (``0.25``, ``25%``); ``2.0`` is an error."""
    from .eval.records import parse_budget

    budgets = []
    for item in _items(text):
        try:
            budgets.append(parse_budget(item))
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return budgets


def choice_list(choices: Iterable[str], what: str = "value") -> Callable[[str], list[str]]:
    """A ``type=`` for comma lists whose items all come from ``choices``."""
    allowed = list(choices)

    def parse(text: str) -> list[str]:
        items = _items(text)
        unknown = [item for item in items if item not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}"
            )
        return items

    parse.__name__ = f"comma list of {what}s"
    return parse


def task_list(text: str) -> list[str]:
    """A ``type=`` for ``--tasks``: synthetic task names, ``longbench:<dataset>``, ``ruler:<task>``."""
    from .eval.longbench import DATASETS
    from .eval.tasks import SYNTHETIC_TASKS

    items = _items(text)
    for item in items:
        kind, _, name = item.partition(":")
        if kind == "longbench" and name not in DATASETS:
            raise argparse.ArgumentTypeError(
                f"unknown LongBench dataset {name!r}; choose from {', '.join(sorted(DATASETS))}"
            )
        if kind == "ruler" and not name:
            raise argparse.ArgumentTypeError("ruler: needs a task name, e.g. ruler:niah_single_1")
        if kind not in ("longbench", "ruler") and item not in SYNTHETIC_TASKS:
            raise argparse.ArgumentTypeError(
                f"unknown task {item!r}; choose from {', '.join(SYNTHETIC_TASKS)}, longbench:<dataset> or ruler:<task>"
            )
    return items


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep + os.sep in name


def model_source(text: str) -> str:
    """A ``type=`` for ``--model``: a name, a Hub id (``org/name``) or an existing local directory."""
    if _looks_local(text) and not Path(text).expanduser().exists():
        raise argparse.ArgumentTypeError(
            f"{text!r} looks like a local path but does not exist; pass an existing model directory, "
            "a Hub id (org/name) or 'embedded'"
        )
    return text


def adapter_source(text: str) -> str:
    """A ``type=`` for ``--adapter``: an existing adapter directory, a Hub id or ``untrained``."""
    if _looks_local(text) and not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(
            f"adapter directory {text!r} does not exist; pass a directory holding adapter_config.json, "
            "a Hub id (org/name) or 'untrained'"
        )
    return text


def plot_path(text: str) -> str:
    """A ``type=`` for an explicitly requested plot: needs matplotlib (``''`` = no plot)."""
    if text and not matplotlib_available():
        raise argparse.ArgumentTypeError(
            "writing a plot needs matplotlib: pip install matplotlib (or 'judgeq-cache[eval]'), or leave out --plot"
        )
    return text


def matplotlib_available() -> bool:
    """Whether ``matplotlib`` can be imported (plots are optional)."""
    return importlib.util.find_spec("matplotlib") is not None
