"""Exact gradients at constant memory: the algebraically reversible solver.

The forward solve runs the reversible wrapper (McCallum & Foster 2024,
:mod:`neurode.solvers.reversible`) around the chosen explicit Runge–Kutta
method and keeps the final pair ``(y_N, z_N)``, the step times and couplings, and
a few forward pairs to check and restart from (see below). The backward pass
walks the steps in reverse: it reconstructs ``(y_n, z_n)`` from
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
a reversible step and its coupling defect must pass the error test) and the
accepted step times are
kept — O(steps) floats — so that backward replays them. ``step_t`` and
``jump_t`` times become step boundaries (without one-sided evaluations).

Gradients reach ``y0``, the times ``t`` (through ``f`` at the save times, as for
``"direct"``) and the tensors in ``params`` (by default the parameters of
``func`` when it is an ``nn.Module``); other tensors that ``func`` closes over
get none, since the forward solve keeps no graph.

``gradient_options``:

- ``coupling``: ``"auto"`` (the default) chooses ``λ_n`` step by step from the
  dynamics (:mod:`neurode.integrate.reversible_coupling`); a number in ``(0, 1]``
  fixes it for every step.
- ``coupling_rate``: ``c ≥ 0`` instead, for ``λ_n = exp(−c·|h_n|)``.
- ``step_size`` or ``grid``: fixed steps (see above).
- ``checkpoints``: how many forward pairs ``(y_n, z_n)``, evenly thinned, backward
  checks its reconstruction against and restarts from (default 16), besides those
  at the save times and the restart pairs placed automatically.
- ``reconstruction_limit``: how far (in the tolerances, RMS) a reconstructed pair
  may be from the stored one (default 1; ``float("inf")`` turns the check off).

Correct, or a typed error. The difference ``y − z`` is a parasitic mode: on a
mode ``y' = a y`` a step multiplies it by about ``λ e^{−h a}`` forwards and by
``e^{h a} / λ`` in the backward reconstruction (:mod:`neurode.solvers.reversible`).
With ``λ`` fixed near 1 a decaying mode grows it forwards, which took the
solution away from the tolerances with no error test to notice (the README's
decay rates 0.5 and 30 over ``[0, 2]`` ended at 8.9e17 for 8.8e-27), and a
growing mode amplifies rounding backwards by its growth (``y' = 5y`` over
``[0, 5]``: ``dy/da`` 3e14 for 3.6e11). Now:

- the step's error test includes the coupling defect, by which the gap moves
  the solution, so the forward solution meets the tolerances;
- the automatic coupling damps the gap at half the fastest decay rate, found as
  Ritz values of ``∂f/∂y`` on the span of the latest gaps (``f(y) − f(z) ≈ J (y −
  z)``, two evaluations the method makes anyway), and follows the error scale of
  growing solutions with ``λ > 1``;
- pairs stored where the estimated backward amplification since the previous
  one reaches what rounding allows bound the reconstruction's error, and backward
  checks every stored pair (``stats["reconstruction_drift"]``, in tolerances) and
  restarts from it;
- :class:`~neurode.errors.ReversibleInstabilityError` (a ``SolverError``, naming
  the user's time) ends the forward solve when the gap alone exceeds what any
  step size can bring within the tolerances, when the steps fall to a fifth of
  what the base method would take, or when the gap runs away on a fixed grid
  (whose tolerances are ``√ε``), and ends backward when a reconstructed pair is
  off by more than ``reconstruction_limit``. It suggests ``coupling_rate``,
  smaller steps or ``gradient="checkpoint"``.

Memory is the final pair, the step times and couplings (floats) and the stored
pairs (``stats["stored_pairs"]``): up to 16 plus the save times on ordinary
problems, whatever the number of steps; more where the dynamics decay fast for
long (one pair per ``e^{10}`` or so of estimated amplification).

Measured (float64, dopri5 at rtol 1e-7 unless said; relative gradient error):
``y' = 5y`` on ``[0, 5]``: 1.3e-6 against the exact ``5 e^{25}``; decay rates 0.5
and 30 on ``[0, 2]``: the value within 2e-12 of the exact one, the gradient within
1e-9 of direct's; Lorenz (σ, ρ, β = 10, 28, 8/3) against a tight reference, over
``[0, 1]``: 6e-7 (direct: 3e-7), over ``[0, 2]``: 1.3e-6 (1.6e-6), over ``[0, 8]``:
2.4e-4 (2.1e-4), in 1.0–1.04 times direct's steps; rates 1 and 21 on ``[0, 1]`` at rtol 1e-8:
2e-10 where the backsolve adjoint gives 5e-7. Rates 0.5 and 300 take 3.5 times
the base method's steps and 121 stored pairs; such dynamics are stiff, and
``gradient="checkpoint"`` with an implicit method suits them better.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from ..errors import NeurodeInputError, UnknownMethodError
from ..integrate.controller import GridController, PIDController, fixed_grid_from_step_size
from ..integrate.dense_output import Segment
from ..integrate.error_norm import ErrorNorm
from ..integrate.problem import AdaptiveOptions, ODEProblem
from ..integrate.reversible_coupling import Coupling
from ..integrate.reversible_stepper import ReversibleMethod
from ..solvers.reversible import rk_increment, undo_coupling
from ..solvers.tableau import ButcherTableau
from . import GradientResult, check_options, register
from ._reversible_guards import (
    ForwardGuard,
    ReconstructionCheck,
    RestartPairs,
    check_tolerances,
)
from ._time_gradients import with_time_gradients
from .captured import guard_first_evaluation

_OPTIONS = frozenset(
    {"coupling", "coupling_rate", "step_size", "grid", "checkpoints", "reconstruction_limit"}
)
DEFAULT_CHECKPOINTS = 16
"""Forward pairs kept, evenly thinned, besides those at save times and restarts."""
DEFAULT_RECONSTRUCTION_LIMIT = 1.0
"""How far (in the tolerances, RMS) a reconstructed pair may be from the stored one."""


class ReversibleInstabilityWarning(RuntimeWarning):
    """Kept for compatibility: the reversible solver now raises
    :class:`~neurode.errors.ReversibleInstabilityError` where it used to warn."""


@dataclass
class _Settings:
    tableau: ButcherTableau
    coupling: float | None
    """A fixed ``λ``; None with ``coupling_rate`` None: automatic."""
    coupling_rate: float | None
    adaptive: AdaptiveOptions | None
    grid: list[float] | None
    """Solver times of every step (fixed steps), save times included."""
    checkpoints: int
    reconstruction_limit: float


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
    if coupling == "auto":
        coupling = None
    elif coupling is not None:
        coupling = _number("coupling", coupling)
        if not 0.0 < coupling <= 1.0:
            raise NeurodeInputError(f"coupling must be 'auto' or in (0, 1], got {coupling}")
    if rate is not None:
        rate = _number("coupling_rate", rate)
        if not (math.isfinite(rate) and rate >= 0.0):
            raise NeurodeInputError(f"coupling_rate must be finite and >= 0, got {rate}")
    checkpoints = options.get("checkpoints", DEFAULT_CHECKPOINTS)
    if isinstance(checkpoints, bool) or not isinstance(checkpoints, int) or checkpoints < 0:
        raise NeurodeInputError(f"checkpoints must be an integer >= 0, got {checkpoints!r}")
    limit = _number(
        "reconstruction_limit", options.get("reconstruction_limit", DEFAULT_RECONSTRUCTION_LIMIT)
    )
    if not limit > 0.0:
        raise NeurodeInputError(f"reconstruction_limit must be positive, got {limit}")
    step_size, user_grid = options.get("step_size"), options.get("grid")
    if step_size is not None and user_grid is not None:
        raise NeurodeInputError("give either step_size or grid in gradient_options, not both")
    if (
        (step_size is not None or user_grid is not None)
        and spec.fixed is not None
        and spec.fixed.given
    ):
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
        grid = spec.fixed.points(t_solver[0], t_solver[-1])
    common = dict(
        tableau=spec.tableau,
        coupling=coupling,
        coupling_rate=rate,
        checkpoints=checkpoints,
        reconstruction_limit=limit,
    )
    if grid is not None:
        return _Settings(adaptive=None, grid=_merge_save_times(grid, t_solver), **common)
    return _Settings(adaptive=spec.adaptive, grid=None, **common)


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
        self.couplings: list[float] = []
        """``couplings[n]``: the ``λ`` of the step from ``times[n]`` to ``times[n + 1]``."""
        self.save_steps: list[int] = []
        """``save_steps[i]``: the index in ``times`` of save time ``i``."""
        self.pairs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        """Forward pairs ``(y_n, z_n)`` kept to check and restart the reconstruction."""

    # ---------------------------------------------------------------------- forward
    def forward(self, y0: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """The saved states and the final pair ``(y_N, z_N)``.

        The integration loop with the reversible stepper; every save time (and
        every ``step_t``/``jump_t``, without one-sided evaluations: the inverse
        steps evaluate ``f`` at the same times) is a step boundary, so the saved
        states are states of the reversible solve itself.
        """
        problem, s = self.problem, self.settings
        adaptive = s.adaptive
        norm = check_tolerances(y0, adaptive)
        self.check = ReconstructionCheck(
            norm, y0, s.reconstruction_limit, problem.user_time, self.stats
        )
        coupling = Coupling(norm.scale, value=s.coupling, rate=s.coupling_rate)
        guard = ForwardGuard(coupling, adaptive is not None, problem.user_time)
        keep = RestartPairs(set(self.t_solver[1:-1]), s.checkpoints, self.check.budget)
        if adaptive is None:
            controller_norm = None
            controller = GridController(grid=s.grid, user_time=problem.user_time)
        else:
            controller_norm = ErrorNorm(y0, adaptive.rtol, adaptive.atol, adaptive.norm)
            controller = PIDController(
                controller_norm,
                adaptive.coefficients,
                first_step=adaptive.first_step,
                max_num_steps=adaptive.max_num_steps,
                step_t=(*adaptive.step_t, *adaptive.jump_t, *self.t_solver[1:-1]),
                user_time=problem.user_time,
            )
        stepper = ReversibleMethod(
            s.tableau,
            coupling,
            with_error=adaptive is not None,
            full=self.segments is not None,
            error_norm=controller_norm,
            on_accept=keep,
            on_step=guard,
        )
        trajectory = problem.integrate(
            y0,
            self.t_solver,
            stepper=stepper,
            controller=controller,
            record_segments=self.segments is not None,
        )
        if self.segments is not None:
            self.segments = trajectory.segments
        self.stats.update(trajectory.stats)
        self.times = stepper.times or [self.t_solver[0]]
        self.couplings = stepper.couplings
        position = {time: index for index, time in enumerate(self.times)}
        self.save_steps = [position[time] for time in self.t_solver]
        self.pairs = keep.result(len(self.times) - 1)
        if self.couplings:
            self.stats["coupling_min"] = min(self.couplings)
            self.stats["coupling_max"] = max(self.couplings)
        self.stats["stored_pairs"] = len(self.pairs)
        y, z = stepper.final if len(self.times) > 1 else (y0, y0)
        return list(trajectory.ys), y, z

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
        check = self.check
        checking = check.enabled
        pairs = dict(self.pairs)
        pairs[0] = (y0.detach(), y0.detach())

        y, z = y_end.detach(), z_end.detach()
        a_y = torch.zeros_like(y)
        a_z = torch.zeros_like(z)
        last = len(self.times) - 1
        for index in saves_at.get(last, ()):
            a_y = a_y + grad_ys[index]
        reconstruction_error = 0.0
        for n in range(last - 1, -1, -1):
            t0, t1 = self.times[n], self.times[n + 1]
            coupling = self.couplings[n]
            with torch.enable_grad():
                y1 = y.detach().requires_grad_(True)
                backward_increment = rk_increment(tableau, field, t1, y1, t0).value
            z0 = z + backward_increment.detach()
            stored = pairs.get(n)
            if stored is not None and n > 0:
                z0 = stored[1] if not checking else z0
            with torch.enable_grad():
                z0_leaf = z0.detach().requires_grad_(True)
                forward_increment = rk_increment(tableau, field, t0, z0_leaf, t1).value
            y0_rec = undo_coupling(y, z0, forward_increment.detach(), coupling)
            if stored is not None:
                if n == 0:
                    reconstruction_error = max(
                        float((y0_rec - stored[0]).abs().max()) if y0_rec.numel() else 0.0,
                        float((z0 - stored[1]).abs().max()) if z0.numel() else 0.0,
                    )
                if checking:
                    check(t0, y0_rec, z0, *stored)
                y0_rec, z0 = stored

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
        self.stats["reconstruction_error"] = reconstruction_error
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
    """``(y0, *params) ↦ ys``, saving ``y0``, the final pair and a few forward pairs."""

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
        if torch.is_grad_enabled():
            guard_first_evaluation(problem, trainable, "reversible")
        if torch.is_grad_enabled() and (start.requires_grad or trainable):
            return _ReversibleSolve.apply(integrator, start, *trainable)
        with torch.no_grad():
            return torch.stack(integrator.forward(start)[0])

    ys = with_time_gradients(problem, y0, t, run)
    stats["nfe"] = problem.nfe
    return GradientResult(ys=ys, stats=stats, segments=integrator.segments)


register("reversible", solve_reversible)
