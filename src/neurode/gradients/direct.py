"""Direct backpropagation through every solver step.

Exact for the discretisation, and any order of derivative works because every
operation of the step is an ordinary differentiable torch operation. Memory grows
with the number of steps (every stage is kept for backward).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import GradientUnavailableError, UnknownOptionError
from ..integrate.controller import GridController
from ..integrate.problem import ODEProblem
from . import GradientResult, register
from ._time_gradients import with_time_gradients
from .captured import captured_tensors
from .stiff_guard import refuse_gradients_past_stiffness


def solve_direct(
    problem: ODEProblem,
    y0: torch.Tensor,
    t: torch.Tensor,
    t_solver: list[float],
    *,
    params: tuple[torch.Tensor, ...] = (),
    options: dict[str, Any] | None = None,
    record_segments: bool = False,
) -> GradientResult:
    if options:
        raise UnknownOptionError(
            f"gradient='direct' takes no options, got {', '.join(sorted(options))}"
        )
    trajectories = []
    if not problem.method.differentiable:
        return _solve_without_gradient(problem, y0, t, t_solver, record_segments)
    if problem.method.kind == "fixed" and t.requires_grad and torch.is_grad_enabled():
        return _solve_with_differentiable_grid(problem, y0, t, t_solver, record_segments)

    def run(start: torch.Tensor) -> torch.Tensor:
        trajectories.append(problem.integrate(start, t_solver, record_segments=record_segments))
        return trajectories[-1].stack()

    ys = with_time_gradients(problem, y0, t, run)
    trajectory = trajectories[0]
    stats = dict(trajectory.stats)
    stats["nfe"] = problem.nfe
    ys = refuse_gradients_past_stiffness(ys, t, trajectory.stiff_at, problem.method.name)
    return GradientResult(ys=ys, stats=stats, segments=trajectory.segments)


def _solve_with_differentiable_grid(problem, y0, t, t_solver, record_segments) -> GradientResult:
    """A fixed grid whose times are tensors carrying ``t``'s gradient.

    The output at a save time is a composition of steps (and an interpolation) whose
    sizes are differences of grid times, and the grid times are ``t`` itself, or
    ``t[0] + k·h`` ending on ``t[-1]``: autograd through them gives the exact
    derivative of what was computed with respect to ``t`` (as torchdiffeq's does),
    where the ODE's ``f(t_i, y_i)`` would only approximate it to the method's order.
    No evaluation of ``func`` beyond the steps' own.
    """
    fixed = problem.method.fixed
    times = list((-t if problem.reversed else t).unbind(0))
    if fixed.step_size is not None:
        points = fixed.points(t_solver[0], t_solver[-1])
        grid = [times[0] + (point - t_solver[0]) for point in points[:-1]] + [times[-1]]
    elif fixed.given:  # a grid_constructor's points: only its ends move with t
        grid = [times[0], *fixed.grid[1:-1], times[-1]]
    else:
        grid = times
    controller = GridController(
        grid=grid,
        perturb=fixed.perturb,
        max_num_steps=fixed.max_num_steps,
        user_time=problem.user_time,
    )
    trajectory = problem.integrate(
        y0, times, controller=controller, record_segments=record_segments
    )
    ys = trajectory.stack()
    stats = dict(trajectory.stats)
    stats["nfe"] = problem.nfe
    return GradientResult(ys=ys, stats=stats, segments=trajectory.segments)


class _NoGradient(torch.autograd.Function):
    """Passes the solution through; its backward raises (the solve ran outside torch)."""

    @staticmethod
    def forward(ctx, method_name: str, ys: torch.Tensor, *inputs: torch.Tensor):
        ctx.method_name = method_name
        return ys.clone()

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor):
        raise GradientUnavailableError(
            f"no gradient flows back through method={ctx.method_name!r}: its solve runs outside "
            "torch. Use a torch method such as 'dopri5', 'tsit5' or 'implicit_adams', or "
            "odeint_adjoint / gradient='backsolve', which solve the adjoint with it too."
        )


def _solve_without_gradient(problem, y0, t, t_solver, record_segments) -> GradientResult:
    """The forward solve works whatever requires grad; only a backward through it raises."""
    with torch.no_grad():
        trajectory = problem.integrate(y0.detach(), t_solver, record_segments=record_segments)
    ys = trajectory.stack()
    if torch.is_grad_enabled():
        inputs = [x for x in (y0, t, *captured_tensors(problem.func)) if x.requires_grad]
        if inputs:
            ys = _NoGradient.apply(problem.method.name, ys, *inputs)
    stats = dict(trajectory.stats)
    stats["nfe"] = problem.nfe
    return GradientResult(ys=ys, stats=stats, segments=trajectory.segments)


register("direct", solve_direct)
