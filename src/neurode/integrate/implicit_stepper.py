r"""Implicit Runge–Kutta methods as steppers of the integration loop.

One class serves every implicit tableau: the singly diagonally implicit ones
(``kvaerno3/4/5``, ``sdirk2``, ``trbdf2``, ``implicit_euler``, ...) by
:func:`~neurode.solvers.dirk.dirk_step`, the fully implicit ones (``gl4``,
``gl6``, ``radauIIA3/5``) by :func:`~neurode.solvers.fully_implicit.fully_implicit_step`,
adaptive (embedded pairs) or on a fixed grid, for the whole state or per row.
The numerics are the solvers layer's; this module adds what the loop needs
around them:

- a :class:`~neurode.solvers.jacobian_cache.JacobianCache` per solve, told of
  every outcome: accepted (with the step's Newton rate), rejected by the error
  test, or Newton failure (per row: for the rows concerned). A step whose Newton
  iteration fails with a Jacobian taken at an earlier point is first retried
  at the same step size with a fresh Jacobian; only when that fails too is the
  step reported as not converged (the controller then halves it);
- the derivative carried to the next step (the last stage of a stiffly accurate
  method, or one evaluation at the next step's start, from the right after a
  discontinuity);
- dense output: the tableau's interpolant (adaptive), or torchdiffeq's linear
  or cubic Hermite interpolation between the ends of fixed-grid steps;
- gradients: with autograd recording, the converged stages are re-attached to
  the graph by the implicit function theorem
  (:mod:`neurode.integrate.implicit_gradients`): one more evaluation of ``f`` per
  implicit stage, and no backpropagation through Newton iterations.

Statistics added to the solve's: ``jacobian_evaluations``, ``factorizations``,
``newton_iterations``, ``newton_failures`` (stage solves that did not converge,
retries included) and, for matrix-free solves, ``jvp_evaluations``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..solvers._stage_rows import (
    differentiable_step_in_state_dtype,
    divide_rows,
    is_per_row,
    row_values,
)
from ..solvers.dirk import dirk_step
from ..solvers.fully_implicit import coefficient_matrix, fully_implicit_step
from ..solvers.implicit_step import ImplicitStep
from ..solvers.implicit_tableau import ImplicitTableau
from ..solvers.interpolation import row_scale
from ..solvers.jacobian_cache import JacobianCache
from ..solvers.linear_solve import KrylovSettings
from ..solvers.newton import DEFAULT_MAX_ITERATIONS, newton_tolerance
from ..solvers.runge_kutta import linear_combination
from .dense_output import Segment, interpolate_between_ends
from .implicit_gradients import (
    StageJacobian,
    attach_stage_gradient,
    block_transpose_solve,
    diagonal_transpose_solve,
)
from .stepper import VectorField


@dataclass(frozen=True)
class StageSolverSettings:
    """How the stage equations of one solve are solved (checked by the method builder).

    ``jacobian`` is the user's ``jacobian(t, y)`` in the user's time and
    orientation (``∂func/∂y``; ``(N, N)`` for the flattened state, ``(B, d, d)``
    per sample or as joint-mode row blocks), or None for ``torch.func`` with ``jacobian_method``
    (``"reverse"``, the default, or ``"forward"``). ``krylov`` selects matrix-free GMRES.
    """

    rtol: float | torch.Tensor
    atol: float | torch.Tensor
    jacobian: Callable | None = None
    jacobian_method: str = "reverse"
    krylov: KrylovSettings | None = None
    reversed_time: bool = False
    predictive: bool = True
    """Gustafsson's predictive step-size rule after accepted steps (option ``predictive``)."""
    max_iterations: int = DEFAULT_MAX_ITERATIONS

    def solver_jacobian(self) -> Callable | None:
        """The user's Jacobian in solver time and orientation (``t`` negated when it decreases)."""
        user = self.jacobian
        if user is None:
            return None
        sign = -1.0 if self.reversed_time else 1.0

        def jacobian(t, y: torch.Tensor) -> torch.Tensor:
            if isinstance(t, torch.Tensor):
                time = (sign * t).to(y.dtype)
            else:
                time = torch.tensor(sign * t, dtype=y.dtype, device=y.device)
            matrix = user(time, y)
            return -matrix if self.reversed_time and isinstance(matrix, torch.Tensor) else matrix

        return jacobian

    def make_cache(
        self,
        field: VectorField,
        per_row: bool,
        *,
        reuse: bool,
        start_perturb: Callable[[], int] = lambda: 0,
    ) -> JacobianCache:
        """The Jacobian cache; ``J`` is taken at a step's start, evaluated from the side
        ``start_perturb()`` says (torchdiffeq's ``perturb``: never exactly at a grid point)."""
        blocks = getattr(field, "jacobian_blocks", None)
        if blocks is not None:
            return blocks.cache(
                per_row=per_row,
                method=self.jacobian_method,
                reuse=reuse,
                start_perturb=start_perturb,
            )
        return JacobianCache(
            lambda t, y: field(t, y, start_perturb()),
            per_row=per_row,
            jacobian=self.solver_jacobian(),
            method=self.jacobian_method,
            krylov=self.krylov,
            reuse=reuse,
        )

    def stage_jacobian(self, field: VectorField, per_row: bool) -> StageJacobian:
        return StageJacobian(
            lambda t, y: field(t, y, 0),
            per_row=per_row,
            user_jacobian=self.solver_jacobian(),
            method=self.jacobian_method,
            krylov=self.krylov,
        )


