"""Direct backpropagation through every solver step.

Exact for the discretisation, and any order of derivative works because every
operation of the step is an ordinary differentiable torch operation. Memory grows
with the number of steps (every stage is kept for backward).

Gradients with respect to the times: for a save time ``t_i`` (i > 0)
``∂y(t_i)/∂t_i = f(t_i, y(t_i))``; for the start,
``∂y(t_i)/∂t_0 = -Φ(t_i, t_0) f(t_0, y_0)``, which autograd produces if the start
state is shifted by ``-(t_0 - t_0^{detached}) f(t_0, y_0)`` (zero in value).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UnknownOptionError
from ..problem import ODEProblem
from . import GradientResult, register


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
    time_grad = t.requires_grad and torch.is_grad_enabled()
    start = y0
    if time_grad:
        y0 = y0 - (t[0] - t[0].detach()) * problem.call_user(t[0], y0)
    trajectory = problem.integrate(y0, t_solver, record_segments=record_segments)
    ys = trajectory.ys
    if time_grad:
        # y(t_0) = y0 whatever t_0 is: the first saved state takes no time gradient.
        ys = [start] + [
            y + (t_i - t_i.detach()) * problem.call_user(t_i, y) for t_i, y in zip(t[1:], ys[1:])
        ]
    stats = dict(trajectory.stats)
    stats["nfe"] = problem.nfe
    return GradientResult(ys=torch.stack(ys), stats=stats, segments=trajectory.segments)


register("direct", solve_direct)
