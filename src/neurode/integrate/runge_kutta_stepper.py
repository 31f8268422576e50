"""Explicit Runge–Kutta methods as steppers of the integration loop.

One class serves every tableau, on adaptive and fixed grids, for the whole
state or per row: the arithmetic is :class:`~neurode.solvers.runge_kutta.RungeKuttaStepper`'s;
this module adds what the loop needs around it — the derivative carried to the
next step (first-same-as-last, or evaluated lazily at the next step's start,
from the right after a discontinuity) and the dense output of an attempt.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..solvers.interpolation import row_scale
from ..solvers.runge_kutta import RungeKuttaStep, RungeKuttaStepper, can_fuse
from ..solvers.tableau import ButcherTableau
from .dense_output import INTERPOLATIONS, Segment, interpolate_between_ends
from .stepper import VectorField
from .stiffness import StiffnessMonitor


class RungeKuttaAttempt:
    """One attempted step (see :class:`~neurode.integrate.stepper.StepAttempt`)."""

    __slots__ = ("method", "t0", "t1", "h", "y0", "y1", "step", "end_on_jump", "_f1")
    converged = True

    def __init__(self, method, t0, t1, h, y0, step: RungeKuttaStep, end_on_jump: bool):
        self.method = method
        self.t0, self.t1, self.h = t0, t1, h
        self.y0, self.y1 = y0, step.y1
        self.step = step
        self.end_on_jump = end_on_jump
        self._f1 = None

    @property
    def error_terms(self):
        error = self.step.error_estimate
        return () if error is None else ((error, self.y0, self.step.y1),)

    def end_derivative(self, field: VectorField) -> torch.Tensor:
        """``f(t1, y1)``: the first-same-as-last stage, or one evaluation (kept).

        From the right when ``t1`` is a discontinuity; for torchdiffeq's cubic
        interpolation on fixed grids always at ``t1`` itself.
        """
        if self._f1 is None:
            if self.step.f1 is not None and not self.end_on_jump:
                self._f1 = self.step.f1
            else:
                cubic = self.method.interpolation == "cubic"
                self._f1 = field(self.t1, self.step.y1, 1 if self.end_on_jump and not cubic else 0)
        return self._f1

    def dense_states(self, field: VectorField, thetas: Sequence[float] | torch.Tensor, out=None):
        method = self.method
        if method.interpolation == "dense" and method.tableau.dense is not None:
            return method.engine.dense_states(self.step, self.y0, None, self.h, thetas, out)
        f1 = None if method.interpolation == "linear" else self.end_derivative(field)
        return interpolate_between_ends(
            method.interpolation,
            self.y0,
            self.step.y1,
            self.step.stages[0],
            f1,
            self.h,
            thetas,
            out,
        )

    def segment(self, field: VectorField) -> Segment:
        method = self.method
        step = self.step
        f1 = None
        if method.interpolation == "cubic" or (
            method.interpolation == "dense" and method.tableau.dense is None
        ):
            f1 = self.end_derivative(field)
        tableau = method.tableau if method.interpolation == "dense" else None
        return Segment(
            self.t0, self.t1, self.y0, step.y1, step.stages, f1, tableau, method.interpolation
        )


class RungeKuttaMethod:
    """An explicit Runge–Kutta tableau as a stepper (one per solve).

    ``interpolation`` is ``"dense"`` (the tableau's own interpolant, else cubic
    Hermite; adaptive solves), ``"linear"`` or ``"cubic"`` (between the step's ends,
    torchdiffeq's fixed-grid interpolation). ``with_error`` computes the embedded
    error estimate (adaptive steps need it). ``stiffness``, a
    :class:`~neurode.integrate.stiffness.StiffnessMonitor`, is shown every
    accepted step (it tests only every so often, from the stages alone).
    """

    def __init__(
        self,
        tableau: ButcherTableau,
        *,
        interpolation: str = "dense",
        with_error: bool = True,
        stiffness: StiffnessMonitor | None = None,
    ):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}"
            )
        self.tableau = tableau
        self.interpolation = interpolation
        self.with_error = with_error and tableau.b_error is not None
        self.error_order = tableau.error_exponent_order
        self.fused = False
        self.engine: RungeKuttaStepper | None = None
        self._f0: torch.Tensor | None = None
        self._start_perturb = 0
        self.stiffness = stiffness

    def start(self, y0: torch.Tensor, f0: torch.Tensor, perturb: int = 0) -> None:
        self.engine = RungeKuttaStepper.acquire(self.tableau, y0, fused=can_fuse(y0, f0))
        self.fused = self.engine.fused
        self._f0 = f0
        self._start_perturb = perturb
        if self.stiffness is not None:
            # While a graph is recorded every step is tested: a gradient through steps
            # at the stability limit is refused in backward() (StiffGradientError).
            recording = torch.is_grad_enabled() and (y0.requires_grad or f0.requires_grad)
            self.stiffness.start(every=1 if recording else None)

    def step(
        self,
        field: VectorField,
        t,
        t1,
        h,
        y: torch.Tensor,
        perturb_end: bool,
        end_on_jump: bool,
    ) -> RungeKuttaAttempt:
        f0 = self._f0
        if f0 is None:
            f0 = self._f0 = field(t, y, self._start_perturb)
        step = self.engine.step(
            field, t, y, f0, h, t1=t1, perturb_end=perturb_end, with_error=self.with_error
        )
        return RungeKuttaAttempt(self, t, t1, h, y, step, end_on_jump)

    def accept(
        self, field: VectorField, attempt: RungeKuttaAttempt, rows: torch.Tensor | None = None
    ) -> None:
        if self.stiffness is not None:
            self.stiffness.observe(attempt, rows)
        if rows is not None:
            f1 = attempt.end_derivative(field)
            self._f0 = torch.where(row_scale(rows, f1).bool(), f1, self._f0)
            return
        if attempt.end_on_jump:
            self._f0, self._start_perturb = None, 1
        else:
            f1 = attempt._f1 if attempt._f1 is not None else attempt.step.f1
            self._f0, self._start_perturb = f1, 0

    def reject(self, attempt: RungeKuttaAttempt) -> None:
        pass

    def resume(self, f0: torch.Tensor | None, perturb: int = 0) -> None:
        """Go on from a point another stepper reached: ``f0`` there (None: evaluate it)."""
        self._f0, self._start_perturb = f0, perturb

    def finish(self) -> None:
        if self.engine is not None:
            self.engine.release()
            self.engine = None


__all__ = ["RungeKuttaAttempt", "RungeKuttaMethod"]
