"""Method names, the options each accepts, and turning them into a :class:`MethodSpec`.

Every explicit Runge–Kutta tableau is a method; other families (Adams, scipy,
implicit and Rosenbrock methods) register a builder here under their names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..errors import InvalidOptionError, UnknownMethodError, UnknownOptionError
from ..solvers.tableaus import TABLEAUS
from .controller import PIDCoefficients, count_grid_steps
from .problem import AdaptiveOptions, FixedGridOptions, MethodSpec
from .runge_kutta_stepper import RungeKuttaMethod
from .stiffness import StiffnessMonitor

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
FIXED_OPTIONS = frozenset(
    {"step_size", "grid_constructor", "perturb", "interp", "dtype", "max_num_steps"}
)

# Families that are not explicit Runge–Kutta register here: name -> (options, builder).
_CUSTOM: dict[str, tuple[frozenset[str], Callable[..., MethodSpec]]] = {}


def register_method(name: str, options: frozenset[str], builder: Callable[..., MethodSpec]) -> None:
    """Add a method family member under ``name``.

    ``builder(name, options, context)`` returns the :class:`MethodSpec`; ``context``
    is a :class:`BuildContext` with the tolerances, the solver times and helpers
    shared by every method (the adaptive and fixed-grid options parsed the common way).
    """
    _CUSTOM[name] = (options, builder)


def method_names() -> list[str]:
    return sorted(set(TABLEAUS) | set(_CUSTOM))


def is_adaptive(name: str) -> bool:
    tableau = TABLEAUS.get(name)
    if tableau is not None:
        return tableau.adaptive
    entry = _CUSTOM.get(name)
    return entry is not None and "first_step" in entry[0] and "step_size" not in entry[0]


class BuildContext:
    """What a method builder gets besides its name and options."""

    def __init__(
        self,
        rtol: float | torch.Tensor,
        atol: float | torch.Tensor,
        t_solver: list[float],
        y0: torch.Tensor,
        grid_constructor_args: Callable[[], tuple] | None,
        reversed_time: bool,
    ):
        self.rtol, self.atol = rtol, atol
        self.t_solver = t_solver
        self.y0 = y0
        self.grid_constructor_args = grid_constructor_args
        self.reversed_time = reversed_time

    def adaptive_options(self, options: dict[str, Any]) -> AdaptiveOptions:
        """The options every adaptive method shares, checked."""
        try:
            coefficients = PIDCoefficients(
                safety=_number(options, "safety", 0.9),
                ifactor=_number(options, "ifactor", 10.0),
                dfactor=_number(options, "dfactor", 0.2),
                pcoeff=_number(options, "pcoeff", 0.0),
                icoeff=_number(options, "icoeff", 1.0),
                dcoeff=_number(options, "dcoeff", 0.0),
                min_step=_number(options, "min_step", 0.0),
                max_step=_number(options, "max_step", math.inf),
            )
        except ValueError as error:
            raise InvalidOptionError(str(error)) from None
        first_step = options.get("first_step")
        if first_step is not None:
            first_step = _number(options, "first_step", None)
            if not (first_step > 0 and math.isfinite(first_step)):
                raise InvalidOptionError(
                    f"first_step must be positive and finite, got {options['first_step']}"
                )
        step_t = options.get("step_t", options.get("grid_points"))
        return AdaptiveOptions(
            rtol=self.rtol,
            atol=self.atol,
            norm=options.get("norm"),
            coefficients=coefficients,
            first_step=first_step,
            max_num_steps=_max_num_steps(options),
            step_t=self.solver_times(step_t),
            jump_t=self.solver_times(options.get("jump_t")),
        )

    def fixed_options(
        self, options: dict[str, Any], interps=("linear", "cubic")
    ) -> FixedGridOptions:
        """The grid options every fixed-grid method shares, checked (the grid may call func)."""
        step_size = options.get("step_size")
        grid_constructor = options.get("grid_constructor")
        if step_size is not None and grid_constructor is not None:
            raise InvalidOptionError("give either step_size or grid_constructor, not both")
        interp = options.get("interp", "linear")
        if interp not in interps:
            raise InvalidOptionError(f"interp must be one of {', '.join(interps)}, got {interp!r}")
        max_num_steps = _max_num_steps(options)
        t0, t1 = self.t_solver[0], self.t_solver[-1]
        grid = None
        if step_size is not None:
            step_size = _number(options, "step_size", None)
            if not (step_size > 0 and math.isfinite(step_size)):
                raise InvalidOptionError(
                    f"step_size must be positive and finite, got {options['step_size']}"
                )
            if len(self.t_solver) > 1 and count_grid_steps(t0, t1, step_size) > max_num_steps:
                steps = count_grid_steps(t0, t1, step_size)
                raise InvalidOptionError(
                    f"step_size={step_size:g} needs {steps} steps over [{t0:g}, {t1:g}], more "
                    f"than max_num_steps={max_num_steps}; use a larger step_size or raise "
                    "options['max_num_steps']"
                )
        elif grid_constructor is not None:
            if not callable(grid_constructor):
                raise InvalidOptionError(
                    "grid_constructor must be callable as (func, y0, t) -> grid"
                )
            if self.grid_constructor_args is None:
                raise InvalidOptionError("grid_constructor is not available here")
            grid_tensor = grid_constructor(*self.grid_constructor_args())
            # The constructor sees solver times (negated when t decreases), as in torchdiffeq.
            grid = [float(x) for x in torch.as_tensor(grid_tensor).detach().reshape(-1).tolist()]
            if grid[0] != t0 or grid[-1] != t1:
                raise InvalidOptionError(
                    "grid_constructor must return a grid starting at t[0] and ending at t[-1]"
                )
            if any(b <= a for a, b in zip(grid[:-1], grid[1:])):
                raise InvalidOptionError("grid_constructor must return a strictly monotonic grid")
        else:
            grid = list(self.t_solver)
        return FixedGridOptions(
            grid=grid,
            step_size=step_size,
            interp=interp,
            perturb=bool(options.get("perturb", False)),
            max_num_steps=max_num_steps,
            given=step_size is not None or grid_constructor is not None,
        )

    def user_time(self, t: float) -> float:
        """The user's time of solver time ``t``."""
        return -t if self.reversed_time else t

    def solver_times(self, values) -> tuple[float, ...]:
        """User times as solver times (negated when integrating backwards)."""
        if values is None:
            return ()
        if isinstance(values, torch.Tensor):
            values = values.detach().reshape(-1).tolist()
        sign = -1.0 if self.reversed_time else 1.0
        return tuple(sign * float(x) for x in values)