def stage_function(
    field: VectorField, t1, perturb_end: bool, t0=None, start_perturb: int = 0
) -> Callable:
    """``func(t, y)`` for the stage solvers: a time equal to the step's end (to rounding) is
    taken as exactly ``t1``, from the left when ``perturb_end`` (a discontinuity there); one
    equal to its start ``t0``, from the side ``start_perturb`` says."""
    if isinstance(t1, torch.Tensor):
        return lambda t, y: field(t, y, 0)
    close = 4 * math.ulp(t1) if t1 else 0.0
    end_perturb = -1 if perturb_end else 0
    check_start = start_perturb != 0 and t0 is not None and not isinstance(t0, torch.Tensor)

    def func(t, y):
        if abs(t - t1) <= close:
            return field(t1, y, end_perturb)
        if check_start and t == t0:
            return field(t0, y, start_perturb)
        return field(t, y, 0)

    return func


class StiffStats:
    """Counters of one solve's linear algebra and Newton iterations."""

    def __init__(self):
        self.newton_iterations = 0
        self.newton_failures = 0
        self.jacobian_evaluations = 0
        self.factorizations = 0
        self.jvp_evaluations = 0
        self._cache: JacobianCache | None = None

    def attach(self, cache: JacobianCache) -> None:
        self._cache = cache

    def as_dict(self) -> dict[str, int]:
        cache = self._cache
        stats = {
            "jacobian_evaluations": self.jacobian_evaluations
            + (cache.jacobian_evaluations if cache else 0),
            "factorizations": self.factorizations + (cache.factorizations if cache else 0),
            "newton_iterations": self.newton_iterations,
            "newton_failures": self.newton_failures,
        }
        jvps = self.jvp_evaluations + (cache.jvp_evaluations if cache else 0)
        if jvps:
            stats["jvp_evaluations"] = jvps
        return stats


class ImplicitSegment(Segment):
    """An accepted implicit or Rosenbrock step, evaluated by the step's own interpolant."""

    def __init__(self, t0, t1, step: ImplicitStep, y1: torch.Tensor):
        super().__init__(t0, t1, step.y0, y1, step.stages, None, None, "implicit")
        self.step = step

    def states(self, thetas):
        return [
            self.y0 if theta == 0.0 else self.y1 if theta == 1.0 else self.step.interpolate(theta)
            for theta in thetas
        ]


