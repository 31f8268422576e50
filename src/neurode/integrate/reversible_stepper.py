"""The algebraically reversible wrapper as a stepper of the integration loop.

The numerics are :mod:`neurode.solvers.reversible` (McCallum & Foster 2024): the
loop's state is the solution ``y`` and the stepper carries the shadow state
``z``. The coupling ``λ_n`` of each step comes from a policy
(:mod:`neurode.integrate.reversible_coupling`) and is remembered with the step's
end time, so that the backward pass (:mod:`neurode.gradients.reversible`) walks
the same steps with the same couplings in reverse.

A step is judged by three error terms: the error estimates of its two base steps
and the coupling defect ``c_n = h (f(t_n, z_n) − f(t_n, y_n)) − (1 − λ_n)(y_n − z_n)``,
by which the reversible step departs from the base step from ``y_n`` (the gap
``y − z`` is otherwise under no error control). ``f(t_n, y_n)`` is the first stage
of the previous step's backward base step, ``f(t_n, z_n)`` the first stage of this
step's forward one, so the term costs no evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..solvers.reversible import ReversibleStep, coupling_defect, reversible_step
from ..solvers.tableau import ButcherTableau
from .dense_output import Segment
from .stepper import VectorField


class ReversibleAttempt:
    converged = True

    def __init__(self, t0, t1, h, y0, z0, step: ReversibleStep, tableau, amplification, terms):
        self.t0, self.t1, self.h = t0, t1, h
        self.y0, self.z0 = y0, z0
        self.step = step
        self.tableau = tableau
        self.amplification = amplification
        """``α_n``: the log of how much reconstructing this step amplifies errors (estimate)."""
        self.error_terms = terms

    @property
    def y1(self) -> torch.Tensor:
        return self.step.y1

    def segment(self, field: VectorField) -> Segment:
        """The base step's interpolant from ``z_n``, shifted to start at ``y_n``.

        Exact at both ends; inside the step it differs from the base method's own
        interpolant by at most about ``‖c_n‖``.
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
    """Reversible steps of ``tableau`` with couplings from ``coupling``.

    ``coupling(h, y_n, z_n, f(t_n, y_n), f(t_n, z_n), Ψ_h(t_n, z_n))`` gives ``λ_n`` and
    sets ``coupling.amplification``
    (:class:`~neurode.integrate.reversible_coupling.Coupling`). ``full`` evaluates
    every stage of the forward base step (dense output needs them). After the solve, ``times``
    holds the start and the end of every accepted step, ``couplings[n]`` the ``λ``
    of step ``n``, ``amplifications[n]`` its ``α``, and ``final`` the pair ``(y_N, z_N)``.
    ``on_accept(index, t, y, z, α)`` is called with the pair at the start (index 0,
    ``α = 0``) and at the end of every accepted step; ``on_step(attempt, self)`` after
    every decision. With ``error_norm`` (the controller's), the attempt hands the
    controller only its largest error term, and ``coupling_ratio`` and ``base_ratio``
    say whether that was the coupling defect.
    """

    fused = False

    def __init__(
        self,
        tableau: ButcherTableau,
        coupling,
        *,
        with_error: bool,
        full: bool = False,
        on_accept: Callable[[int, float, torch.Tensor, torch.Tensor, float], None] | None = None,
        on_step: Callable[[ReversibleAttempt, ReversibleMethod], None] | None = None,
        error_norm=None,
    ):
        self.tableau = tableau
        self.coupling = coupling
        self.with_error = with_error
        self.full = full
        self.on_accept = on_accept
        self.on_step = on_step
        self.error_norm = error_norm
        self.coupling_ratio = self.base_ratio = 0.0
        self.error_order = tableau.error_exponent_order

    def start(self, y0: torch.Tensor, f0: torch.Tensor, perturb: int = 0) -> None:
        self._rounding_floor = _rounding_floor(self.error_norm, y0)
        self.z = y0
        self.times: list[float] | None = None
        self.couplings: list[float] = []
        self.amplifications: list[float] = []
        self._first = True
        self._f_y: torch.Tensor | None = None  # f(t_n, y_n), unknown before the first step
        self._f_z: torch.Tensor | None = f0  # f(t_n, z_n), kept for a retried step
        self.coupling.start()

    def step(self, field, t, t1, h, y, perturb_end, end_on_jump) -> ReversibleAttempt:
        if self._first:
            self.times, self._first = [t], False
            if self.on_accept is not None:
                self.on_accept(0, t, y, self.z, 0.0)
        z = self.z
        coupling = self.coupling
        step = reversible_step(
            self.tableau,
            field,
            t,
            t1,
            y,
            z,
            lambda f_z, increment: coupling(h, y, z, self._f_y, f_z, increment),
            with_error=self.with_error,
            full=self.full,
            f0=self._f_z,
        )
        self._f_z = step.forward.stages[0]
        error_terms = ()
        if self.with_error:
            error_terms = (
                (step.forward.error_estimate, y, step.y1),
                (step.backward.error_estimate, step.y1, step.z1),
            )
            if self._f_y is not None:
                defect = coupling_defect(h, y, z, self._f_y, self._f_z, step.coupling)
                if self._rounding_floor is not None:
                    defect.mul_(self._rounding_floor(y))
                error_terms = self._binding_term(t, h, error_terms, (defect, y, step.y1))
        return ReversibleAttempt(
            t, t1, h, y, z, step, self.tableau, coupling.amplification, error_terms
        )

    def _binding_term(self, t, h, base_terms, defect_term):
        """The error term with the largest ratio (the one the controller will act on).

        Judging the terms here tells whether the step is held back by the coupling
        defect rather than by the base method's own error (``on_step`` sees it).
        """
        norm = self.error_norm
        if norm is None:
            return (*base_terms, defect_term)
        ratios = _ratios(norm, (*base_terms, defect_term))
        if not all(math.isfinite(r) for r in ratios):
            self.coupling_ratio = self.base_ratio = 0.0
            return (*base_terms, defect_term)
        base = max(ratios[:-1])
        self.coupling_ratio, self.base_ratio = ratios[-1], base
        if ratios[-1] > base:
            return (defect_term,)
        return (base_terms[ratios.index(base)],)

    def accept(self, field, attempt: ReversibleAttempt, rows=None) -> None:
        step = attempt.step
        self.z = step.z1
        self._f_y = step.backward.stages[0]  # f(t_{n+1}, y_{n+1})
        self._f_z = None
        self.times.append(attempt.t1)
        self.couplings.append(step.coupling)
        self.amplifications.append(attempt.amplification)
        self.final = (step.y1, step.z1)
        if self.on_step is not None:
            self.on_step(attempt, self)
        if self.on_accept is not None:
            self.on_accept(len(self.times) - 1, attempt.t1, step.y1, step.z1, attempt.amplification)

    def reject(self, attempt: ReversibleAttempt) -> None:
        if self.on_step is not None:
            self.on_step(attempt, self)

    def finish(self) -> None:
        pass


