"""``method="scipy_solver"``: the forward solve by ``scipy.integrate.solve_ivp``.

Options as torchdiffeq's scipy wrapper: ``solver`` (``"LSODA"`` by default,
or ``"RK45"``, ``"RK23"``, ``"DOP853"``, ``"Radau"``, ``"BDF"``, or an
``OdeSolver`` subclass), ``min_step``, ``max_step``, ``first_step``; ``rtol`` and
``atol`` are passed through. The state leaves torch for every evaluation, so no
gradient flows through the solve: the forward solve works on inputs that require
grad, and a backward through it raises
:class:`~neurode.errors.GradientUnavailableError` (torchdiffeq's semantics; the
backsolve adjoint, ``odeint_adjoint``, solves its backward system with scipy too and
works). Dense output, when recorded, is scipy's own interpolant.

scipy is an optional dependency (``pip install neurode[scipy]``), imported
only when this method is chosen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import GradientUnavailableError, InvalidOptionError, SolverError, UnknownOptionError
from .dense_output import Segment
from .loop import Trajectory
from .methods import BuildContext, register_method
from .problem import MethodSpec, ODEProblem
from .stepper import VectorField

SCIPY_SOLVERS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")

SCIPY_OPTIONS = frozenset(
    {"solver", "min_step", "max_step", "first_step", "norm", "grid_points", "eps", "dtype"}
)
"""``norm``, ``grid_points``, ``eps`` and ``dtype`` are accepted and ignored (as in torchdiffeq)."""


def _import_solve_ivp():
    try:
        from scipy.integrate import solve_ivp
    except ImportError:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(
            "method='scipy_solver' needs scipy; install it with `pip install neurode[scipy]` "
            "or choose another method (e.g. 'dopri5')"
        ) from None
    return solve_ivp


def _to_numpy_tolerance(value: float | torch.Tensor, like: torch.Tensor) -> float | np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().broadcast_to(like.shape).reshape(-1).cpu().double().numpy()
    return float(value)


@dataclass
class _ScipySegment(Segment):
    """One scipy step, evaluated by scipy's own dense output."""

    interpolant: Any = None

    def evaluate(self, t: float) -> torch.Tensor:
        if t == self.t0:
            return self.y0
        if t == self.t1:
            return self.y1
        value = np.asarray(self.interpolant(t)).reshape(self.y0.shape)
        return torch.as_tensor(value).to(dtype=self.y0.dtype, device=self.y0.device)


def integrate_scipy(
    func: VectorField,
    y0: torch.Tensor,
    t_eval: Sequence[float],
    *,
    solver: Any = "LSODA",
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    min_step: float = 0.0,
    max_step: float = math.inf,
    first_step: float | None = None,
    record_segments: bool = False,
) -> Trajectory:
    """Solve with ``solve_ivp`` and save at ``t_eval`` (increasing solver times).

    ``stats["steps"]`` counts scipy's accepted steps; scipy does not report
    rejected ones, so ``stats["rejected"]`` is 0 and ``stats["nfe"]`` (set by
    the caller) is the exact count of evaluations of ``func``, including those
    of rejected steps and of Jacobian estimates.
    """
    solve_ivp = _import_solve_ivp()
    if len(t_eval) == 1:
        return Trajectory(ys=[y0], stats={"steps": 0, "accepted": 0, "rejected": 0}, segments=[])
    shape, dtype, device = y0.shape, y0.dtype, y0.device

    def numpy_field(t: float, y: np.ndarray) -> np.ndarray:
        # A copy: scipy reuses its arrays, and func may keep what it is given.
        state = torch.tensor(y, dtype=dtype, device=device).reshape(shape)
        with torch.no_grad():
            out = func(float(t), state, 0)
        return out.detach().reshape(-1).cpu().numpy()

    # Only what differs from scipy's defaults: some solvers warn about options they ignore.
    extra: dict[str, float] = {}
    if first_step is not None:
        extra["first_step"] = first_step
    if min_step > 0:
        extra["min_step"] = min_step
    if math.isfinite(max_step):
        extra["max_step"] = max_step
    result = solve_ivp(
        numpy_field,
        (t_eval[0], t_eval[-1]),
        y0.detach().reshape(-1).cpu().numpy().copy(),
        method=solver,
        t_eval=list(t_eval),
        dense_output=True,
        rtol=_to_numpy_tolerance(rtol, y0),
        atol=_to_numpy_tolerance(atol, y0),
        **extra,
    )
    if result.status < 0:
        reached = float(result.sol.ts[-1]) if result.sol is not None else t_eval[0]
        raise SolverError(
            f"scipy's {solver} failed at t={reached:.6g}: {result.message}", t=reached
        )
    values = torch.as_tensor(result.y.T.copy()).to(dtype=dtype, device=device)
    ys = [y0] + [row.reshape(shape) for row in values[1:]]
    steps = len(result.sol.ts) - 1
    segments = None
    if record_segments:
        segments = _segments(result.sol, y0, ys, t_eval)
    stats = {"steps": steps, "accepted": steps, "rejected": 0}
    return Trajectory(ys=ys, stats=stats, segments=segments)