class ImplicitAttempt:
    """One attempted implicit step (see :class:`~neurode.integrate.stepper.StepAttempt`)."""

    def __init__(self, method, t0, t1, h, y0, step: ImplicitStep, converged, end_on_jump, f0):
        self.method = method
        self.t0, self.t1, self.h = t0, t1, h
        self.y0, self.y1 = y0, step.y1
        self.step = step
        self.converged = converged
        finite = step.finite
        if finite is None:
            finite = True
        elif not isinstance(converged, torch.Tensor):
            finite = converged or bool(finite)
        self.finite = finite
        """False (per row) where the stages met NaN or infinity rather than converging slowly."""
        self.end_on_jump = end_on_jump
        self.f0 = f0
        self._f1 = None
        self.predictive = method.settings.predictive
        """Bound the next step size by the predictive rule (the controller's notes)."""
        error = step.error_estimate
        self.error_terms = () if error is None else ((error, y0, step.y1),)

    def end_derivative(self, field: VectorField) -> torch.Tensor:
        """``f(t1, y1)``: the last stage of a stiffly accurate method, or one evaluation (kept)."""
        if self._f1 is None:
            if self.step.f1 is not None and not self.end_on_jump:
                self._f1 = self.step.f1
            else:
                cubic = self.method.interpolation == "cubic"
                perturb = 1 if self.end_on_jump and not cubic else 0
                self._f1 = field(self.t1, self.y1, perturb)
        return self._f1

    def dense_states(self, field: VectorField, thetas, out=None):
        interpolation = self.method.interpolation
        if interpolation == "dense":
            if isinstance(thetas, torch.Tensor):
                return self.step.interpolate(thetas)
            states = [self.step.interpolate(theta) for theta in thetas]
            if out is None:
                return states
            torch.stack(states, out=out)
            return None
        f1 = None if interpolation == "linear" else self.end_derivative(field)
        return interpolate_between_ends(
            interpolation, self.y0, self.y1, self.f0, f1, self.h, thetas, out
        )

    def segment(self, field: VectorField) -> Segment:
        interpolation = self.method.interpolation
        if interpolation == "dense":
            return ImplicitSegment(self.t0, self.t1, self.step, self.y1)
        f1 = None if interpolation == "linear" else self.end_derivative(field)
        return Segment(self.t0, self.t1, self.y0, self.y1, [self.f0], f1, None, interpolation)


