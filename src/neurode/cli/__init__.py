"""The ``neurode`` command.

Each subcommand lives in its own module of this package and exposes
``add_parser(subparsers)`` (registering its options) and ``run(args) -> int``.
Bad user input raises :class:`neurode.errors.NeurodeInputError` (or
``FileNotFoundError``); it is reported on one line with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ..errors import NeurodeInputError


def _subcommand_modules():
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield importlib.import_module(f"{__name__}.{info.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neurode", description="Neural ordinary differential equations on PyTorch."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in _subcommand_modules():
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (NeurodeInputError, FileNotFoundError) as error:
        print(f"neurode {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"neurode {args.command}: interrupted", file=sys.stderr)
        return 130