def _number(options: dict[str, Any], name: str, default: float | None) -> float:
    value = options.get(name, default)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidOptionError(f"option {name} must be a number, got {value!r}")
    return float(value)


def _max_num_steps(options: dict[str, Any]) -> int:
    value = options.get("max_num_steps", 2**31 - 1)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
        raise InvalidOptionError(f"max_num_steps must be a positive integer, got {value!r}")
    return int(value)


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
    if not isinstance(name, str):
        raise UnknownMethodError(f"method must be a name (a string), got {type(name).__name__}")
    options = dict(options or {})
    context = BuildContext(rtol, atol, t_solver, y0, grid_constructor_args, reversed_time)
    if name in _CUSTOM:
        allowed, builder = _CUSTOM[name]
        _reject_unknown(name, options, allowed)
        return builder(name, options, context)
    tableau = TABLEAUS.get(name)
    if tableau is None:
        raise UnknownMethodError(
            f"unknown method {name!r}; choose one of: {', '.join(method_names())}"
        )
    if tableau.adaptive:
        _reject_unknown(name, options, ADAPTIVE_OPTIONS)
        return MethodSpec(
            name=name,
            kind="adaptive",
            stepper=lambda: RungeKuttaMethod(
                tableau, stiffness=StiffnessMonitor(tableau, user_time=context.user_time)
            ),
            tableau=tableau,
            adaptive=context.adaptive_options(options),
        )
    _reject_unknown(name, options, FIXED_OPTIONS)
    fixed = context.fixed_options(options)
    return MethodSpec(
        name=name,
        kind="fixed",
        stepper=lambda: RungeKuttaMethod(tableau, interpolation=fixed.interp, with_error=False),
        tableau=tableau,
        fixed=fixed,
    )


def _reject_unknown(name: str, options: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UnknownOptionError(
            f"method {name!r} does not take option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(allowed))}"
        )


__all__ = [
    "ADAPTIVE_OPTIONS",
    "FIXED_OPTIONS",
    "BuildContext",
    "build_method",
    "is_adaptive",
    "method_names",
    "register_method",
]
