"""The fixed-grid Adams loop: ``explicit_adams``, ``implicit_adams`` and ``fixed_adams``.

A method of order ``p`` needs ``f`` at the ``p`` latest grid points (``p - 1``
for the corrector), so the first ``p - 1`` steps are taken by a one-step
Runge–Kutta method of order at least ``p`` (Kutta's 3/8 rule for ``p <= 4``,
the eighth-order Dormand–Prince weights above). After that:

- ``explicit_adams`` takes Adams–Bashforth steps: one evaluation of ``f`` per step.
- ``implicit_adams`` / ``fixed_adams`` predict with Adams–Bashforth and correct
  with Adams–Moulton of the same order, P(EC)^m E: the corrector is repeated
  until two successive iterates agree within ``rtol``/``atol`` in the max norm,
  at most ``max_iters`` times (``max_iters=1`` is the classic PECE scheme; a
  corrector that has not converged after ``max_iters > 1`` iterations warns).
  ``explicit_adams`` accepts ``max_iters`` for torchdiffeq compatibility and
  ignores it.

States at the requested times are interpolated linearly between grid points
(or by cubic Hermite with ``interp="cubic"``), as the Runge–Kutta fixed-grid
loop does. ``max_order`` is the order of the formulas (default 4). In
torchdiffeq the same option counts one more and raises the order step by step
from a Runge–Kutta start; here the order is fixed from the first multistep step.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .errors import UnknownOptionError
from .integrate import (
    Callbacks,
    Segment,
    Trajectory,
    VectorField,
    fixed_grid_from_step_size,
)
from .methods import register_custom_method
from .problem import MethodSpec, ODEProblem
from .solvers.adams import (
    MAX_ORDER,
    adams_bashforth_step,
    adams_moulton_base,
    bashforth_weights_on_grid,
    moulton_weights_on_grid,
)
from .solvers.runge_kutta import runge_kutta_step
from .solvers.tableau import ButcherTableau
from .solvers.tableaus import TABLEAUS

ADAMS_OPTIONS = frozenset(
    {
        "step_size",
        "grid_constructor",
        "perturb",
        "interp",
        "max_iters",
        "max_order",
        "norm",
        "dtype",
    }
)
"""Options of the Adams methods (``norm`` and ``dtype`` are accepted for torchdiffeq
compatibility; the corrector's convergence test always uses the max norm)."""

DEFAULT_ORDER = 4
DEFAULT_MAX_ITERS = 4

_HERMITE = ButcherTableau(name="hermite", order=3, c=(0.0,), a=((),), b=(1.0,))
"""A one-stage stand-in without ``dense`` weights: its segments interpolate by cubic Hermite."""


def _startup_tableau(order: int) -> ButcherTableau:
    return TABLEAUS["rk4"] if order <= 4 else TABLEAUS["dopri8"]


def _corrector_converged(
    previous: torch.Tensor,
    current: torch.Tensor,
    rtol: float | torch.Tensor,
    atol: float | torch.Tensor,
) -> bool:
    """``max |Δ| / (atol + rtol · max(|previous|, |current|)) < 1``."""
    with torch.no_grad():
        scale = torch.maximum(previous.abs(), current.abs()).mul_(rtol).add_(atol)
        ratio = ((current - previous).abs() / scale).max()
    return bool(ratio < 1)


def integrate_adams(
    func: VectorField,
    y0: torch.Tensor,
    t_eval: Sequence[float],
    grid: Sequence[float],
    *,
    order: int = DEFAULT_ORDER,
    corrector: bool = True,
    max_iters: int = DEFAULT_MAX_ITERS,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    interp: str = "linear",
    perturb: bool = False,
    callbacks: Callbacks | None = None,
    record_segments: bool = False,
) -> Trajectory:
    """Integrate on ``grid`` (increasing, from ``t_eval[0]`` to ``t_eval[-1]``) by Adams steps.

    ``func(t, y, perturb)`` is the vector field in solver time. With
    ``corrector=False`` it is Adams–Bashforth, else Adams–Bashforth–Moulton.
    """
    callbacks = callbacks or Callbacks()
    startup = _startup_tableau(order)
    past_f: deque[torch.Tensor] = deque(maxlen=order)
    past_t: deque[float] = deque(maxlen=order)
    after = 1 if perturb else 0
    before = -1 if perturb else 0

    cursor_next = 1
    ys = [y0]
    segments: list[Segment] | None = [] if record_segments else None
    y = y0
    f_here: torch.Tensor | None = None
    steps = 0
    unconverged: list[float] = []
    for t, t1 in zip(grid[:-1], grid[1:]):
        if cursor_next >= len(t_eval):
            break
        h = t1 - t
        if callbacks.step is not None:
            callbacks.step(t, y, h)
        if f_here is None:
            f_here = func(t, y, after)
        past_f.appendleft(f_here)
        past_t.appendleft(t)
        if len(past_f) < order:
            y1 = runge_kutta_step(
                startup, func, t, y, f_here, h, t1=t1, perturb_end=perturb, with_error=False
            ).y1
        else:
            y1 = adams_bashforth_step(y, past_f, bashforth_weights_on_grid(past_t, t1), h)
            if corrector:
                # The corrector of order p uses f_{n+1} and the p - 1 latest values.
                recent_t = list(past_t)[: order - 1]
                moulton = moulton_weights_on_grid(recent_t, t1) if recent_t else (1.0,)
                base = adams_moulton_base(y, list(past_f)[: order - 1], moulton, h)
                converged = False
                for _ in range(max_iters):
                    f_end = func(t1, y1, before)
                    corrected = torch.add(base, f_end, alpha=h * moulton[0])
                    # With max_iters=1 (PECE) the single correction is the method itself.
                    converged = max_iters == 1 or _corrector_converged(y1, corrected, rtol, atol)
                    y1 = corrected
                    if converged:
                        break
                if not converged:
                    unconverged.append(t1)
        steps += 1
        if callbacks.accept_step is not None:
            callbacks.accept_step(t, y, h)

        saves = []
        while cursor_next < len(t_eval) and t_eval[cursor_next] <= t1:
            saves.append(t_eval[cursor_next])
            cursor_next += 1
        f_next = None
        if interp == "cubic" and (saves or segments is not None):
            f_next = func(t1, y1, after)
            segment = Segment(t, t1, y, y1, [f_here], f_next, _HERMITE)
        else:
            segment = Segment(t, t1, y, y1, [f_here], None, None)
        for te in saves:
            ys.append(y1 if te == t1 else segment.evaluate(te))
        if segments is not None:
            segments.append(segment)
        y, f_here = y1, f_next

    if unconverged:
        warnings.warn(
            f"the Adams–Moulton corrector did not converge within max_iters={max_iters} "
            f"on {len(unconverged)} step(s), first at t={unconverged[0]:.6g}; the result "
            "is less accurate than the tolerances ask. Use a smaller step_size, raise "
            "max_iters, or use an implicit method if the problem is stiff.",
            RuntimeWarning,
            stacklevel=2,
        )
    stats = {"steps": steps, "accepted": steps, "rejected": 0}
    return Trajectory(ys=ys, stats=stats, segments=segments)


# ----------------------------------------------------------------------- method specs
def _grid_for(
    problem: ODEProblem,
    func: VectorField,
    y0: torch.Tensor,
    t_eval: Sequence[float],
    step_size: float | None,
    grid_constructor: Callable | None,
) -> list[float]:
    if step_size is not None:
        return fixed_grid_from_step_size(t_eval[0], t_eval[-1], step_size)
    if grid_constructor is not None:
        t_tensor = torch.tensor(list(t_eval), dtype=problem.time_dtype, device=y0.device)
        grid = [float(x) for x in grid_constructor(func, y0, t_tensor).detach().reshape(-1)]
        if grid[0] != t_eval[0] or grid[-1] != t_eval[-1]:
            raise UnknownOptionError(
                "grid_constructor must return a grid starting at t[0] and ending at t[-1]"
            )
        if any(b <= a for a, b in zip(grid[:-1], grid[1:])):
            raise UnknownOptionError("grid_constructor must return a strictly increasing grid")
        return grid
    return list(t_eval)


def _int_option(options: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UnknownOptionError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def build_adams_method(
    name: str,
    options: dict[str, Any],
    t_solver: Sequence[float],
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
) -> MethodSpec:
    """The :class:`MethodSpec` of ``explicit_adams``, ``implicit_adams`` or ``fixed_adams``."""
    step_size = options.get("step_size")
    grid_constructor = options.get("grid_constructor")
    if step_size is not None and grid_constructor is not None:
        raise UnknownOptionError("give either step_size or grid_constructor, not both")
    if step_size is not None:
        step_size = float(step_size)
        if not (step_size > 0 and math.isfinite(step_size)):
            raise UnknownOptionError(f"step_size must be positive and finite, got {step_size}")
    if grid_constructor is not None and not callable(grid_constructor):
        raise UnknownOptionError("grid_constructor must be callable as (func, y0, t) -> grid")
    interp = options.get("interp", "linear")
    if interp not in ("linear", "cubic"):
        raise UnknownOptionError(f"interp must be 'linear' or 'cubic', got {interp!r}")
    order = _int_option(options, "max_order", DEFAULT_ORDER, 1, MAX_ORDER)
    max_iters = _int_option(options, "max_iters", DEFAULT_MAX_ITERS, 1, 10_000)
    perturb = bool(options.get("perturb", False))
    corrector = name != "explicit_adams"

    def custom(
        problem: ODEProblem,
        func: VectorField,
        y0: torch.Tensor,
        t_eval: Sequence[float],
        record_segments: bool,
    ) -> Trajectory:
        grid = _grid_for(problem, func, y0, t_eval, step_size, grid_constructor)
        return integrate_adams(
            func,
            y0,
            t_eval,
            grid,
            order=order,
            corrector=corrector,
            max_iters=max_iters,
            rtol=rtol,
            atol=atol,
            interp=interp,
            perturb=perturb,
            callbacks=problem.callbacks,
            record_segments=record_segments,
        )

    return MethodSpec(name=name, kind="custom", interp=interp, perturb=perturb, custom=custom)


ADAMS_METHOD_NAMES = ("explicit_adams", "implicit_adams", "fixed_adams")

for _name in ADAMS_METHOD_NAMES:
    register_custom_method(_name, ADAMS_OPTIONS, build_adams_method)

__all__ = [
    "ADAMS_METHOD_NAMES",
    "ADAMS_OPTIONS",
    "build_adams_method",
    "integrate_adams",
]
