"""The algebraically reversible wrapper as a stepper of the integration loop.

The numerics are :mod:`neurode.solvers.reversible` (McCallum & Foster 2024): the
loop's state is the solution ``y`` and the stepper carries the shadow state
``z``. A step is judged by both of its base steps' error estimates, and it
remembers the accepted step times so that the backward pass can walk them in
reverse (:mod:`neurode.gradients.reversible`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..solvers.reversible import ReversibleStep, reversible_step
from ..solvers.tableau import ButcherTableau
from .dense_output import Segment
from .stepper import VectorField


class ReversibleAttempt:
    converged = True

    def __init__(self, t0, t1, h, y0, z0, step: ReversibleStep, tableau, with_error: bool):
        self.t0, self.t1, self.h = t0, t1, h
        self.y0, self.z0 = y0, z0
        self.step = step
        self.tableau = tableau
        self.error_terms = ()
        if with_error:
            self.error_terms = (
                (step.forward.error_estimate, y0, step.y1),
                (step.backward.error_estimate, step.y1, step.z1),
            )

    @property
    def y1(self) -> torch.Tensor:
        return self.step.y1

    def segment(self, field: VectorField) -> Segment:
        """The base step's interpolant from ``z_n``, shifted to start at ``y_n``.

        Exact at both ends; inside the step it differs from the base method's own
        interpolant by at most ``(1 − λ)‖y_n − z_n‖``.
        """
        step = self.step
        f1 = step.backward.stages[0]  # f(t_{n+1}, y_{n+1})
        return Segment(self.t0, self.t1, self.y0, step.y1, step.forward.stages, f1, self.tableau)

    def dense_states(self, field: VectorField, thetas, out=None):
        states = self.segment(field).states(thetas)
        if out is None:
            return states
        torch.stack(states, out=out)
        return None


class ReversibleMethod:
    """Reversible steps of ``tableau`` with coupling ``coupling_for(t0, t1)``.

    ``full`` evaluates every stage of the forward base step (dense output needs
    them). ``times`` holds the start of the solve and the end of every accepted
    step; ``y`` and ``z`` at the end of the solve are ``final``.
    """

    fused = False

    def __init__(
        self,
        tableau: ButcherTableau,
        coupling_for: Callable[[float, float], float],
        *,
        with_error: bool,
        full: bool = False,
    ):
        self.tableau = tableau
        self.coupling_for = coupling_for
        self.with_error = with_error
        self.full = full
        self.error_order = tableau.error_exponent_order

    def start(self, y0: torch.Tensor, f0: torch.Tensor) -> None:
        self.z = y0
        self.times: list[float] | None = None
        self._first = True
        self._f0: torch.Tensor | None = f0  # f(t0, z0), since z0 = y0

    def step(self, field, t, t1, h, y, perturb_end, end_on_jump) -> ReversibleAttempt:
        if self._first:
            self.times, self._first = [t], False
        step = reversible_step(
            self.tableau,
            field,
            t,
            t1,
            y,
            self.z,
            self.coupling_for(t, t1),
            with_error=self.with_error,
            full=self.full,
            f0=self._f0,
        )
        return ReversibleAttempt(t, t1, h, y, self.z, step, self.tableau, self.with_error)

    def accept(self, field, attempt: ReversibleAttempt, rows=None) -> None:
        self.z = attempt.step.z1
        self._f0 = None
        self.times.append(attempt.t1)
        self.final = (attempt.step.y1, attempt.step.z1)

    def reject(self, attempt: ReversibleAttempt) -> None:
        pass

    def finish(self) -> None:
        pass


__all__ = ["ReversibleAttempt", "ReversibleMethod"]