def _segments(ode_solution, y0: torch.Tensor, ys, t_eval) -> list[Segment]:
    """One segment per scipy step; the end states come from scipy's interpolant."""
    knots = list(ode_solution.ts)
    segments = []
    start = y0
    for interpolant, t0, t1 in zip(ode_solution.interpolants, knots[:-1], knots[1:]):
        end = torch.as_tensor(np.asarray(interpolant(t1)).reshape(y0.shape))
        end = end.to(dtype=y0.dtype, device=y0.device)
        segments.append(_ScipySegment(t0, t1, start, end, [], None, None, interpolant=interpolant))
        start = end
    return segments


def build_scipy_method(name: str, options: dict[str, Any], context: BuildContext) -> MethodSpec:
    """The :class:`MethodSpec` of ``scipy_solver``; checks options and that scipy imports."""
    _import_solve_ivp()
    rtol, atol = context.rtol, context.atol
    solver = options.get("solver", "LSODA")
    if isinstance(solver, str):
        if solver not in SCIPY_SOLVERS:
            raise UnknownOptionError(
                f"unknown scipy solver {solver!r}; choose one of: {', '.join(SCIPY_SOLVERS)}"
            )
    elif not isinstance(solver, type):
        raise InvalidOptionError("solver must be a name or a scipy.integrate.OdeSolver subclass")
    min_step = float(options.get("min_step", 0.0))
    max_step = float(options.get("max_step", math.inf))
    if not (0 <= min_step <= max_step and max_step > 0):
        raise InvalidOptionError(
            f"need 0 <= min_step <= max_step and max_step > 0, got {min_step}, {max_step}"
        )
    first_step = options.get("first_step")
    if first_step is not None:
        first_step = float(first_step)
        if not (first_step > 0 and math.isfinite(first_step)):
            raise InvalidOptionError(f"first_step must be positive and finite, got {first_step}")

    def custom(
        problem: ODEProblem,
        func: VectorField,
        y0: torch.Tensor,
        t_eval: Sequence[float],
        record_segments: bool,
    ) -> Trajectory:
        return integrate_scipy(
            func,
            y0,
            t_eval,
            solver=solver,
            rtol=rtol,
            atol=atol,
            min_step=min_step,
            max_step=max_step,
            first_step=first_step,
            record_segments=record_segments,
        )

    return MethodSpec(
        name=name, kind="custom", custom=custom, differentiable=False, replayable=False
    )


register_method("scipy_solver", SCIPY_OPTIONS, build_scipy_method)

__all__ = [
    "SCIPY_OPTIONS",
    "SCIPY_SOLVERS",
    "GradientUnavailableError",
    "build_scipy_method",
    "integrate_scipy",
]
