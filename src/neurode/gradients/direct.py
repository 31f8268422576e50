"""Direct backpropagation through every solver step.

Exact for the discretisation, and any order of derivative works because every
operation of the step is an ordinary differentiable torch operation. Memory grows
with the number of steps (every stage is kept for backward).
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import UnknownOptionError
from ..integrate.problem import ODEProblem
from . import GradientResult, register
from ._time_gradients import with_time_gradients


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

    def run(start: torch.Tensor) -> torch.Tensor:
        trajectories.append(problem.integrate(start, t_solver, record_segments=record_segments))
        return trajectories[-1].stack()

    ys = with_time_gradients(problem, y0, t, run)
    trajectory = trajectories[0]
    stats = dict(trajectory.stats)
    stats["nfe"] = problem.nfe
    return GradientResult(ys=ys, stats=stats, segments=trajectory.segments)


register("direct", solve_direct)
