"""The ``judgeq`` command line: ``judgeq demo | train | eval | bench``.

Each subcommand lives next to the code it drives and registers itself here through a
``register_cli(subparsers)`` function that adds its parser and sets ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: Modules that contribute a subcommand (imported lazily so ``judgeq --help`` stays fast).
SUBCOMMAND_MODULES = {
    "demo": "judgeq_cache.demo",
    "train": "judgeq_cache.training",
    "eval": "judgeq_cache.eval.cli",
    "bench": "judgeq_cache.bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="judgeq", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in SUBCOMMAND_MODULES.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            broken = sub.add_parser(name, help=f"(unavailable: {err})")
            broken.set_defaults(func=lambda args, err=err: _unavailable(err))
            continue
        module.register_cli(sub)
    return parser


def _unavailable(err: Exception) -> int:
    logging.getLogger("judgeq").error("this command is unavailable: %s", err)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
