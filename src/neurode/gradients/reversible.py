"""Exact gradients at constant memory: the algebraically reversible solver.

The forward solve runs the reversible wrapper (McCallum & Foster 2024,
:mod:`neurode.solvers.reversible`) around the chosen explicit Runge–Kutta
method and keeps only the final pair ``(y_N, z_N)`` and the step times. The
backward pass walks the steps in reverse: it reconstructs ``(y_n, z_n)`` from
``(y_{n+1}, z_{n+1})`` algebraically and backpropagates through that one step,

    ā_y = a_y − (∂Ψ_{−h}/∂y_{n+1})ᵀ a_z,          θ̄ −= (∂Ψ_{−h}/∂θ)ᵀ a_z
    a_y ← λ ā_y,   a_z ← a_z + (1 − λ) ā_y + (∂Ψ_h/∂z_n)ᵀ ā_y,   θ̄ += (∂Ψ_h/∂θ)ᵀ ā_y

(the reconstruction's own evaluations are the ones differentiated, so a step
costs its two base steps plus their vector–Jacobian products). The result is
the gradient of the discrete solve, exact up to rounding, with memory that does
not grow with the number of steps.

Steps land on every save time. Fixed steps come from a fixed-step method's grid
(``options=dict(step_size=...)`` or the save times), or from
``gradient_options={"step_size": h}`` / ``{"grid": times}`` with any tableau;
otherwise the base method's embedded pair chooses the steps (both base steps of
a reversible step must pass the error test) and the accepted step times are
kept — O(steps) floats — so that backward replays them. ``step_t`` and
``jump_t`` times become step boundaries (without one-sided evaluations).

Gradients reach ``y0``, the times ``t`` (through ``f`` at the save times, as for
``"direct"``) and the tensors in ``params`` (by default the parameters of
``func`` when it is an ``nn.Module``); other tensors that ``func`` closes over
get none, since the forward solve keeps no graph.

``gradient_options``:

- ``coupling``: ``λ ∈ (0, 1]``, the same for every step; default ``0.999``.
- ``coupling_rate``: ``c ≥ 0`` instead, for ``λ_n = exp(−c·|h_n|)`` step by step
  (the inverse uses the same ``λ_n``, so the solve stays reversible).
- ``step_size`` or ``grid``: fixed steps (see above).

Where it can fail, and what to do. The difference ``y − z`` is a parasitic
mode. On a mode ``y' = a y`` (``R`` the base method's stability function,
``|R(h a)| ≈ e^{h Re a}``) the forward solve multiplies it by ``λ / |R(h a)|``
per step and the backward reconstruction by ``|R(h a)| / λ``
(:mod:`neurode.solvers.reversible`). Hence:

- decaying modes with ``|R(h a)| < λ`` — roughly ``h·|Re a| > 1 − λ`` — grow it
  in the forward solve. With the default ``λ = 0.999`` this happens as soon as
  ``h·|Re a| > 0.001``: harmless over spans of a few ``1/|Re a|`` (the typical
  neural ODE), wrong over long spans of strongly damped dynamics (``y' = −y``
  on ``[0, 10]`` with dopri5 steps of 0.1 ends about 60% off). A
  :class:`ReversibleInstabilityWarning` says when ``y`` and ``z`` have drifted
  apart. The cure is ``λ ≈ exp(−h·a_fast)`` for the fastest decay rate
  ``a_fast``: ``coupling_rate=a_fast`` does this for any step sizes;
- the reconstruction runs the dynamics backwards, so rounding in the final
  pair grows back by up to the total decay of the solution over the span;
  ``stats["reconstruction_error"]`` (the distance of the reconstructed start
  from the true one, set by backward) measures it, and a small ``λ`` over many
  steps adds up to ``1/λ`` per step.

Measured (float64, dopri5 at rtol 1e-8, ``coupling_rate`` = the fastest decay
rate; relative gradient error against a tight direct reference): a rotation
decaying at rate 5 stays near 1e-8 up to a total decay of ``e^{−40}`` and
reaches 1e-4 at ``e^{−50}``; decay rates 1 and 21 on ``[0, 1]`` give 3e-10
where the backsolve adjoint gives 1e-3; rates 1 and 11 on ``[0, 3]`` with four
save times give 4e-6 where backsolve, restarted at each save time, gives 7e-8.
Oscillatory and growing modes are stable whenever the base method is. For
dynamics that decay by more than about ``e^{−40}`` over the span, use
``gradient="checkpoint"`` or ``"direct"``.
"""

from __future__ import annotations