_DEFECT_FLOOR = 10.0
"""The coupling defect is judged against ``rtol`` no tighter than ``_DEFECT_FLOOR · ε``."""


def _rounding_floor(norm, y0: torch.Tensor):
    """A weight that judges the coupling defect against ``max(rtol, 10 ε)``, or None.

    The gap ``y − z`` holds rounding (``y`` and ``z`` are computed differently), so a
    ``rtol`` near the dtype's precision (float32 at the default 1e-7) would make its
    defect fail the test at any step size.
    """
    if norm is None or not y0.is_floating_point():
        return None
    floor = _DEFECT_FLOOR * torch.finfo(y0.dtype).eps
    rtol = torch.as_tensor(norm.rtol, dtype=y0.dtype, device=y0.device)
    if float(rtol.min()) >= floor:
        return None
    atol = torch.as_tensor(norm.atol, dtype=y0.dtype, device=y0.device)
    relaxed = rtol.clamp_min(floor)

    def weight(y: torch.Tensor) -> torch.Tensor:
        size = y.detach().abs()
        return (atol + rtol * size) / (atol + relaxed * size)

    return weight


def _ratios(norm, terms) -> list[float]:
    """``norm.ratio`` of each term; with the default RMS norm, in one reduction and one sync."""
    if norm.norm is not None or norm.per_row or terms[0][0].is_complex():
        return [float(norm.ratio(*term)) for term in terms]
    scales: dict[int, torch.Tensor] = {}

    def scale(x: torch.Tensor) -> torch.Tensor:
        key = id(x)
        if key not in scales:
            scales[key] = norm.scale(x)
        return scales[key]

    squares = []
    for error, start, end in terms:
        scaled = (error.detach() / torch.maximum(scale(start), scale(end))).reshape(-1)
        squares.append(torch.dot(scaled, scaled))
    count = max(terms[0][0].numel(), 1)
    return [math.sqrt(value / count) for value in torch.stack(squares).tolist()]


__all__ = ["ReversibleAttempt", "ReversibleMethod"]
