"""Direct backpropagation through every solver step.

Exact for the discretisation, and any order of derivative works because every
operation of the step is an ordinary differentiable torch operation. Memory grows
with the number of steps (every stage is kept for backward).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import GradientUnavailableError, UnknownOptionError
from ..integrate.problem import ODEProblem
from . import GradientResult, register
from ._time_gradients import with_time_gradients
from .captured import captured_tensors


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

    def run(start: torch.Tensor) -> torch.Tensor:
        trajectories.append(problem.integrate(start, t_solver, record_segments=record_segments))
        return trajectories[-1].stack()

    ys = with_time_gradients(problem, y0, t, run)
    trajectory = trajectories[0]
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
