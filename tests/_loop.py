"""The integration loop driven directly, for tests of the loop and of single tableaus."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from neurode.integrate.controller import GridController, PIDCoefficients, PIDController
from neurode.integrate.error_norm import ErrorNorm
from neurode.integrate.loop import Trajectory, integrate
from neurode.integrate.runge_kutta_stepper import RungeKuttaMethod
from neurode.solvers.tableau import ButcherTableau


def on_grid(
    field,
    y0: torch.Tensor,
    t_eval: Sequence[float],
    tableau: ButcherTableau,
    grid: Sequence[float],
    interpolation: str = "linear",
) -> Trajectory:
    """``tableau`` stepping along ``grid``; ``field(t, y, perturb)``."""
    stepper = RungeKuttaMethod(tableau, interpolation=interpolation, with_error=False)
    return integrate(field, y0, t_eval, stepper, GridController(grid=grid))


def adaptive(
    field,
    y0: torch.Tensor,
    t_eval: Sequence[float],
    tableau: ButcherTableau,
    rtol: float = 1e-7,
    atol: float = 1e-9,
) -> Trajectory:
    """``tableau`` with adaptive steps."""
    controller = PIDController(ErrorNorm(y0, rtol, atol), PIDCoefficients())
    return integrate(field, y0, t_eval, RungeKuttaMethod(tableau), controller)