class ImplicitRungeKuttaMethod:
    """An implicit Runge–Kutta tableau as a stepper (one per solve).

    ``interpolation``: ``"dense"`` (the tableau's interpolant; adaptive solves),
    ``"linear"`` or ``"cubic"`` (fixed grids, as torchdiffeq).
    """

    fused = False

    def __init__(
        self,
        tableau: ImplicitTableau,
        settings: StageSolverSettings,
        *,
        interpolation: str = "dense",
        with_error: bool = True,
    ):
        self.tableau = tableau
        self.settings = settings
        self.interpolation = interpolation
        self.with_error = with_error and tableau.adaptive
        self.diagonal = tableau.gamma is not None
        self.error_order = tableau.error_exponent_order
        self.cache: JacobianCache | None = None
        self.counters = StiffStats()

    # ---------------------------------------------------------------- the solve
    def start(self, y0: torch.Tensor, f0: torch.Tensor, perturb: int = 0) -> None:
        self._f0: torch.Tensor | None = f0
        self._start_perturb = perturb
        self._eta = None
        self._graph = torch.is_grad_enabled() and (f0.requires_grad or y0.requires_grad)
        settings = self.settings
        dtype = y0.real.dtype if y0.is_complex() else y0.dtype
        self._rtol = _tolerance(settings.rtol, y0)
        self._atol = _tolerance(settings.atol, y0)
        rtol_min = settings.rtol
        if isinstance(rtol_min, torch.Tensor):
            rtol_min = float(rtol_min.min())
        self._kappa = newton_tolerance(max(rtol_min, 1e-300), dtype)
        self.cache = None
        self._jacobians: StageJacobian | None = None
        self._coefficients = None

    def stats(self) -> dict[str, int]:
        return self.counters.as_dict()

    def finish(self) -> None:
        pass

    # ---------------------------------------------------------------- one step
    def step(self, field: VectorField, t, t1, h, y, perturb_end: bool, end_on_jump: bool):
        h = differentiable_step_in_state_dtype(h, y)
        per_row = is_per_row(h)
        f0 = self._f0
        if f0 is None:
            f0 = self._f0 = field(t, y, self._start_perturb)
        if self.cache is None:
            self.cache = self.settings.make_cache(
                field, per_row, reuse=True, start_perturb=lambda: self._start_perturb
            )
            self.counters.attach(self.cache)
            blocks = getattr(field, "jacobian_blocks", None)
            self._grace = 0 if blocks is None else blocks.lag
        func = stage_function(field, t1, perturb_end, t, self._start_perturb)
        y_start, f_start = y.detach(), f0.detach()
        scale = torch.addcmul(self._atol, y_start.abs(), self._rtol)
        for retry in range(2):
            with torch.no_grad():
                step = self._solve_stages(func, t, y_start, f_start, h, scale)
            failed = ~step.converged
            any_failed = bool(failed.any()) if per_row else bool(failed)
            if any_failed:
                self.counters.newton_failures += 1
            if not any_failed or retry == 1 or _all(self.cache.current, failed):
                break
            # A Jacobian from an earlier point may be what failed: try it fresh first.
            self.cache.newton_failed(failed if per_row else None)
        if step.newton is not None:
            self.counters.newton_iterations += int(step.newton.iterations.sum())
        converged = step.converged if per_row else not any_failed
        if self._graph and torch.is_grad_enabled():
            if not any_failed:
                step = self._attach_graph(field, func, t, y, f0, h, step)
            elif per_row and not bool(failed.all()):
                finite = _placeholder_stages(step, f_start)
                step = self._attach_graph(field, func, t, y, f0, h, finite)
        return ImplicitAttempt(self, t, t1, h, y, step, converged, end_on_jump, f0)

    def _solve_stages(self, func, t, y, f0, h, scale) -> ImplicitStep:
        tableau, settings = self.tableau, self.settings
        if self.diagonal:
            matrix = self.cache.iteration_matrix(t, y, h * tableau.gamma)
            return dirk_step(
                tableau,
                func,
                t,
                y,
                f0,
                h,
                matrix,
                scale=scale,
                kappa=self._kappa,
                max_iterations=settings.max_iterations + self._grace,
                eta=self._eta,
                grace=self._grace,
            )
        if self._coefficients is None:
            self._coefficients = coefficient_matrix(tableau, y)
        matrix = self.cache.block_iteration_matrix(t, y, h, self._coefficients)
        return fully_implicit_step(
            tableau,
            func,
            t,
            y,
            f0,
            h,
            matrix,
            scale=scale,
            kappa=self._kappa,
            max_iterations=settings.max_iterations + self._grace,
            eta=self._eta,
            grace=self._grace,
        )

    # ---------------------------------------------------------------- gradients
    def _attach_graph(self, field, func, t, y, f0, h, step: ImplicitStep) -> ImplicitStep:
        """The step rebuilt from its converged stages, differentiable by implicit functions."""
        if self._jacobians is None:
            self._jacobians = self.settings.stage_jacobian(field, is_per_row(h))
        if self.diagonal:
            return self._attach_diagonal(func, t, y, f0, h, step)
        return self._attach_block(func, t, y, f0, h, step)

    def _attach_diagonal(self, func, t, y, f0, h, step: ImplicitStep) -> ImplicitStep:
        tableau = self.tableau
        h_rows = row_values(h, y)
        h_gamma = h_rows * tableau.gamma
        stages: list[torch.Tensor] = []
        stage_input = increment = None
        for i in range(tableau.stages):
            psi = y if i == 0 else y + h_rows * linear_combination(None, stages, tableau.a[i][:i])
            t_i = t + tableau.c[i] * h
            if tableau.a[i][i] == 0.0:
                k = f0 if i == 0 else func(t_i, psi)
                stages.append(k)
                stage_input, increment = psi, None
                continue
            converged_k = step.stages[i]
            solution = (h_gamma * converged_k).detach()
            value = h_gamma * func(t_i, psi + solution)
            solve = diagonal_transpose_solve(self._jacobians, t_i, psi.detach() + solution, h_gamma)
            z = attach_stage_gradient(value, solution, solve)
            stages.append(divide_rows(z, h_gamma, converged_k))
            stage_input, increment = psi, z
        if tableau.stiffly_accurate and increment is not None:
            y1 = stage_input + increment
        else:
            y1 = y + h_rows * linear_combination(None, stages, tableau.b)
        f1 = stages[-1] if tableau.stiffly_accurate and tableau.c[-1] == 1.0 else None
        y1 = _keep_failed_rows(y1, step)
        return dataclasses.replace(step, y1=y1, f1=f1, stages=stages, y0=y, stage_scale=h_rows)

    def _attach_block(self, func, t, y, f0, h, step: ImplicitStep) -> ImplicitStep:
        tableau = self.tableau
        per_row = is_per_row(h)
        s = tableau.stages
        stage_dim = 1 if per_row else 0
        h_rows = row_values(h, y)
        h_stages = h_rows.unsqueeze(1) if per_row else h_rows
        a = coefficient_matrix(tableau, y)
        a_inverse = torch.linalg.inv(a.double()).to(y.dtype)
        times = [t + tableau.c[i] * h for i in range(s)]
        # The converged unknowns Z = h (A ⊗ I) K from the step's stage derivatives.
        derivatives = torch.stack(step.stages, dim=stage_dim)
        solution = (h_stages * _mix(a, derivatives, stage_dim)).detach()
        values = torch.stack(
            [func(times[i], y + solution.select(stage_dim, i)) for i in range(s)], dim=stage_dim
        )
        value = h_stages * _mix(a, values, stage_dim)
        points = y.detach().unsqueeze(stage_dim) + solution
        solve = block_transpose_solve(self._jacobians, times, points, h, a)
        z = attach_stage_gradient(value, solution, solve)
        fallback = derivatives
        k = divide_rows(_mix(a_inverse, z, stage_dim), h_stages, fallback)
        stages = [k.select(stage_dim, i) for i in range(s)]
        if tableau.stiffly_accurate:
            y1 = y + z.select(stage_dim, s - 1)
        else:
            b = torch.tensor(tableau.b, dtype=y.dtype, device=y.device)
            y1 = y + h_rows * torch.tensordot(b, torch.movedim(k, stage_dim, 0), dims=1)
        f1 = stages[-1] if tableau.stiffly_accurate and tableau.c[-1] == 1.0 else None
        y1 = _keep_failed_rows(y1, step)
        return dataclasses.replace(step, y1=y1, f1=f1, stages=stages, y0=y, stage_scale=h_rows)

    # ---------------------------------------------------------------- outcomes
    def accept(self, field: VectorField, attempt: ImplicitAttempt, rows=None) -> None:
        step = attempt.step
        newton = step.newton
        rate = None if newton is None else newton.rate
        if rows is None:
            self.cache.step_accepted(rate)
            if newton is not None:
                self._eta = newton.eta
            if attempt.end_on_jump:
                self._f0, self._start_perturb = None, 1
            else:
                self._f0, self._start_perturb = attempt.end_derivative(field), 0
            return
        failed = ~step.converged
        if bool(failed.any()):
            self.cache.newton_failed(failed)
        self.cache.step_accepted(rate, rows)
        if newton is not None:
            old = self._eta if self._eta is not None else torch.ones_like(newton.eta)
            self._eta = torch.where(rows, newton.eta, old)
        f1 = attempt.end_derivative(field)
        self._f0 = torch.where(row_scale(rows, f1).bool(), f1, self._f0)

    # ---------------------------------------------------------------- switching (auto)
    def resume(self, f0: torch.Tensor | None, perturb: int = 0) -> None:
        """Go on from a point another stepper reached: ``f0`` there (None: evaluate it)."""
        self._f0, self._start_perturb = f0, perturb
        self.mark_moved(None)

    def mark_moved(self, rows: torch.Tensor | None) -> None:
        """The state (of ``rows``) moved under another stepper: its Jacobian is out of date."""
        if self.cache is not None and (rows is None or bool(rows.any())):
            self.cache.step_accepted(float("inf"), rows)

    def jacobian_at_start(self) -> torch.Tensor:
        """The Jacobian the latest step's iteration matrix was built from."""
        return self.cache.jacobian

    def current_derivative(self) -> tuple[torch.Tensor | None, int]:
        """``(f, perturb)`` at the point the next step starts from (f None: not known yet)."""
        return self._f0, self._start_perturb

    def reject(self, attempt: ImplicitAttempt) -> None:
        converged = attempt.converged
        if isinstance(converged, torch.Tensor):
            failed = ~converged
            if bool(failed.any()):
                self.cache.newton_failed(failed)
            else:
                self.cache.step_rejected()
        elif not converged:
            self.cache.newton_failed()
        else:
            self.cache.step_rejected()


