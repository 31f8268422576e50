"""Gradient methods: one module each, all with the signature of :class:`GradientMethod`.

A gradient method runs the forward solve of an :class:`~neurode.integrate.problem.ODEProblem`
and makes the returned states differentiable with respect to ``y0``, the
parameters and the times ``t`` in its own way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UnknownOptionError
from ..integrate.dense_output import Segment


@dataclass
class GradientResult:
    ys: torch.Tensor
    """Saved solver states, shape ``(len(t), *state_shape)``, in the order of ``t``."""
    stats: dict[str, Any]
    segments: list[Segment] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


GradientMethod = Callable[..., GradientResult]
"""``method(problem, y0, t, t_solver, *, params, options, record_segments) -> GradientResult``

- ``problem``: the :class:`~neurode.integrate.problem.ODEProblem` (vector field, method,
  nfe counter);
- ``y0``: the solver state (a flat tensor for tuple states), possibly requiring grad;
- ``t``: the user's time tensor (may require grad); ``t_solver`` the same times as
  increasing Python floats in solver time;
- ``params``: the tensors whose gradients the method must provide (for methods that
  cannot rely on autograd through the solve);
- ``options``: the method's own options (``gradient_options``), validated by the method;
- ``record_segments``: keep the dense output.
"""

_REGISTRY: dict[str, GradientMethod] = {}


def check_options(gradient: str, options: dict[str, Any], accepted: frozenset[str]) -> None:
    """Raises :class:`UnknownOptionError` naming any of ``options`` not in ``accepted``."""
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UnknownOptionError(
            f"gradient={gradient!r} does not take option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(accepted))}"
        )


def register(name: str, method: GradientMethod) -> None:
    _REGISTRY[name] = method


def get(name: str) -> GradientMethod:
    _load_builtin()
    return _REGISTRY[name]


def names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


_loaded = False


def _load_builtin() -> None:
    global _loaded
    if _loaded:
        return
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True
