"""Method names, the options each accepts, and turning them into a :class:`MethodSpec`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .errors import UnknownMethodError, UnknownOptionError
from .integrate import AdaptiveOptions, fixed_grid_from_step_size
from .problem import MethodSpec
from .solvers.tableaus import TABLEAUS
from .step_size import PIDController

ADAPTIVE_OPTIONS = frozenset(
    {
        "first_step",
        "safety",
        "ifactor",
        "dfactor",
        "pcoeff",
        "icoeff",
        "dcoeff",
        "min_step",
        "max_step",
        "max_num_steps",
        "step_t",
        "jump_t",
        "grid_points",
        "norm",
        "dtype",
    }
)
FIXED_OPTIONS = frozenset({"step_size", "grid_constructor", "perturb", "interp", "dtype"})

# Integrators that are not explicit Runge–Kutta register here: name -> (options, builder).
_CUSTOM: dict[str, tuple[frozenset[str], Callable[..., MethodSpec]]] = {}


def register_custom_method(
    name: str, options: frozenset[str], builder: Callable[..., MethodSpec]
) -> None:
    """Add a non-Runge–Kutta integrator (Adams, scipy, ...) under ``name``.

    ``builder(name, options, t_solver, rtol=rtol, atol=atol)`` returns the
    :class:`MethodSpec`.
    """
    _CUSTOM[name] = (options, builder)


def method_names() -> list[str]:
    return sorted(set(TABLEAUS) | set(_CUSTOM))


def is_adaptive(name: str) -> bool:
    tableau = TABLEAUS.get(name)
    return tableau is not None and tableau.adaptive


def build_method(
    name: str | None,
    options: dict[str, Any] | None,
    rtol: float | torch.Tensor,
    atol: float | torch.Tensor,
    t_solver: list[float],
    y0: torch.Tensor,
    grid_constructor_args: Callable[[], tuple] | None = None,
    reversed_time: bool = False,
) -> MethodSpec:
    """Validate ``method`` and ``options``; raise a typed error naming what is valid."""
    name = "dopri5" if name is None else name
    options = dict(options or {})
    if name in _CUSTOM:
        allowed, builder = _CUSTOM[name]
        _reject_unknown(name, options, allowed)
        return builder(name, options, t_solver, rtol=rtol, atol=atol)
    tableau = TABLEAUS.get(name)
    if tableau is None:
        raise UnknownMethodError(
            f"unknown method {name!r}; choose one of: {', '.join(method_names())}"
        )
    if tableau.adaptive:
        _reject_unknown(name, options, ADAPTIVE_OPTIONS)
        controller = PIDController(
            safety=float(options.get("safety", 0.9)),
            ifactor=float(options.get("ifactor", 10.0)),
            dfactor=float(options.get("dfactor", 0.2)),
            pcoeff=float(options.get("pcoeff", 0.0)),
            icoeff=float(options.get("icoeff", 1.0)),
            dcoeff=float(options.get("dcoeff", 0.0)),
            min_step=float(options.get("min_step", 0.0)),
            max_step=float(options.get("max_step", math.inf)),
        )
        step_t = options.get("step_t", options.get("grid_points"))
        adaptive = AdaptiveOptions(
            rtol=rtol,
            atol=atol,
            norm=options.get("norm"),
            controller=controller,
            first_step=None if options.get("first_step") is None else float(options["first_step"]),
            max_num_steps=int(options.get("max_num_steps", 2**31 - 1)),
            step_t=_times(step_t, reversed_time),
            jump_t=_times(options.get("jump_t"), reversed_time),
        )
        return MethodSpec(name=name, kind="adaptive", tableau=tableau, adaptive=adaptive)
    _reject_unknown(name, options, FIXED_OPTIONS)
    step_size = options.get("step_size")
    grid_constructor = options.get("grid_constructor")
    if step_size is not None and grid_constructor is not None:
        raise UnknownOptionError("give either step_size or grid_constructor, not both")
    grid = None
    if step_size is not None:
        grid = fixed_grid_from_step_size(t_solver[0], t_solver[-1], float(step_size))
    elif grid_constructor is not None:
        if grid_constructor_args is None:
            raise UnknownOptionError("grid_constructor is not available here")
        grid_tensor = grid_constructor(*grid_constructor_args())
        grid = [float(x) for x in grid_tensor.detach().reshape(-1).tolist()]
        if grid[0] != t_solver[0] or grid[-1] != t_solver[-1]:
            raise UnknownOptionError(
                "grid_constructor must return a grid starting at t[0] and ending at t[-1]"
            )
    return MethodSpec(
        name=name,
        kind="fixed",
        tableau=tableau,
        grid=grid,
        interp=str(options.get("interp", "linear")),
        perturb=bool(options.get("perturb", False)),
    )


def _times(values, reversed_time: bool) -> tuple[float, ...]:
    """User times as solver times (negated when integrating backwards)."""
    if values is None:
        return ()
    if isinstance(values, torch.Tensor):
        values = values.detach().reshape(-1).tolist()
    sign = -1.0 if reversed_time else 1.0
    return tuple(sign * float(x) for x in values)


def _reject_unknown(name: str, options: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UnknownOptionError(
            f"method {name!r} does not take option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(allowed))}"
        )