import bisect
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from ..errors import (
    MaxStepsExceededError,
    NeurodeInputError,
    NonFiniteStateError,
    StepSizeTooSmallError,
    UnknownMethodError,
)
from ..integrate import AdaptiveOptions, Segment, fixed_grid_from_step_size
from ..problem import ODEProblem
from ..solvers.reversible import reversible_step, rk_increment, undo_coupling
from ..solvers.tableau import ButcherTableau
from ..step_size import error_ratio, initial_step_size
from . import GradientResult, check_options, register
from ._time_gradients import with_time_gradients

DEFAULT_COUPLING = 0.999
_OPTIONS = frozenset({"coupling", "coupling_rate", "step_size", "grid"})
_GAP_WARNING = 1e-2
"""Warn when ``‖y_N − z_N‖ > _GAP_WARNING · ‖y_N‖``: the parasitic mode has grown."""


class ReversibleInstabilityWarning(RuntimeWarning):
    """The reversible solve's parasitic mode ``y − z`` grew as large as the solution."""


@dataclass
class _Settings:
    tableau: ButcherTableau
    coupling: float
    coupling_rate: float | None
    adaptive: AdaptiveOptions | None
    grid: list[float] | None
    """Solver times of every step (fixed steps), save times included."""

    def coupling_for(self, t0: float, t1: float) -> float:
        """``λ`` of the step from ``t0`` to ``t1``."""
        if self.coupling_rate is None:
            return self.coupling
        return math.exp(-self.coupling_rate * abs(t1 - t0))


def _parse_options(
    problem: ODEProblem, t: torch.Tensor, t_solver: list[float], options: dict[str, Any]
) -> _Settings:
    check_options("reversible", options, _OPTIONS)
    spec = problem.method
    if spec.kind not in ("adaptive", "fixed") or spec.tableau is None:
        raise UnknownMethodError(
            f"gradient='reversible' wraps an explicit Runge–Kutta method; {spec.name!r} is "
            "not one (use e.g. dopri5, tsit5, bosh3 or rk4)"
        )
    coupling, rate = options.get("coupling"), options.get("coupling_rate")
    if coupling is not None and rate is not None:
        raise NeurodeInputError("give either coupling or coupling_rate, not both")
    coupling = DEFAULT_COUPLING if coupling is None else _number("coupling", coupling)
    if not 0.0 < coupling <= 1.0:
        raise NeurodeInputError(f"coupling must be in (0, 1], got {coupling}")
    if rate is not None:
        rate = _number("coupling_rate", rate)
        if not (math.isfinite(rate) and rate >= 0.0):
            raise NeurodeInputError(f"coupling_rate must be finite and >= 0, got {rate}")
    step_size, user_grid = options.get("step_size"), options.get("grid")
    if step_size is not None and user_grid is not None:
        raise NeurodeInputError("give either step_size or grid in gradient_options, not both")
    if (step_size is not None or user_grid is not None) and spec.grid is not None:
        raise NeurodeInputError(
            f"method {spec.name!r} already has a step grid from its options; give the step "
            "size once"
        )
    grid = None
    if step_size is not None:
        grid = _grid_from_step_size(step_size, t_solver)
    elif user_grid is not None:
        grid = _grid_from_user(user_grid, t, t_solver, problem.reversed)
    elif spec.kind == "fixed":
        grid = list(spec.grid) if spec.grid is not None else list(t_solver)
    if grid is not None:
        return _Settings(spec.tableau, coupling, rate, None, _merge_save_times(grid, t_solver))
    return _Settings(spec.tableau, coupling, rate, spec.adaptive, None)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NeurodeInputError(f"{name} must be a number, got {value!r}")
    return float(value)


def _grid_from_step_size(step_size: Any, t_solver: list[float]) -> list[float]:
    step_size = _number("step_size", step_size)
    if not (math.isfinite(step_size) and step_size > 0):
        raise NeurodeInputError(f"step_size must be positive and finite, got {step_size}")
    if len(t_solver) == 1:
        return list(t_solver)
    return fixed_grid_from_step_size(t_solver[0], t_solver[-1], float(step_size))


