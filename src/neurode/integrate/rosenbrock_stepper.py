r"""Rosenbrock (linearly implicit) methods as steppers of the integration loop.

The arithmetic is :func:`~neurode.solvers.rosenbrock.rosenbrock_step`'s: one LU
factorisation of ``I − hγJ`` per step and one back substitution per stage, no
Newton iteration. Its order conditions assume the exact Jacobian at the step's
start, so ``J`` is taken afresh at every new start point
(``JacobianCache(reuse=False)``); after a step rejected by the error test the
start point is the same, so only the factors are rebuilt for the new ``h``. A
step whose values are not finite (``f`` returned NaN, or a singular matrix) is
reported as not converged, and the controller halves it.

The time derivative ``∂f/∂t`` of a non-autonomous ``func`` costs one evaluation
per step (a forward difference; exact by forward-mode AD per row); the option
``autonomous=True`` declares that ``func`` does not depend on ``t`` and skips it.

Gradients: a Rosenbrock step is an explicit function of ``y_n`` once ``J`` is,
so with autograd recording it is differentiated as it stands — ``J`` itself with
a graph (``torch.func.jacrev``, or the user's ``jacobian`` built from torch
operations), and the LU factorisation and solves by their own derivatives. The
gradient is then that of the discrete solve, second derivatives of ``f``
included.

On an augmented system (the forward sensitivities' or the backsolve adjoint's),
whose Newton matrix is only approximated from the state's Jacobian, a
Rosenbrock method would lose its order; there the method steps with the ESDIRK
pair of the same order (``kvaerno5``), whose Newton iteration converges with an
approximate matrix.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..solvers._stage_rows import differentiable_step_in_state_dtype, is_per_row
from ..solvers.jacobian import differentiable_jacobian, is_row_blocks, row_block_jacobian
from ..solvers.jacobian_cache import JacobianCache
from ..solvers.rosenbrock import rosenbrock_step, time_derivative
from ..solvers.rosenbrock_tableau import RosenbrockTableau
from ..solvers.tableaus.kvaerno import KVAERNO5
from .dense_output import Segment
from .implicit_stepper import (
    ImplicitAttempt,
    ImplicitRungeKuttaMethod,
    ImplicitSegment,
    StageSolverSettings,
    StiffStats,
    stage_function,
)
from .stepper import VectorField


class _FactoredMatrix:
    """``I − hγJ`` factored with autograd recording, so that solves are differentiable."""

    def __init__(self, jacobian: torch.Tensor, h_gamma, per_row: bool):
        n = jacobian.shape[-1]
        identity = torch.eye(n, dtype=jacobian.dtype, device=jacobian.device)
        if isinstance(h_gamma, torch.Tensor):
            h_gamma = h_gamma.to(jacobian.dtype).reshape(-1, 1, 1)
        # Joint-mode row blocks (B, d, d) are solved row by row, like per-row matrices.
        self.rows = jacobian.shape[0] if per_row or is_row_blocks(jacobian, per_row) else None
        self._lu, self._pivots = torch.linalg.lu_factor(identity - h_gamma * jacobian)

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        columns = rhs.reshape(-1, 1) if self.rows is None else rhs.reshape(self.rows, -1, 1)
        return torch.linalg.lu_solve(self._lu, self._pivots, columns.to(self._lu.dtype)).view(
            rhs.shape
        )


def jacobian_with_graph(
    func: Callable, t, y: torch.Tensor, *, per_row: bool, user: Callable | None
) -> torch.Tensor:
    """``∂f/∂y`` at ``(t, y)`` as a differentiable function of ``y`` and of what ``func`` holds.

    ``per_row`` also asks for joint-mode row blocks (rows found independent)."""
    if user is not None:
        matrix = user(t, y)
        return matrix if matrix.dtype == y.dtype else matrix.to(y.dtype)
    return differentiable_jacobian(func, t, y, per_row=per_row)


class RosenbrockMethod:
    """A Rosenbrock tableau as an adaptive stepper (one per solve)."""

    fused = False
    interpolation = "dense"

    def __init__(
        self, tableau: RosenbrockTableau, settings: StageSolverSettings, *, autonomous: bool = False
    ):
        self.tableau = tableau
        self.settings = settings
        self.autonomous = autonomous
        self.error_order = tableau.error_exponent_order
        self.counters = StiffStats()
        self.cache: JacobianCache | None = None
        self._delegate: ImplicitRungeKuttaMethod | None = None

    def start(self, y0: torch.Tensor, f0: torch.Tensor, perturb: int = 0) -> None:
        self._y0 = y0
        self._f0: torch.Tensor | None = f0
        self._start_perturb = perturb
        self._graph = torch.is_grad_enabled() and (f0.requires_grad or y0.requires_grad)
        self.cache = None
        self._delegate = None
        self._point: tuple | None = None  # (t, y, J with graph, f_t) at the last step start
        self._row_blocks: bool | None = None

    def stats(self) -> dict[str, int]:
        if self._delegate is not None:
            return self._delegate.stats()
        return self.counters.as_dict()

    def finish(self) -> None:
        pass

    def step(self, field: VectorField, t, t1, h, y, perturb_end: bool, end_on_jump: bool):
        h = differentiable_step_in_state_dtype(h, y)
        first = self._delegate is None and self.cache is None and self._point is None
        if first and getattr(field, "jacobian_blocks", None) is not None:
            self._delegate = ImplicitRungeKuttaMethod(KVAERNO5, self.settings)
            self._delegate.start(self._y0, self._f0)
        if self._delegate is not None:
            return self._delegate.step(field, t, t1, h, y, perturb_end, end_on_jump)
        per_row = is_per_row(h)
        f0 = self._f0
        if f0 is None:
            f0 = self._f0 = field(t, y, self._start_perturb)
        func = stage_function(field, t1, perturb_end, t, self._start_perturb)
        h_gamma = h * self.tableau.gamma
        if self._graph and torch.is_grad_enabled():
            matrix, f_t = self._differentiable_start(field, func, t, y, f0, h, h_gamma, per_row)
        else:
            if self.cache is None:
                self.cache = self.settings.make_cache(
                    field, per_row, reuse=False, start_perturb=lambda: self._start_perturb
                )
                self.counters.attach(self.cache)
            with torch.no_grad():
                matrix = self.cache.iteration_matrix(t, y, h_gamma)
                f_t = self._time_derivative(field, t, y, f0, h)
        step = rosenbrock_step(self.tableau, func, t, y, f0, h, matrix, f_t=f_t)
        if per_row:
            converged = step.converged
            if not bool(converged.all()):
                self.counters.newton_failures += 1
        else:
            converged = bool(step.converged)
            if not converged:
                self.counters.newton_failures += 1
        return ImplicitAttempt(self, t, t1, h, y, step, converged, end_on_jump, f0)

    def _time_derivative(self, field, t, y, f0, h):
        """``∂f/∂t`` at the step start, kept while the start point is the same."""
        if self.autonomous:
            return None
        point = self._point
        if point is not None and point[0] is t and point[1] is y:
            return point[3]
        if isinstance(t, torch.Tensor):
            f_t = time_derivative(lambda s, z: field(s, z, 0), t, y, f0, h=h)
        else:
            f_t = time_derivative(lambda s, z: field(s, z, 0), t, y, f0, h=h)
        self._point = (t, y, None, f_t)
        return f_t

    def _differentiable_start(self, field, func, t, y, f0, h, h_gamma, per_row):
        point = self._point
        if point is not None and point[0] is t and point[1] is y and point[2] is not None:
            jacobian, f_t = point[2], point[3]
        else:
            user = self.settings.solver_jacobian()
            at_start = lambda s, z: field(s, z, 0)
            if self._row_blocks is None:
                # Joint mode with autodiff: decide once per solve whether J is row blocks.
                independent = not per_row and user is None
                independent = (
                    independent and row_block_jacobian(at_start, t, y.detach()) is not None
                )
                self._row_blocks = independent
            jacobian = jacobian_with_graph(
                at_start, t, y, per_row=per_row or self._row_blocks, user=user
            )
            self.counters.jacobian_evaluations += 1
            f_t = None
            if not self.autonomous:
                # A forward difference in t, differentiable as it stands.
                eps = torch.finfo(y.dtype).eps
                if per_row:
                    delta = eps**0.5 * t.abs().clamp(min=1.0)
                    delta = torch.where(h < 0, -delta, delta)
                    scale = delta.to(y.dtype).reshape((-1,) + (1,) * (y.ndim - 1))
                    f_t = (field(t + delta, y, 0) - f0) / scale
                else:
                    delta = eps**0.5 * max(1.0, abs(t))
                    delta = -delta if h < 0 else delta
                    f_t = (field(t + delta, y, 0) - f0) / delta
            self._point = (t, y, jacobian, f_t)
        self.counters.factorizations += 1
        return _FactoredMatrix(jacobian, h_gamma, per_row), f_t

    def accept(self, field: VectorField, attempt: ImplicitAttempt, rows=None) -> None:
        if self._delegate is not None:
            return self._delegate.accept(field, attempt, rows)
        if self.cache is not None:
            self.cache.step_accepted(None, rows)
        if rows is not None:
            # The next step evaluates f at the merged state of all rows at once.
            self._f0 = None
            self._start_perturb = 0
        elif attempt.end_on_jump:
            self._f0, self._start_perturb = None, 1
        else:
            self._f0, self._start_perturb = attempt._f1, 0
        self._point = None

    # ---------------------------------------------------------------- switching (auto)
    def resume(self, f0: torch.Tensor | None, perturb: int = 0) -> None:
        """Go on from a point another stepper reached: ``f0`` there (None: evaluate it)."""
        if self._delegate is not None:
            return self._delegate.resume(f0, perturb)
        self._f0, self._start_perturb = f0, perturb
        self._point = None
        self.mark_moved(None)

    def mark_moved(self, rows: torch.Tensor | None) -> None:
        """The state (of ``rows``) moved under another stepper: its Jacobian is out of date."""
        if self._delegate is not None:
            return self._delegate.mark_moved(rows)
        if self.cache is not None and (rows is None or bool(rows.any())):
            self.cache.step_accepted(None, rows)

    def jacobian_at_start(self) -> torch.Tensor:
        """The Jacobian of the latest step (at its start point)."""
        if self._delegate is not None:
            return self._delegate.jacobian_at_start()
        if self._point is not None and self._point[2] is not None:
            return self._point[2].detach()
        return self.cache.jacobian

    def current_derivative(self) -> tuple[torch.Tensor | None, int]:
        """``(f, perturb)`` at the point the next step starts from (f None: not known yet)."""
        if self._delegate is not None:
            return self._delegate.current_derivative()
        return self._f0, self._start_perturb

    def reject(self, attempt: ImplicitAttempt) -> None:
        if self._delegate is not None:
            return self._delegate.reject(attempt)
        if self.cache is None:
            return
        converged = attempt.converged
        if isinstance(converged, torch.Tensor):
            if not bool(converged.all()):
                self.cache.newton_failed(~converged)
        elif not converged:
            self.cache.newton_failed()


__all__ = ["ImplicitSegment", "RosenbrockMethod", "Segment", "jacobian_with_graph"]
