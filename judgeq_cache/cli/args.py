"""argparse ``type=`` callables shared by the ``judgeq`` subcommands.

A bad value becomes an argparse error (usage + one line naming the argument, exit code 2) before any
model is loaded, never a traceback halfway through a run. Every callable raises
``argparse.ArgumentTypeError`` with a message that says what is accepted. The ``*_problem`` functions
serve the subcommands' ``check(args)``: they return why a path cannot be used, or None.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "add_dataclass_arguments",
    "add_model_arguments",
    "adapter_source",
    "at_least",
    "file_problem",
    "non_negative_float",
    "output_problem",
    "readable_file",
    "budget",
    "budget_list",
    "choice_list",
    "dataclass_from_args",
    "fraction",
    "int_list",
    "matplotlib_available",
    "model_source",
    "non_negative_int",
    "plot_path",
    "positive_float",
    "positive_int",
    "task_list",
    "unit_interval",
]

T = TypeVar("T")

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


def _float_within(
    accepts: Callable[[float], bool], expected: str, must_be: str, name: str, doc: str
) -> Callable[[str], float]:
    """A ``type=`` for floats that ``accepts``; the errors say "expected {expected}" for text that is
    not a number and "must be {must_be}" for a number out of range."""

    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {must_be}, got {text!r}")
        return value

    parse.__name__, parse.__doc__ = name, doc
    return parse


_INF = float("inf")
positive_float = _float_within(
    lambda v: 0 < v < _INF,
    "a number",
    "a positive number",
    "positive_float",
    "A ``type=`` for finite floats ``> 0``.",
)
non_negative_float = _float_within(
    lambda v: 0 <= v < _INF,
    "a number",
    "a finite number >= 0",
    "non_negative_float",
    "A ``type=`` for finite floats ``>= 0`` (``nan`` and ``inf`` are refused).",
)
unit_interval = _float_within(
    lambda v: 0 <= v <= 1,
    "a number in [0, 1]",
    "a number in [0, 1]",
    "unit_interval",
    "A ``type=`` for a share in ``[0, 1]`` (both ends included).",
)
fraction = _float_within(
    lambda v: 0 < v < 1,
    "a fraction in (0, 1)",
    "a fraction in (0, 1)",
    "fraction",
    "A ``type=`` for a kept fraction in ``(0, 1)``.",
)


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


def budget(text: str) -> int | float:
    """A ``type=`` for one budget: an integer is entries per KV head (``256``), a decimal or a
    percentage a kept fraction in ``(0, 1)`` (``0.25``, ``25%``); ``2.0`` is an error."""
    from ..eval.records import parse_budget

    try:
        return parse_budget(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def budget_list(text: str) -> list[int | float]:
    """A ``type=`` for comma lists of budgets (each as :func:`budget` reads it)."""
    return [budget(item) for item in _items(text)]


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
    from ..eval.longbench import DATASETS
    from ..eval.tasks import SYNTHETIC_TASKS

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


def _local_or_hub(what: str, exists: Callable[[Path], bool], alternatives: str) -> Callable[[str], str]:
    """A ``type=`` accepting a name or Hub id as is, and a local-looking path only if it exists."""

    def parse(text: str) -> str:
        if _looks_local(text) and not exists(Path(text).expanduser()):
            raise argparse.ArgumentTypeError(f"{what} {text!r} does not exist; pass {alternatives}")
        return text

    return parse


#: ``type=`` for ``--model``: a name, a Hub id (``org/name``) or an existing local directory.
model_source = _local_or_hub(
    "model path", Path.exists, "an existing model directory, a Hub id (org/name) or 'embedded'"
)
#: ``type=`` for ``--adapter``: an existing adapter directory, a Hub id or ``untrained``.
adapter_source = _local_or_hub(
    "adapter directory",
    Path.is_dir,
    "a directory holding adapter_config.json, a Hub id (org/name) or 'untrained'",
)


def file_problem(path: str | os.PathLike, what: str = "file") -> str | None:
    """Why ``path`` cannot be read as a file (missing, a directory, unreadable), or None."""
    target = Path(path).expanduser()
    if not target.exists():
        return f"{what} {str(path)!r} does not exist"
    if not target.is_file():
        return f"{what} {str(path)!r} is not a file"
    if not os.access(target, os.R_OK):
        return f"{what} {str(path)!r} is not readable (check its permissions)"
    return None


def readable_file(text: str) -> str:
    """A ``type=`` for an existing, readable file."""
    problem = file_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def output_problem(path: str | os.PathLike, what: str = "output", *, directory: bool = False) -> str | None:
    """Why nothing can be written at ``path`` (a file, or with ``directory`` a folder), or None.

    Refuses a directory where a file is wanted (and the reverse) and a first existing ancestor that is
    not a writable directory; folders still missing are fine (they are created).
    """
    target = Path(path).expanduser()
    if target.exists() and target.is_dir() != directory:
        kind = "a directory" if target.is_dir() else "a file"
        return f"{what} {str(path)!r} is {kind}; pass {'a directory' if directory else 'a file path'}"
    parent = target if directory and target.exists() else target.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{what} {str(path)!r} cannot be created: {str(parent)!r} is a file"
    if not os.access(parent, os.W_OK):
        return f"{what} {str(path)!r} cannot be written: {str(parent)!r} is not writable"
    return None


def add_model_arguments(parser: argparse.ArgumentParser, *, dtype: bool = False) -> None:
    """``--model`` (an embedded key, a Hub id or a local directory) and, with ``dtype``, ``--dtype``."""
    parser.add_argument(
        "--model",
        type=model_source,
        default="embedded",
        help="'embedded' (SmolLM2-135M-Instruct, offline), a Hub id or a local model directory",
    )
    if dtype:
        parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype")


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


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls: type, aliases: Mapping[str, Sequence[str]] | None = None
) -> None:
    """One ``--kebab-case`` flag per field of dataclass ``cls`` whose metadata has a ``"help"``.

    The default is the field's; metadata ``"type"`` and ``"choices"`` go to ``add_argument``; a bool
    field gets ``--name`` / ``--no-name``. ``aliases`` maps field names to extra flags (older names).
    Read the values back with :func:`dataclass_from_args`.
    """
    aliases = aliases or {}
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if "help" not in meta:
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        flags = [f"--{field.name.replace('_', '-')}", *aliases.get(field.name, ())]
        options: dict[str, Any] = {"dest": field.name, "default": default}
        if isinstance(default, bool):
            options["action"] = argparse.BooleanOptionalAction
            options["help"] = meta["help"]
        else:
            options.update({k: meta[k] for k in ("type", "choices") if k in meta})
            options["help"] = f"{meta['help']} (default: %(default)s)"
        parser.add_argument(*flags, **options)


def dataclass_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """``cls`` built from the flags :func:`add_dataclass_arguments` declared (others keep defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if "help" in f.metadata}
    return cls(**{**values, **overrides})
