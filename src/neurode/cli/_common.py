"""Pieces shared by the training subcommands (``cnf``, ``latent``).

The leading underscore keeps this module out of the subcommand list.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ..api import method_names
from ..errors import NeurodeInputError, UnknownMethodError

__all__ = [
    "add_run_options",
    "arguments_record",
    "require_at_least_one",
    "require_method",
    "require_positive",
    "write_metrics",
]


def add_run_options(parser: argparse.ArgumentParser, command: str, run: Any) -> None:
    """``--seed``, ``--out`` (default ``runs/COMMAND``), ``--no-progress``; ``run`` as handler."""
    parser.add_argument("--seed", type=int, default=0, help="seed of data and initialisation")
    parser.add_argument("--out", type=Path, default=Path("runs") / command, help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run)


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
    """Writes ``metrics`` to ``out/metrics.json`` and returns that path."""
    path = out / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2))
    return path
