"""Pieces shared by the gradient methods that supply their own backward pass.

A method of this kind runs its forward solve without building a graph and
computes ``dL/dy0``, ``dL/dθ`` and ``dL/dt`` itself when autograd asks. It
implements the two halves as a :class:`CustomBackward` object and lets
:class:`SolveFunction` (a ``torch.autograd.Function``) connect them to autograd.

Gradients with respect to the save times follow from the solution alone:

    dL/dt_i = <dL/dy(t_i), f(t_i, y(t_i))>                 for i > 0,
    dL/dt_0 = -<a(t_0), f(t_0, y_0)>,

where ``a(t_0)`` is the adjoint carried back from the later save times (the
direct ``dL/dy(t_0)`` is not part of it: ``y(t_0) = y_0`` does not move with
``t_0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch.autograd.function import once_differentiable

from ..integrate.problem import ODEProblem
from .captured import guard_first_evaluation


class CustomBackward(Protocol):
    """The two halves of a gradient method with a hand-written backward pass."""

    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        """Solve without a graph; return the saved states ``(len(t), *state_shape)``."""

    def backward(
        self, ys: torch.Tensor, grad_ys: torch.Tensor, needs_grad: Sequence[bool]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[torch.Tensor | None]]:
        """``(dL/dy0, dL/dt, [dL/dθ_k])`` given ``dL/dys``; ``needs_grad`` as autograd's."""


class SolveFunction(torch.autograd.Function):
    """``ys = solve(y0, t, θ)`` with the backward pass of a :class:`CustomBackward`.

    First order only: differentiating the gradients again (``create_graph=True``)
    raises; use ``gradient="direct"`` for higher derivatives.
    """

    @staticmethod
    def forward(ctx, method: CustomBackward, y0: torch.Tensor, t: torch.Tensor, *params):
        ys = method.forward(y0)
        ctx.method = method
        # Where torchdiffeq keeps the adjoint's options (its tests replace the norm there).
        ctx.adjoint_options = getattr(method, "adjoint_options", None)
        ctx.save_for_backward(ys)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys: torch.Tensor):
        (ys,) = ctx.saved_tensors
        grad_y0, grad_t, grad_params = ctx.method.backward(ys, grad_ys, ctx.needs_input_grad[1:])
        return (None, grad_y0, grad_t, *grad_params)


def trainable(params: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The parameters that need a gradient (others are left out of the backward pass)."""
    return tuple(p for p in params if isinstance(p, torch.Tensor) and p.requires_grad)


def needs_backward(y0: torch.Tensor, t: torch.Tensor, params: Sequence[torch.Tensor]) -> bool:
    """Whether autograd will ask for any gradient of this solve."""
    if not torch.is_grad_enabled():
        return False
    return y0.requires_grad or t.requires_grad or len(params) > 0


def apply_custom_backward(
    method: CustomBackward, y0: torch.Tensor, t: torch.Tensor, params: Sequence[torch.Tensor]
) -> torch.Tensor:
    """``method``'s forward solve, with its own backward when autograd needs one."""
    if torch.is_grad_enabled():
        guard_first_evaluation(method.problem, params, method.gradient_name)
    if needs_backward(y0, t, params):
        return SolveFunction.apply(method, y0, t, *params)
    with torch.no_grad():
        return method.forward(y0)


def save_time_gradients(
    problem: ODEProblem,
    t_solver: Sequence[float],
    ys: torch.Tensor,
    grad_ys: torch.Tensor,
) -> list[torch.Tensor]:
    """``[<dL/dy(t_i), f(t_i, y_i)>]`` for every save time (the entry for ``i = 0`` is unused).

    Evaluated without a graph; costs ``len(t) - 1`` evaluations of ``func``.
    """
    values = [torch.zeros((), dtype=ys.dtype, device=ys.device)]
    with torch.no_grad():
        for i in range(1, len(t_solver)):
            f_i = problem.call_user(problem.time_tensor(t_solver[i]), ys[i])
            values.append(torch.vdot(f_i.reshape(-1), grad_ys[i].reshape(-1)))
    return values


def start_time_gradient(
    problem: ODEProblem, t0_solver: float, y0: torch.Tensor, adjoint: torch.Tensor
) -> torch.Tensor:
    """``-<a(t_0), f(t_0, y_0)>`` (one evaluation of ``func``, no graph)."""
    with torch.no_grad():
        f0 = problem.call_user(problem.time_tensor(t0_solver), y0)
        return -torch.vdot(f0.reshape(-1), adjoint.reshape(-1))


def record_backward_stats(stats: dict[str, Any], **counts: int) -> None:
    """Add backward-pass counts to the user's stats (summed over repeated backward passes)."""
    for key, value in counts.items():
        stats[key] = stats.get(key, 0) + value