def _grid_from_user(
    grid: Any, t: torch.Tensor, t_solver: list[float], reversed_time: bool
) -> list[float]:
    try:
        values = torch.as_tensor(grid, dtype=torch.float64).detach().reshape(-1).tolist()
    except (TypeError, ValueError, RuntimeError) as error:
        raise NeurodeInputError(f"grid must be a 1-D sequence of times: {error}") from None
    sign = -1.0 if reversed_time else 1.0
    values = [sign * v for v in values]
    if not all(math.isfinite(v) for v in values) or len(values) < 2:
        raise NeurodeInputError("grid must hold at least two finite times")
    if any(b <= a for a, b in zip(values[:-1], values[1:])):
        raise NeurodeInputError("grid must be strictly monotonic in the direction of t")
    scale = 1e-12 * max(1.0, abs(t_solver[0]), abs(t_solver[-1]))
    if abs(values[0] - t_solver[0]) > scale or abs(values[-1] - t_solver[-1]) > scale:
        raise NeurodeInputError(
            f"grid must start at t[0]={float(t[0])} and end at t[-1]={float(t[-1])}"
        )
    values[0], values[-1] = t_solver[0], t_solver[-1]
    return values


def _merge_save_times(grid: list[float], t_solver: list[float]) -> list[float]:
    """The grid with every save time added; grid points a hair away from a save time go."""
    tolerance = 1e-10 * max(abs(t_solver[-1] - t_solver[0]), 1e-300)
    saves = sorted(set(t_solver))
    merged = set(saves)
    for point in grid:
        if not saves[0] < point < saves[-1]:
            continue
        index = bisect.bisect_left(saves, point)
        nearest = min(abs(saves[index] - point), abs(point - saves[index - 1]))
        if nearest > tolerance:
            merged.add(point)
    return sorted(merged)


def _check_finite(tensor: torch.Tensor, t: float, problem: ODEProblem) -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise NonFiniteStateError(
            f"the reversible solve became NaN or infinite at t={problem.user_time(t):.6g}; "
            "set gradient_options['coupling_rate'] or shrink the steps (see "
            "neurode.gradients.reversible)",
            t=problem.user_time(t),
        )


