"""Per-sample batching: every row of the batch is its own initial value problem.

``solve(func, y0, t, batch="per_sample")`` treats ``y0[b]`` as an independent
problem (torchode's semantics): each row has its own step size, error norm,
accept/reject decision, save times and termination, while all rows advance
together, one batched evaluation of ``func`` per stage. A row that rejects its
step keeps its state; a row that has reached its last save time is frozen.

In the default joint mode (torchdiffeq's) the batch is one system: one step
size, one error norm over all rows, so the stiffest row sets everyone's step.

Here ``func`` is called as ``func(t, y)`` with ``t`` of shape ``(B,)``, each
row's own time, and ``y`` of shape ``(B, ...)``. The step of row ``b`` is the
same embedded Runge–Kutta step, step-size controller and initial-step rule as
the joint loop in :mod:`neurode.integrate` applies to a single problem, so a
row solved in the batch takes the steps it would take when solved alone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._validation import check_tolerance
from .errors import (
    InvalidTimesError,
    MaxStepsExceededError,
    NonFiniteInputError,
    NonFiniteStateError,
    StepSizeTooSmallError,
    StructureMismatchError,
    UnknownMethodError,
    UnknownOptionError,
)
from .integrate import AdaptiveOptions
from .methods import build_method
from .problem import ODEProblem
from .solution import Solution
from .solvers.runge_kutta import linear_combination
from .solvers.tableau import ButcherTableau

RowField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``func(t, y)`` in solver time: ``t`` of shape ``(B,)`` (float64), ``y`` of shape ``(B, ...)``."""

BATCH_MODES = ("joint", "per_sample")

_UNSUPPORTED_OPTIONS = frozenset({"step_t", "jump_t", "grid_points", "norm"})


@dataclass
class PerSampleTrajectory:
    """Saved states ``ys`` of shape ``(T, B, ...)`` and per-row statistics of shape ``(B,)``."""

    ys: torch.Tensor
    steps: torch.Tensor
    accepted: torch.Tensor
    rejected: torch.Tensor


@dataclass
class _Step:
    y1: torch.Tensor
    f1: torch.Tensor | None
    error_estimate: torch.Tensor
    stages: list[torch.Tensor]