def _mix(coefficients: torch.Tensor, values: torch.Tensor, stage_dim: int) -> torch.Tensor:
    """``(coefficients ⊗ I) values`` along the stage dimension."""
    moved = torch.movedim(values, stage_dim, 0)
    return torch.movedim(
        torch.tensordot(coefficients.to(values.dtype), moved, dims=1), 0, stage_dim
    )


def _placeholder_stages(step: ImplicitStep, f0: torch.Tensor) -> ImplicitStep:
    """The step with ``f0`` in place of the stages of rows that did not converge.

    Those rows are not accepted, so their gradient is zero; finite stand-ins keep
    the transposed solves of the backward pass finite (NaN times zero is NaN).
    """
    mask = step.converged.reshape((-1,) + (1,) * (f0.ndim - 1))
    stages = [torch.where(mask, k, f0) for k in step.stages]
    return dataclasses.replace(step, stages=stages)


def _keep_failed_rows(y1: torch.Tensor, step: ImplicitStep) -> torch.Tensor:
    """Rows whose stages did not converge stay NaN, as the step without a graph had them."""
    converged = step.converged
    if converged.ndim == 0:
        return y1
    shaped = converged.reshape(converged.shape + (1,) * (y1.ndim - 1))
    return torch.where(shaped, y1, step.y1)


def _all(flags, rows) -> bool:
    """Whether every row in ``rows`` (or the one system) has a current Jacobian."""
    if isinstance(flags, torch.Tensor):
        return bool((flags | ~rows).all())
    return bool(flags)


def _tolerance(value, like: torch.Tensor) -> torch.Tensor:
    dtype = like.real.dtype if like.is_complex() else like.dtype
    if isinstance(value, torch.Tensor):
        return value.detach().to(dtype=dtype, device=like.device)
    return torch.tensor(float(value), dtype=dtype, device=like.device)


__all__ = [
    "ImplicitAttempt",
    "ImplicitRungeKuttaMethod",
    "ImplicitSegment",
    "StageSolverSettings",
    "StiffStats",
    "stage_function",
]
