"""Forward sensitivities as a user-facing function: the solution with its Jacobians.

``∂y(t_i)/∂y0`` and ``∂y(t_i)/∂θ`` come from integrating the sensitivity equation
``S' = ∂f/∂y S + ∂f/∂θ`` alongside ``y`` (see :mod:`neurode.gradients.forward`).
This is the cheap choice when parameters and states are few.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .api import solve
from .errors import NeurodeInputError


def sensitivities(
    func: Callable,
    y0: torch.Tensor | tuple[torch.Tensor, ...],
    t: torch.Tensor | Sequence[float],
    params: Sequence[torch.Tensor] | None = None,
    *,
    method: str | None = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: dict[str, Any] | None = None,
    jacobian: str = "auto",
    vectorize: bool = True,
) -> tuple[Any, torch.Tensor, tuple[torch.Tensor, ...]]:
    """The solution and its Jacobians with respect to ``y0`` and ``params`` at every ``t``.

    Args:
        func, y0, t, method, rtol, atol, options: as for :func:`neurode.solve`.
        params: the tensors to differentiate with respect to (default: ``func``'s
            parameters if it is an ``nn.Module``, else none).
        jacobian, vectorize: how the Jacobian products are formed (module docstring).

    Returns:
        ``(ys, dy_dy0, dy_dparams)``: ``ys`` shaped ``(T, *y0.shape)``;
        ``dy_dy0[i] = ∂y(t_i)/∂y0`` shaped ``(T, *y0.shape, *y0.shape)``;
        ``dy_dparams[k][i] = ∂y(t_i)/∂params[k]`` shaped ``(T, *y0.shape, *params[k].shape)``.
        For a tuple ``y0`` the Jacobians are with respect to the flat concatenation of
        its members, ``(T, n, n)`` and ``(T, n, *params[k].shape)``.

    The Jacobians are exact derivatives of the discrete solve (see the module docstring).
    """
    if params is None:
        params = tuple(func.parameters()) if isinstance(func, torch.nn.Module) else ()
    params = tuple(params)
    if not all(isinstance(p, torch.Tensor) for p in params):
        raise NeurodeInputError("params must be a sequence of tensors")
    sink: dict[str, Any] = {}
    with torch.no_grad():
        solution = solve(
            func,
            y0,
            t,
            method=method,
            rtol=rtol,
            atol=atol,
            options=options,
            gradient="forward",
            gradient_options={"jacobian": jacobian, "vectorize": vectorize, "jacobians": sink},
            params=params,
        )
    dy_dy0 = sink["dy_dy0"]
    dy_dparams = sink["dy_dparams"]
    if isinstance(y0, torch.Tensor):
        steps, shape = dy_dy0.shape[0], y0.shape
        dy_dy0 = dy_dy0.reshape(steps, *shape, *shape)
        dy_dparams = tuple(d.reshape(steps, *shape, *d.shape[2:]) for d in dy_dparams)
    return solution.ys, dy_dy0, dy_dparams
