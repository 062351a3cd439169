"""The ``judgeq`` command line: ``judgeq demo | train | eval | bench``.

Each subcommand has a light module (no torch at import) whose ``register_cli(subparsers)`` adds its
parser, sets ``func`` (which imports the heavy code when it runs) and may set ``check``. Only the
module of the subcommand being run is imported, so ``judgeq --help`` and every argument error come
back before torch or transformers load.

* :mod:`.args`: the argparse ``type=`` callables and the file checks the subcommands share;
* :mod:`.demo`, :mod:`.evaluate`, :mod:`.bench`: ``judgeq demo``, ``judgeq eval``, ``judgeq bench``;
* ``judgeq train`` registers from :mod:`judgeq_cache.training.cli`, next to the recipe.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterable, Sequence

#: Subcommand -> (the module whose ``register_cli`` adds it, the help line ``judgeq --help`` shows).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("judgeq_cache.cli.demo", "side-by-side needle demo on the embedded model"),
    "train": ("judgeq_cache.training.cli", "train Judge Q soft tokens for a model"),
    "eval": ("judgeq_cache.cli.evaluate", "evaluation harness: run, kvpress, report"),
    "bench": ("judgeq_cache.cli.bench", "scoring overhead, decode speed and KV memory vs a full cache"),
}


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``judgeq`` parser. The modules of ``commands`` (default: every subcommand) register their
    full parsers; the other subcommands are listed by name and help line only, without importing them."""
    loaded = set(SUBCOMMANDS if commands is None else commands)
    parser = argparse.ArgumentParser(prog="judgeq", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_line) in SUBCOMMANDS.items():
        if name not in loaded:
            # prefix_chars no argument uses: every word after the name lands in args (options too).
            stub = sub.add_parser(name, help=help_line, add_help=False, prefix_chars="\0")
            stub.add_argument("args", nargs=argparse.REMAINDER)
            stub.set_defaults(func=lambda args, name=name: main(["-v"] * args.verbose + [name, *args.args]))
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            broken = sub.add_parser(name, help=f"(unavailable: {err})")
            broken.set_defaults(func=lambda args, err=err: _unavailable(err))
            continue
        module.register_cli(sub)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def _unavailable(err: Exception) -> int:
    logging.getLogger("judgeq").error("this command is unavailable: %s", err)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    parser = build_parser([command] if command in SUBCOMMANDS else [])
    args = parser.parse_args(argv)
    # A subcommand's ``check(args)`` sees every argument together before anything heavy runs; what it
    # returns is an argparse error (exit 2, no traceback).
    problem = args.check(args) if getattr(args, "check", None) else None
    if problem:
        parser.error(f"{command}: {problem}")  # not args.command: a subcommand may own a --command flag
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from ..errors import UserError

    try:
        return int(args.func(args) or 0)
    except UserError as err:  # found only once the model is loaded (e.g. no adapter fits it)
        logging.getLogger("judgeq").error("%s", err)
        return 2
