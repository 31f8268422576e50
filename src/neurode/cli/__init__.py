"""The ``neurode`` command.

Each subcommand lives in its own module of this package and exposes
``add_parser(subparsers)`` (registering its options) and ``run(args) -> int``.
Bad user input raises :class:`neurode.errors.NeurodeInputError` (or
``FileNotFoundError``), and a refusal of the operating system to write the
outputs (a full disk, a read-only folder) raises ``OSError``; each is
reported on one line, never cut off, with exit code 2.
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
    from .._version import __version__

    parser = argparse.ArgumentParser(
        prog="neurode", description="Neural ordinary differential equations on PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"neurode {__version__}")
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
    except (NeurodeInputError, OSError) as error:
        print(f"neurode {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"neurode {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line(error: BaseException) -> str:
    """The whole message of ``error`` on one line (OS errors as 'file: reason')."""
    if isinstance(error, OSError) and type(error).__str__ is OSError.__str__ and error.strerror:
        text = f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    else:
        text = str(error)
    return " ".join(text.split())
