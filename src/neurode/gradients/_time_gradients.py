"""Gradients with respect to the save times, for methods that differentiate the solve.

For a save time ``t_i`` (i > 0), ``∂y(t_i)/∂t_i = f(t_i, y(t_i))``; for the start,
``∂y(t_i)/∂t_0 = -Φ(t_i, t_0) f(t_0, y_0)``, which the method's own derivative with
respect to the initial state produces if that state is shifted by
``-(t_0 - t_0^{detached}) f(t_0, y_0)`` (zero in value). ``y(t_0) = y_0`` itself
does not depend on ``t_0``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..integrate.problem import ODEProblem


def with_time_gradients(
    problem: ODEProblem,
    y0: torch.Tensor,
    t: torch.Tensor,
    solve: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``solve(y0)`` (the saved states, stacked), made differentiable in ``t`` too."""
    if not (t.requires_grad and torch.is_grad_enabled()):
        return solve(y0)
    times = t.to(problem.time_dtype)
    shifted = y0 - (t[0] - t[0].detach()) * problem.call_user(times[0], y0)
    ys = solve(shifted)
    later = [
        y + (t_i - t_i.detach()) * problem.call_user(time, y)
        for t_i, time, y in zip(t[1:], times[1:], ys[1:])
    ]
    return torch.stack([y0, *later])