# --------------------------------------------------------------------- row-wise numerics
def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` of shape ``(B,)`` as ``(B, 1, ..., 1)`` in the dtype of ``like``."""
    return values.to(like.dtype).reshape((-1,) + (1,) * (like.ndim - 1))


def _runge_kutta_step_rows(
    tableau: ButcherTableau,
    func: RowField,
    t: torch.Tensor,
    y0: torch.Tensor,
    f0: torch.Tensor,
    step_size: torch.Tensor,
    t1: torch.Tensor,
) -> _Step:
    """One embedded Runge–Kutta step with a step size per row.

    ``k_i = f(t + c_i h, y0 + h Σ_j a_ij k_j)``, ``y1 = y0 + h Σ_i b_i k_i``,
    error ``h Σ_i (b_i − b̂_i) k_i``, with ``h`` of shape ``(B,)``; stages with
    ``c_i = 1`` are evaluated at exactly ``t1``.
    """
    h = _rows(step_size, y0)
    stages = [f0]
    y1 = None
    for i in range(1, tableau.stages):
        y_stage = torch.addcmul(y0, h, linear_combination(None, stages, tableau.a[i]))
        if tableau.fsal and i == tableau.stages - 1:
            y1 = y_stage
        c = tableau.c[i]
        stages.append(func(t1 if c == 1.0 else t + c * step_size, y_stage))
    if y1 is None:
        y1 = torch.addcmul(y0, h, linear_combination(None, stages, tableau.b))
    error_estimate = h * linear_combination(None, stages, tableau.b_error)
    return _Step(y1, stages[-1] if tableau.fsal else None, error_estimate, stages)


def _dense_rows(
    tableau: ButcherTableau,
    step: _Step,
    y0: torch.Tensor,
    f1: torch.Tensor,
    step_size: torch.Tensor,
    theta: torch.Tensor,
) -> torch.Tensor:
    """The solution at ``t + θ h`` with ``θ`` of shape ``(B,)``.

    The tableau's own interpolant ``y0 + h Σ_i b_i(θ) k_i`` when it has one, else
    cubic Hermite through ``(y0, k_1)`` and ``(y1, f1)``.
    """
    h = _rows(step_size, y0)
    if tableau.dense is not None:
        weights = _dense_weight_rows(tableau, theta).to(y0.dtype)
        total = None
        for i in _dense_stages(tableau):
            weight = weights[:, i].reshape(h.shape)
            stage = step.stages[i]
            total = weight * stage if total is None else torch.addcmul(total, weight, stage)
        return y0 if total is None else torch.addcmul(y0, h, total)
    th = _rows(theta, y0)
    th2 = th * th
    th3 = th2 * th
    h00 = 2 * th3 - 3 * th2 + 1
    h10 = th3 - 2 * th2 + th
    h01 = -2 * th3 + 3 * th2
    h11 = th3 - th2
    return h00 * y0 + h01 * step.y1 + h * (h10 * step.stages[0] + h11 * f1)


@functools.cache
def _dense_matrix(tableau: ButcherTableau, device: torch.device) -> torch.Tensor:
    """``dense`` as a float64 matrix ``(stages, degree)``, zero-padded."""
    degree = max(len(row) for row in tableau.dense)
    rows = [list(row) + [0.0] * (degree - len(row)) for row in tableau.dense]
    return torch.tensor(rows, dtype=torch.float64, device=device)


@functools.cache
def _dense_stages(tableau: ButcherTableau) -> tuple[int, ...]:
    """The stages with a non-zero dense weight."""
    return tuple(i for i, row in enumerate(tableau.dense) if any(c != 0.0 for c in row))


def _dense_weight_rows(tableau: ButcherTableau, theta: torch.Tensor) -> torch.Tensor:
    """``b_i(θ_b) = Σ_j dense[i][j] θ_b^{j+1}`` for every row ``b``: shape ``(B, stages)``."""
    matrix = _dense_matrix(tableau, theta.device)
    exponents = torch.arange(1, matrix.shape[1] + 1, dtype=torch.float64, device=theta.device)
    return (theta[:, None] ** exponents) @ matrix.T


def _error_ratio_rows(
    error_estimate: torch.Tensor,
    y0: torch.Tensor,
    y1: torch.Tensor,
    rtol: float | torch.Tensor,
    atol: float | torch.Tensor,
) -> torch.Tensor:
    """Per row ``RMS( e / (atol + rtol · max(|y0|, |y1|)) )`` as float64 of shape ``(B,)``."""
    with torch.no_grad():
        scale = torch.maximum(y0.abs(), y1.abs()) * rtol + atol
        scaled = (error_estimate.abs() / scale).reshape(y0.shape[0], -1).double()
        return scaled.square().mean(dim=1).sqrt()


def _rms_rows(x: torch.Tensor) -> torch.Tensor:
    return x.abs().reshape(x.shape[0], -1).double().square().mean(dim=1).sqrt()


def _initial_step_rows(
    func: RowField,
    t0: torch.Tensor,
    y0: torch.Tensor,
    f0: torch.Tensor,
    order: int,
    rtol: float | torch.Tensor,
    atol: float | torch.Tensor,
) -> torch.Tensor:
    """Hairer's starting step (HNW I §II.4) for every row; one evaluation of ``func``."""
    with torch.no_grad():
        scale = y0.abs() * rtol + atol
        d0 = _rms_rows(y0 / scale)
        d1 = _rms_rows(f0 / scale)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
        f1 = func(t0 + h0, y0 + _rows(h0, y0) * f0)
        d2 = _rms_rows((f1 - f0) / scale) / h0
        d12 = torch.maximum(d1, d2)
        h1 = torch.where(
            d12 <= 1e-15,
            torch.clamp(h0 * 1e-3, min=1e-6),
            (0.01 / d12) ** (1.0 / (order + 1)),
        )
        h = torch.minimum(100 * h0, h1)
        return torch.where(torch.isfinite(h0) & torch.isfinite(h1), h, 1e-6)


class _RowController:
    """The PID controller of :mod:`neurode.step_size`, applied to every row at once."""

    def __init__(self, options: AdaptiveOptions, order: int, batch: int, device: torch.device):
        self.c = options.controller
        self.order = float(order)
        self.history = torch.ones(batch, 2, dtype=torch.float64, device=device)

    def clip(self, step_size: torch.Tensor) -> torch.Tensor:
        return step_size.clamp(min=self.c.min_step, max=self.c.max_step)

    def propose(
        self, step_size: torch.Tensor, ratio: torch.Tensor, accepted: torch.Tensor
    ) -> torch.Tensor:
        c = self.c
        finite = torch.isfinite(ratio)
        positive = finite & (ratio > 0)
        safe = torch.where(positive, ratio, 1.0)
        beta1 = (c.pcoeff + c.icoeff + c.dcoeff) / self.order
        factor = c.safety * safe**-beta1
        if c.pcoeff or c.dcoeff:
            beta2 = (c.pcoeff + 2 * c.dcoeff) / self.order
            beta3 = c.dcoeff / self.order
            factor = factor * self.history[:, 0] ** beta2 * self.history[:, 1] ** -beta3
        factor = factor.clamp(min=c.dfactor, max=c.ifactor)
        factor = torch.where(finite & (ratio == 0), c.ifactor, factor)
        factor = torch.where(finite, factor, c.dfactor)
        updated = torch.stack([ratio.clamp(min=1e-4), self.history[:, 0]], dim=1)
        self.history = torch.where((accepted & finite)[:, None], updated, self.history)
        return self.clip(step_size * factor)


# ------------------------------------------------------------------------------ the loop
def integrate_per_sample(
    func: RowField,
    y0: torch.Tensor,
    t_eval: torch.Tensor,
    tableau: ButcherTableau,
    options: AdaptiveOptions,
) -> PerSampleTrajectory:
    """Integrate every row of ``y0`` over its own increasing times ``t_eval[b]``.

    ``t_eval`` is float64 of shape ``(B, T)``; the result holds ``y_b(t_eval[b, j])``
    at ``ys[j, b]``. Every iteration attempts one step on every unfinished row.
    """
    batch, n_times = t_eval.shape
    device = y0.device
    rtol, atol = options.rtol, options.atol
    order = tableau.error_exponent_order
    controller = _RowController(options, order, batch, device)
    rows = torch.arange(batch, device=device)

    t = t_eval[:, 0].clone()
    t_end = t_eval[:, -1]
    y = y0
    f0 = func(t, y)
    if not bool(torch.isfinite(f0).all()):
        raise NonFiniteStateError(
            "func(t0, y0) is NaN or infinite for some rows; check func for overflow there.",
            t=float(t[0]),
        )
    if options.first_step is not None:
        step_size = torch.full((batch,), float(options.first_step), dtype=torch.float64)
        step_size = step_size.to(device)
    else:
        step_size = _initial_step_rows(func, t, y, f0, order - 1, rtol, atol)

    # saved[b, j] = y_b(t_eval[b, j]); rewritten out of place so that autograd follows.
    saved = y0.unsqueeze(1).expand(batch, n_times, *y0.shape[1:]).clone()
    next_save = torch.ones(batch, dtype=torch.long, device=device)
    steps = torch.zeros(batch, dtype=torch.long, device=device)
    accepted_count = torch.zeros_like(steps)
    rejected_count = torch.zeros_like(steps)
    last_finite = torch.ones(batch, dtype=torch.bool, device=device)
    done = next_save >= n_times

    # Host syncs are batched: one read of a few flags before the step, one after it.
    while True:
        active = ~done
        step_size = controller.clip(step_size)
        t1 = torch.minimum(t + step_size, t_end)
        h = t1 - t
        over = active & (steps >= options.max_num_steps)
        # A step below ten units in the last place of t makes no real progress (near a
        # blow-up it would otherwise crawl on forever): the step size has underflowed.
        stuck = active & ~((h > 0) & (step_size >= 10 * _ulp(t)))
        any_active, any_over, any_stuck = torch.stack(
            [active.any(), over.any(), stuck.any()]
        ).tolist()
        if not any_active:
            break
        if any_over:
            _raise_max_steps(over, options.max_num_steps, t, step_size)
        if any_stuck:
            _raise_stuck(stuck, last_finite, t, step_size)
        h = torch.where(active, h, 0.0)
        t1 = torch.where(active, t1, t)

        step = _runge_kutta_step_rows(tableau, func, t, y, f0, h, t1)
        ratio = _error_ratio_rows(step.error_estimate, y, step.y1, rtol, atol)
        finite = torch.isfinite(ratio)
        accept = active & finite & ((ratio <= 1.0) | (h <= controller.c.min_step))
        proposed = controller.propose(h, ratio, accept)
        failing = _non_finite_rows(active, finite, proposed, t, step.y1)
        saving = _saving_rows(accept, next_save, t_eval, t1)
        any_accepted, any_failing, any_saving = torch.stack(
            [accept.any(), failing.any(), saving.any()]
        ).tolist()
        if any_failing:
            _raise_non_finite(failing, t)

        f1 = step.f1
        if f1 is None and any_accepted:
            f1 = func(t1, step.y1)
        if any_saving:
            saved, next_save = _save_rows(
                saved, next_save, saving, t_eval, accept, t, t1, h, y, f1, step, tableau, rows
            )
        if any_accepted:
            keep = _rows(accept, y).bool()
            y = torch.where(keep, step.y1, y)
            f0 = torch.where(keep, f1, f0)
            t = torch.where(accept, t1, t)

        steps += active
        accepted_count += accept
        rejected_count += active & ~accept
        last_finite = torch.where(active, finite, last_finite)
        step_size = torch.where(active, proposed, step_size)
        done = next_save >= n_times

    return PerSampleTrajectory(
        ys=saved.transpose(0, 1),
        steps=steps,
        accepted=accepted_count,
        rejected=rejected_count,
    )


def _saving_rows(
    accept: torch.Tensor, next_save: torch.Tensor, t_eval: torch.Tensor, t1: torch.Tensor
) -> torch.Tensor:
    """Rows whose accepted step has reached their next save time."""
    n_times = t_eval.shape[1]
    column = next_save.clamp(max=n_times - 1)
    target = t_eval.gather(1, column[:, None]).squeeze(1)
    return accept & (next_save < n_times) & (target <= t1)


def _save_rows(
    saved: torch.Tensor,
    next_save: torch.Tensor,
    saving: torch.Tensor,
    t_eval: torch.Tensor,
    accept: torch.Tensor,
    t: torch.Tensor,
    t1: torch.Tensor,
    h: torch.Tensor,
    y: torch.Tensor,
    f1: torch.Tensor,
    step: _Step,
    tableau: ButcherTableau,
    rows: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write the dense output at every save time the accepted steps have passed.

    ``saving`` marks the rows with at least one such time; a row may have several.
    """
    n_times = t_eval.shape[1]
    while True:
        column = next_save.clamp(max=n_times - 1)
        target = t_eval.gather(1, column[:, None]).squeeze(1)
        at_end = target == t1
        theta = torch.where(saving & ~at_end & (h > 0), (target - t) / h, 1.0)
        value = _dense_rows(tableau, step, y, f1, h, theta)
        value = torch.where(_rows(at_end, y).bool(), step.y1, value)
        current = saved[rows, column]
        value = torch.where(_rows(saving, y).bool(), value, current)
        saved = saved.index_put((rows, column), value)
        next_save = next_save + saving
        saving = _saving_rows(accept, next_save, t_eval, t1)
        if not bool(saving.any()):
            return saved, next_save


def _ulp(t: torch.Tensor) -> torch.Tensor:
    magnitude = t.abs()
    return torch.nextafter(magnitude, torch.full_like(magnitude, math.inf)) - magnitude


def _first_row(mask: torch.Tensor) -> int:
    return int(torch.nonzero(mask)[0])


def _raise_max_steps(over, max_num_steps, t, step_size) -> None:
    row = _first_row(over)
    raise MaxStepsExceededError(
        f"max_num_steps={max_num_steps} exceeded by row {row} at t={float(t[row]):.6g} "
        f"(step size {float(step_size[row]):.3g}); raise options['max_num_steps'], loosen "
        "rtol/atol, or use an implicit method if the problem is stiff.",
        t=float(t[row]),
    )


def _raise_stuck(stuck, last_finite, t, step_size) -> None:
    row = _first_row(stuck)
    if not bool(last_finite[row]):
        raise NonFiniteStateError(
            f"func returned NaN or infinity for row {row} near t={float(t[row]):.6g} for every "
            "step size tried; the dynamics leave their domain or overflow there.",
            t=float(t[row]),
        )
    raise StepSizeTooSmallError(
        f"step size {float(step_size[row]):.3g} of row {row} underflows at "
        f"t={float(t[row]):.17g}: the solution changes too fast for the tolerances; loosen "
        "rtol/atol, check func for a singularity near this time, or use an implicit method "
        "if the problem is stiff.",
        t=float(t[row]),
    )


def _non_finite_rows(active, finite, proposed, t, y1) -> torch.Tensor:
    """Rows whose error is non-finite, whose step size collapses, and whose state is not finite."""
    collapsing = active & ~finite & (proposed < 1e-13 * t.abs().clamp(min=1.0))
    bad_state = ~torch.isfinite(y1.detach()).reshape(y1.shape[0], -1).all(dim=1)
    return collapsing & bad_state


def _raise_non_finite(failing, t) -> None:
    row = _first_row(failing)
    raise NonFiniteStateError(
        f"the state of row {row} became NaN or infinite at t={float(t[row]):.6g}; the "
        "dynamics may blow up there. Check func for overflow, lower the tolerances, or "
        "shorten the time span.",
        t=float(t[row]),
    )


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

    Returns a :class:`~neurode.solution.Solution` with ``ys`` of shape
    ``(T, B, ...)``, ``ts`` the times as given, and ``stats`` holding ``nfe``
    (batched evaluations of ``func``, an int) and per-row ``steps``,
    ``accepted``, ``rejected`` (long tensors of shape ``(B,)``).
    """
    if not callable(func):
        raise StructureMismatchError("func must be callable as func(t, y)")
    y0 = _check_y0(y0)
    batch = y0.shape[0]
    times = _check_times(t, batch, y0.device)
    rtol = check_tolerance("rtol", rtol, y0, target="y0")
    atol = check_tolerance("atol", atol, y0, target="y0")
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
    time_dtype = torch.promote_types(times.dtype, y0.dtype)
    if options.get("dtype") is not None:
        time_dtype = torch.promote_types(options["dtype"], y0.dtype)
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

    def solver_field(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = problem.call_user((sign * s).to(time_dtype), y)
        return -out if reversed_time else out

    time_grad = times.requires_grad and torch.is_grad_enabled()
    start = y0
    if time_grad:
        # ∂y(t_j)/∂t_0 = -Φ(t_j, t_0) f(t_0, y_0): shift y0 by a zero that carries it.
        t0 = times[:, 0]
        start = y0 - _rows(t0 - t0.detach(), y0) * problem.call_user(t0.to(time_dtype), y0)
    trajectory = integrate_per_sample(solver_field, start, t_solver, spec.tableau, spec.adaptive)
    ys = trajectory.ys
    if time_grad:
        # ∂y(t_j)/∂t_j = f(t_j, y(t_j)) for j >= 1; the state saved at t_0 is y0 itself,
        # independent of t_0.
        shifted = [y0]
        for j in range(1, ys.shape[0]):
            tj = times[:, j]
            slope = problem.call_user(tj.to(time_dtype), ys[j])
            shifted.append(ys[j] + _rows(tj - tj.detach(), ys[j]) * slope)
        ys = torch.stack(shifted)
    stats = {
        "nfe": problem.nfe,
        "steps": trajectory.steps,
        "accepted": trajectory.accepted,
        "rejected": trajectory.rejected,
    }
    return Solution(ys=ys, ts=t if isinstance(t, torch.Tensor) else times, stats=stats)


__all__ = [
    "BATCH_MODES",
    "PerSampleTrajectory",
    "integrate_per_sample",
    "solve_per_sample",
]
