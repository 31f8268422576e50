"""Pieces shared by the subcommands: one command-line convention for all of them.

- :class:`HelpFormatter`: every option's default shown once, as
  ``(default: X)``, unless its help already states it; descriptions printed as
  written, paragraphs kept, no markup.
- :func:`add_output_options`: ``--out``, ``--resume``, ``--overwrite`` and
  ``--quiet`` (alias ``--no-progress``), the same in every command.
- Argument checks that raise :class:`neurode.errors.NeurodeInputError` (exit 2).

The leading underscore keeps this module out of the subcommand list.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any

from ..api import method_names
from ..errors import NeurodeInputError, UnknownMethodError

__all__ = [
    "HelpFormatter",
    "add_output_options",
    "add_run_options",
    "add_threads_option",
    "apply_quick",
    "apply_threads",
    "plain_text",
    "arguments_record",
    "require_at_least_one",
    "require_method",
    "require_positive",
    "write_metrics",
]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Paragraphs of the description kept as written; each default shown once.

    An option's default is appended as ``(default: X)`` unless its help
    already mentions a default, the option is a flag, or its default is None.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.default is None
            or isinstance(action.default, bool)
            or action.default is argparse.SUPPRESS
            or "default" in text
            or not action.option_strings
        ):
            return text
        default = action.default
        if isinstance(default, list | tuple):
            default = " ".join(str(value) for value in default)
        return f"{text} (default: {str(default).replace('%', '%%')})"


_MARKUP = (
    (re.compile(r":(?:math|class|func|mod|meth|attr|data):`~?([^`]*)`"), r"\1"),
    (re.compile(r"``([^`]*)``"), r"\1"),
    (
        re.compile(r"\\(theta|omega|mu|tau)"),
        lambda m: {"theta": "θ", "omega": "ω", "mu": "μ", "tau": "τ"}[m.group(1)],
    ),
)


def plain_text(docstring: str) -> str:
    """A module docstring as ``--help`` shows it: no reStructuredText markup, no literal blocks."""
    text = docstring.strip()
    for pattern, replacement in _MARKUP:
        text = pattern.sub(replacement, text)
    return text.replace("::\n", ":\n")


def add_output_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    command: str,
    *,
    out_described: str | None = None,
) -> None:
    """``--out`` (default ``runs/COMMAND``), ``--resume``, ``--overwrite``, ``--quiet``.

    With ``out_described`` the default of ``--out`` is None (the command picks
    the folder) and the help names it as given.
    """
    help_text = "output folder; it must not hold another run unless --resume or --overwrite"
    parser.add_argument(
        "--out",
        type=Path,
        default=None if out_described else Path("runs") / command,
        help=help_text + (f" (default {out_described})" if out_described else ""),
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out (with the same settings)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run in --out (its checkpoints, metrics and figures) and start over",
    )
    parser.add_argument(
        "--quiet",
        "--no-progress",
        dest="quiet",
        action="store_true",
        help="no progress bars (--no-progress is the same)",
    )


def add_run_options(parser: argparse.ArgumentParser, command: str, run: Any) -> None:
    """``--seed``, ``--threads``, the output options of :func:`add_output_options`;
    ``run`` as handler."""
    parser.add_argument("--seed", type=int, default=0, help="seed of data and initialisation")
    add_threads_option(parser)
    add_output_options(parser, command)
    parser.set_defaults(run=run)


def add_threads_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--threads`` (default 1): torch's CPU threads.

    The models of these commands are small: a second thread only adds
    synchronisation, and on a machine whose cores are busy with other work
    every step waits for both (``neurode pendulum`` with two threads took 12
    minutes of CPU for a 22-second run on a busy 2-core machine).
    """
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (the models are too small to gain from more)",
    )


def apply_threads(args: argparse.Namespace) -> None:
    """Check ``--threads`` and set torch's thread count."""
    import torch

    if args.threads < 1:
        raise NeurodeInputError(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)


def _option(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def require_at_least_one(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Integer options that must be at least 1."""
    for name in names:
        if getattr(args, name) < 1:
            raise NeurodeInputError(f"{_option(name)} must be at least 1")


def require_positive(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """Float options that must be finite and positive."""
    for name in names:
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise NeurodeInputError(f"{_option(name)} must be a positive number, got {value}")


def require_method(args: argparse.Namespace, name: str) -> None:
    """An option naming an ODE solver must name a registered one."""
    if getattr(args, name) not in method_names():
        raise UnknownMethodError(
            f"unknown {_option(name)} {getattr(args, name)!r}; "
            f"choose from {', '.join(method_names())}"
        )


def arguments_record(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments as JSON-ready values (paths as strings, without ``run``)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "run"}


def write_metrics(out: Path, metrics: dict[str, Any]) -> Path:
    """Writes ``metrics`` to ``out/metrics.json`` atomically and returns that path."""
    from ..train.files import write_json_atomically

    return write_json_atomically(out / "metrics.json", metrics)


def apply_quick(args: argparse.Namespace, quick: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Fill the options left unset (None): from ``quick`` with ``--quick``, else ``defaults``."""
    chosen = quick if getattr(args, "quick", False) else defaults
    for name, default in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, chosen.get(name, default))