class _ReversibleIntegrator:
    """Runs the reversible solve forwards, then backwards for the gradients."""

    def __init__(
        self,
        problem: ODEProblem,
        settings: _Settings,
        t_solver: list[float],
        params: tuple[torch.Tensor, ...],
        stats: dict[str, Any],
        record_segments: bool,
    ):
        self.problem = problem
        self.settings = settings
        self.t_solver = t_solver
        self.params = params
        self.stats = stats
        self.segments: list[Segment] | None = [] if record_segments else None
        self.times: list[float] = []
        """Solver times of the accepted steps, ``times[0] = t_solver[0]``."""
        self.save_steps: list[int] = []
        """``save_steps[i]``: the index in ``times`` of save time ``i``."""

    # ---------------------------------------------------------------------- forward
    def forward(self, y0: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The saved states and the final pair ``(y_N, z_N)``."""
        if self.settings.grid is not None:
            ys, y, z = self._forward_fixed(y0)
        else:
            ys, y, z = self._forward_adaptive(y0)
        self._warn_if_unstable(y, z)
        return ys, y, z

    def _forward_fixed(self, y0: torch.Tensor):
        s = self.settings
        grid = s.grid
        callbacks = self.problem.callbacks
        saves = set(self.t_solver)
        y = z = y0
        ys = [y0]
        self.times = [grid[0]]
        self.save_steps = [0]
        for t0, t1 in zip(grid[:-1], grid[1:]):
            if callbacks.step is not None:
                callbacks.step(t0, y, t1 - t0)
            step = reversible_step(
                s.tableau,
                self.problem.vector_field,
                t0,
                t1,
                y,
                z,
                s.coupling_for(t0, t1),
                full=self.segments is not None,
            )
            if callbacks.accept_step is not None:
                callbacks.accept_step(t0, y, t1 - t0)
            self._record_segment(t0, t1, y, step)
            y, z = step.y1, step.z1
            self.times.append(t1)
            if t1 in saves:
                _check_finite(y, t1, self.problem)
                ys.append(y)
                self.save_steps.append(len(self.times) - 1)
        self.stats.update(steps=len(grid) - 1, accepted=len(grid) - 1, rejected=0)
        return ys, y, z

    def _forward_adaptive(self, y0: torch.Tensor):
        s = self.settings
        options = s.adaptive
        controller = options.controller
        controller.reset()
        problem = self.problem
        callbacks = problem.callbacks
        order = s.tableau.error_exponent_order
        t, t_end = self.t_solver[0], self.t_solver[-1]
        saves = set(self.t_solver[1:])
        breakpoints = sorted(
            saves | {x for x in (*options.step_t, *options.jump_t) if t < x < t_end}
        )
        next_break = 0
        y = z = y0
        ys = [y0]
        self.times = [t]
        self.save_steps = [0]
        if len(self.t_solver) == 1:
            self.stats.update(steps=0, accepted=0, rejected=0)
            return ys, y, z
        if options.first_step is not None:
            step_size = float(options.first_step)
        else:
            f0 = problem.vector_field(t, y0)
            step_size = initial_step_size(
                lambda s_, x: problem.vector_field(s_, x),
                t,
                y0,
                f0,
                order - 1,
                options.rtol,
                options.atol,
                options.norm,
            )
        accepted = rejected = 0
        ratio_finite = True
        while next_break < len(breakpoints):
            if accepted + rejected >= options.max_num_steps:
                raise MaxStepsExceededError(
                    f"max_num_steps={options.max_num_steps} exceeded at "
                    f"t={problem.user_time(t):.6g}; raise options['max_num_steps'] or loosen "
                    "rtol/atol",
                    t=problem.user_time(t),
                )
            step_size = controller.clip(step_size)
            t1 = min(t + step_size, breakpoints[next_break])
            h = t1 - t
            if not h > 0:
                if not ratio_finite:
                    raise NonFiniteStateError(
                        f"func returned NaN or infinity near t={problem.user_time(t):.6g} for "
                        "every step size tried",
                        t=problem.user_time(t),
                    )
                raise StepSizeTooSmallError(
                    f"step size {step_size:.3g} underflows at t={problem.user_time(t):.17g}; "
                    "loosen rtol/atol or check func for a singularity there",
                    t=problem.user_time(t),
                )
            if callbacks.step is not None:
                callbacks.step(t, y, h)
            step = reversible_step(
                s.tableau,
                problem.vector_field,
                t,
                t1,
                y,
                z,
                s.coupling_for(t, t1),
                with_error=True,
                full=self.segments is not None,
            )
            ratio = max(
                error_ratio(
                    step.forward.error_estimate,
                    y,
                    step.y1,
                    options.rtol,
                    options.atol,
                    options.norm,
                ),
                error_ratio(
                    step.backward.error_estimate,
                    step.y1,
                    step.z1,
                    options.rtol,
                    options.atol,
                    options.norm,
                ),
            )
            ratio_finite = math.isfinite(ratio)
            accept = ratio_finite and (ratio <= 1.0 or h <= controller.min_step)
            if accept:
                if callbacks.accept_step is not None:
                    callbacks.accept_step(t, y, h)
                accepted += 1
                self._record_segment(t, t1, y, step)
                y, z = step.y1, step.z1
                self.times.append(t1)
                if t1 == breakpoints[next_break]:
                    next_break += 1
                    if t1 in saves:
                        ys.append(y)
                        self.save_steps.append(len(self.times) - 1)
                t = t1
            else:
                if callbacks.reject_step is not None:
                    callbacks.reject_step(t, y, h)
                rejected += 1
            step_size = controller.propose(h, ratio, order, accept)
        self.stats.update(steps=accepted + rejected, accepted=accepted, rejected=rejected)
        return ys, y, z

    def _record_segment(self, t0: float, t1: float, y: torch.Tensor, step) -> None:
        """Dense output: the base step's interpolant from ``z_n``, shifted to start at ``y_n``.

        Exact at both ends; inside the step it differs from the base method's own
        interpolant by at most ``(1 − λ)‖y_n − z_n‖``.
        """
        if self.segments is None:
            return
        f1 = step.backward.stages[0]  # f(t_{n+1}, y_{n+1})
        self.segments.append(
            Segment(t0, t1, y, step.y1, step.forward.stages, f1, self.settings.tableau)
        )

    def _warn_if_unstable(self, y: torch.Tensor, z: torch.Tensor) -> None:
        gap = float((y - z).abs().max()) if y.numel() else 0.0
        size = float(y.abs().max()) if y.numel() else 0.0
        if gap > _GAP_WARNING * size and gap > 0.0:
            warnings.warn(
                f"the reversible solve's parasitic mode grew to {gap:.3g} against a solution "
                f"of size {size:.3g}: the steps are too large for the coupling on these "
                "dynamics. Set gradient_options['coupling_rate'] to the fastest decay rate "
                "(or lower 'coupling' towards exp(-h·rate)), or shrink the steps.",
                ReversibleInstabilityWarning,
                stacklevel=4,
            )

    # --------------------------------------------------------------------- backward
    def backward(
        self,
        y_end: torch.Tensor,
        z_end: torch.Tensor,
        y0: torch.Tensor,
        grad_ys: torch.Tensor,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Gradients with respect to ``y0`` and the parameters, given those of the saves."""
        problem, s = self.problem, self.settings
        field, tableau = problem.vector_field, s.tableau
        nfe_before = problem.nfe
        params = self.params
        param_grads = [torch.zeros_like(p) for p in params]
        saves_at: dict[int, list[int]] = {}
        for index, step in enumerate(self.save_steps):
            saves_at.setdefault(step, []).append(index)

        y, z = y_end.detach(), z_end.detach()
        a_y = torch.zeros_like(y)
        a_z = torch.zeros_like(z)
        last = len(self.times) - 1
        for index in saves_at.get(last, ()):
            a_y = a_y + grad_ys[index]
        for n in range(last - 1, -1, -1):
            t0, t1 = self.times[n], self.times[n + 1]
            coupling = s.coupling_for(t0, t1)
            with torch.enable_grad():
                y1 = y.detach().requires_grad_(True)
                backward_increment = rk_increment(tableau, field, t1, y1, t0).value
            z0 = z + backward_increment.detach()
            with torch.enable_grad():
                z0_leaf = z0.detach().requires_grad_(True)
                forward_increment = rk_increment(tableau, field, t0, z0_leaf, t1).value
            y0_rec = undo_coupling(y, z0, forward_increment.detach(), coupling)

            # z_{n+1} = z_n − Ψ_{−h}(y_{n+1}): pull a_z back onto y_{n+1} and θ.
            a_y1 = a_y
            if n < last - 1 and backward_increment.requires_grad:
                grads = _vjp(backward_increment, (y1, *params), -a_z)
                a_y1 = a_y + grads[0]
                _accumulate(param_grads, grads[1:])
            # y_{n+1} = λ y_n + (1 − λ) z_n + Ψ_h(z_n).
            a_z_new = a_z + (1.0 - coupling) * a_y1 if coupling != 1.0 else a_z
            if forward_increment.requires_grad:
                grads = _vjp(forward_increment, (z0_leaf, *params), a_y1)
                a_z_new = a_z_new + grads[0]
                _accumulate(param_grads, grads[1:])
            a_y, a_z = coupling * a_y1, a_z_new
            y, z = y0_rec, z0
            for index in saves_at.get(n, ()):
                a_y = a_y + grad_ys[index]

        self.stats["nfe_backward"] = self.stats.get("nfe_backward", 0) + problem.nfe - nfe_before
        self.stats["steps_backward"] = self.stats.get("steps_backward", 0) + last
        self.stats["reconstruction_error"] = max(
            float((y - y0).abs().max()) if y.numel() else 0.0,
            float((z - y0).abs().max()) if z.numel() else 0.0,
        )
        return a_y + a_z, param_grads


def _vjp(
    output: torch.Tensor, inputs: tuple[torch.Tensor, ...], grad_output: torch.Tensor
) -> list[torch.Tensor]:
    grads = torch.autograd.grad(output, inputs, grad_output, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def _accumulate(totals: list[torch.Tensor], grads) -> None:
    for total, grad in zip(totals, grads):
        total.add_(grad)


class _ReversibleSolve(torch.autograd.Function):
    """``(y0, *params) ↦ ys``, saving only ``y0`` and the final pair ``(y_N, z_N)``."""

    @staticmethod
    def forward(ctx, integrator: _ReversibleIntegrator, y0: torch.Tensor, *params: torch.Tensor):
        ys, y_end, z_end = integrator.forward(y0.detach())
        ctx.integrator = integrator
        ctx.save_for_backward(y0, y_end, z_end)
        return torch.stack(ys)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys: torch.Tensor):
        y0, y_end, z_end = ctx.saved_tensors
        grad_y0, param_grads = ctx.integrator.backward(y_end, z_end, y0, grad_ys)
        return (None, grad_y0, *param_grads)


def solve_reversible(
    problem: ODEProblem,
    y0: torch.Tensor,
    t: torch.Tensor,
    t_solver: list[float],
    *,
    params: tuple[torch.Tensor, ...] = (),
    options: dict[str, Any] | None = None,
    record_segments: bool = False,
) -> GradientResult:
    settings = _parse_options(problem, t, t_solver, dict(options or {}))
    trainable = tuple(p for p in params if p.requires_grad)
    stats: dict[str, Any] = {}
    integrator = _ReversibleIntegrator(
        problem, settings, t_solver, trainable, stats, record_segments
    )

    def run(start: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (start.requires_grad or trainable):
            return _ReversibleSolve.apply(integrator, start, *trainable)
        with torch.no_grad():
            return torch.stack(integrator.forward(start)[0])

    ys = with_time_gradients(problem, y0, t, run)
    stats["nfe"] = problem.nfe
    return GradientResult(ys=ys, stats=stats, segments=integrator.segments)


register("reversible", solve_reversible)
