"""Per-sample batching: every row of the batch is its own initial value problem.

``solve(func, y0, t, batch="per_sample")`` treats ``y0[b]`` as an independent
problem (torchode's semantics): each row has its own step size, error norm,
accept/reject decision, save times and termination, while all rows advance
together, one batched evaluation of ``func`` per stage. A row that rejects its
step keeps its state; a row that has reached its last save time is frozen.

In the default joint mode (torchdiffeq's) the batch is one system: one step
size, one error norm over all rows, so the stiffest row sets everyone's step.

Here ``func`` is called as ``func(t, y)`` with ``t`` of shape ``(B,)``, each
row's own time, and ``y`` of shape ``(B, ...)``. It is the one integration loop
(:mod:`neurode.integrate.loop`) with per-row times and a per-row controller: the
same stepper, step-size rule and initial-step rule as a single problem gets, so
a row solved in the batch takes the steps it would take when solved alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import (
    InvalidTimesError,
    NonFiniteInputError,
    StructureMismatchError,
    UnknownMethodError,
    UnknownOptionError,
)
from ..solvers.interpolation import row_scale
from .methods import build_method
from .problem import ODEProblem
from .solution import Solution
from .tolerances import check_tolerance_pair

BATCH_MODES = ("joint", "per_sample")

_UNSUPPORTED_OPTIONS = frozenset({"step_t", "jump_t", "grid_points", "norm"})


def _first_row(mask: torch.Tensor) -> int:
    return int(torch.nonzero(mask)[0])


# ------------------------------------------------------------------------ entry point
def _check_y0(y0: Any) -> torch.Tensor:
    if not isinstance(y0, torch.Tensor):
        raise StructureMismatchError(
            "batch='per_sample' needs y0 to be one tensor whose first dimension is the "
            f"batch, got {type(y0).__name__}"
        )
    if y0.ndim < 1 or y0.shape[0] < 1:
        raise StructureMismatchError(
            f"batch='per_sample' needs y0 with a leading batch dimension, got shape "
            f"{tuple(y0.shape)}"
        )
    if not y0.is_floating_point():
        raise NonFiniteInputError(f"y0 must be floating point, got {y0.dtype}")
    if not bool(torch.isfinite(y0).all()):
        raise NonFiniteInputError("y0 contains NaN or infinity")
    return y0


def _check_times(t: Any, batch: int, device: torch.device) -> torch.Tensor:
    """``t`` as a ``(B, T)`` tensor (a shared ``(T,)`` one is expanded)."""
    if not isinstance(t, torch.Tensor):
        try:
            t = torch.as_tensor(t, dtype=torch.float64)
        except (TypeError, ValueError) as error:
            raise InvalidTimesError(f"t must be a tensor of times: {error}") from None
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    t = t.to(device)
    if t.ndim == 1:
        t = t.unsqueeze(0).expand(batch, -1)
    elif t.ndim != 2 or t.shape[0] != batch:
        raise InvalidTimesError(
            f"with batch='per_sample', t must have shape (T,) or (B, T) with B={batch} "
            f"(the batch size of y0), got {tuple(t.shape)}"
        )
    if t.shape[1] < 1:
        raise InvalidTimesError("t must hold at least one time")
    if not bool(torch.isfinite(t).all()):
        raise InvalidTimesError("t contains NaN or infinity")
    if t.shape[1] > 1:
        diffs = t[:, 1:] - t[:, :-1]
        increasing = (diffs > 0).all(dim=1)
        decreasing = (diffs < 0).all(dim=1)
        broken = ~(increasing | decreasing)
        if bool(broken.any()):
            row = _first_row(broken)
            raise InvalidTimesError(
                f"t[{row}] must be strictly increasing or strictly decreasing "
                "(duplicates are not allowed)"
            )
        if not (bool(increasing.all()) or bool(decreasing.all())):
            raise InvalidTimesError("all rows of t must run in the same direction")
    return t


def solve_per_sample(
    func: Callable,
    y0: torch.Tensor,
    t: torch.Tensor | Sequence[float],
    *,
    method: str | None = "dopri5",
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    gradient: str = "direct",
    options: dict[str, Any] | None = None,
    gradient_options: dict[str, Any] | None = None,
    dense: bool = False,
) -> Solution:
    """:func:`neurode.solve` with ``batch="per_sample"``; see the module docstring.

    Returns a :class:`~neurode.integrate.solution.Solution` with ``ys`` of shape
    ``(T, B, ...)``, ``ts`` the times as given, and ``stats`` holding ``nfe``
    (batched evaluations of ``func``, an int) and per-row ``steps``,
    ``accepted``, ``rejected`` (long tensors of shape ``(B,)``).
    """
    if not callable(func):
        raise StructureMismatchError("func must be callable as func(t, y)")
    y0 = _check_y0(y0)
    batch = y0.shape[0]
    times = _check_times(t, batch, y0.device)
    rtol, atol = check_tolerance_pair(rtol, atol, y0, target="y0")
    if gradient != "direct":
        raise UnknownOptionError(
            f"batch='per_sample' supports gradient='direct' only, not {gradient!r}; "
            "use batch='joint' for the other gradient methods"
        )
    if gradient_options:
        raise UnknownOptionError(
            f"gradient='direct' takes no options, got {', '.join(sorted(gradient_options))}"
        )
    if dense:
        raise UnknownOptionError(
            "dense output is not available with batch='per_sample'; pass the times you "
            "need in t (per row if they differ: shape (B, T))"
        )
    options = dict(options or {})
    unsupported = sorted(_UNSUPPORTED_OPTIONS & set(options))
    if unsupported:
        raise UnknownOptionError(
            f"option(s) {', '.join(unsupported)} are not available with batch='per_sample'"
        )

    reversed_time = times.shape[1] > 1 and bool(times[0, 1] < times[0, 0])
    sign = -1.0 if reversed_time else 1.0
    t_solver = (sign * times.detach()).to(torch.float64)
    spec = build_method(method, options, rtol, atol, t_solver[0].tolist(), y0)
    if spec.kind != "adaptive":
        raise UnknownMethodError(
            f"batch='per_sample' needs an adaptive Runge–Kutta method (dopri5, tsit5, "
            f"dopri8, bosh3, ...), not {spec.name!r}"
        )
    time_dtype = y0.dtype  # func sees t in the state's dtype, as with batch="joint"
    problem = ODEProblem(
        func=func,
        layout=None,
        state_shape=y0.shape,
        state_dtype=y0.dtype,
        time_dtype=time_dtype,
        device=y0.device,
        reversed=reversed_time,
        method=spec,
    )

    time_grad = times.requires_grad and torch.is_grad_enabled()
    start = y0
    if time_grad:
        # ∂y(t_j)/∂t_0 = -Φ(t_j, t_0) f(t_0, y_0): shift y0 by a zero that carries it.
        t0 = times[:, 0]
        start = y0 - row_scale(t0 - t0.detach(), y0) * problem.call_user(t0.to(time_dtype), y0)
    trajectory = problem.integrate(start, t_solver)
    ys = trajectory.ys[0]
    if time_grad:
        # ∂y(t_j)/∂t_j = f(t_j, y(t_j)) for j >= 1; the state saved at t_0 is y0 itself,
        # independent of t_0.
        shifted = [y0]
        for j in range(1, ys.shape[0]):
            tj = times[:, j]
            slope = problem.call_user(tj.to(time_dtype), ys[j])
            shifted.append(ys[j] + row_scale(tj - tj.detach(), ys[j]) * slope)
        ys = torch.stack(shifted)
    stats = {"nfe": problem.nfe, **trajectory.stats}
    return Solution(ys=ys, ts=t if isinstance(t, torch.Tensor) else times, stats=stats)


__all__ = ["BATCH_MODES", "solve_per_sample"]
