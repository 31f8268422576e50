r"""Detecting stiffness from the stages of explicit Runge–Kutta steps.

An explicit method on a stiff problem is held at the edge of its stability
region: its step size is set by the largest eigenvalue ``λ`` of the Jacobian,
not by accuracy, and it takes a huge number of steps. Hairer's test (HNW II
§IV.2; DOPRI5's ``iasti``) estimates ``h|λ|`` from two stages evaluated at the
same time ``t + c h`` — for Dormand–Prince and Tsitouras the last two, both at
``c = 1``:

.. math::

    h ρ = h \frac{‖k_i − k_j‖}{‖Y_i − Y_j‖},
    \qquad Y_i − Y_j = h Σ_l (a_{il} − a_{jl}) k_l ,

a Rayleigh quotient of the Jacobian between the two stage values. When ``hρ``
is at the method's stability boundary on the negative real axis (``3.3`` for
dopri5, about ``3.5`` for tsit5, computed from the tableau), the step is limited
by stability. One such step means little; many in a row mean stiffness.

:class:`StiffnessMonitor` runs that test on accepted steps. It costs no
evaluation of ``f`` — a difference of stages, one linear combination and two
norms — and, where it only warns, runs on every ``every``-th accepted step so
that the solver's per-step work and host syncs do not grow. After ``count``
positive tests (reset by ``reset`` negative ones in a row) the problem is
declared stiff: an explicit adaptive method then issues one
:class:`~neurode.errors.StiffnessWarning` naming the user's time, and
``method="auto"`` switches to its implicit method.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cache

import numpy as np
import torch

from ..errors import StiffnessWarning
from ..solvers.tableau import ButcherTableau

STABILITY_MARGIN = 0.9
"""A test is positive when ``hρ`` reaches this fraction of the stability boundary."""

_ALTERNATION_COSINE = -0.5
"""Consecutive error estimates this anti-parallel mean a mode flipping sign each step."""


def _matrix(tableau: ButcherTableau) -> np.ndarray:
    s = tableau.stages
    a = np.zeros((s, s))
    for i, row in enumerate(tableau.a):
        a[i, : len(row)] = row
    return a


@cache
def _stability_at_boundary(tableau: ButcherTableau) -> tuple[float, float]:
    """``(x_b, R(−x_b))``: the real stability boundary and the stability function there."""
    s = tableau.stages
    a = _matrix(tableau)
    b = np.array(tableau.b)
    ones = np.ones(s)
    for x in np.arange(0.01, 20.0, 0.01):
        r = 1.0 - x * b @ np.linalg.solve(np.eye(s) + x * a, ones)
        if abs(r) > 1.0:
            return float(x), float(r)
    return 20.0, 1.0


def real_stability_boundary(tableau: ButcherTableau) -> float:
    """``−x`` at the first ``x < 0`` where ``|R(x)| > 1``, ``R(z) = 1 + z bᵀ(I − zA)⁻¹𝟙``."""
    return _stability_at_boundary(tableau)[0]


@cache
def _test_of(tableau: ButcherTableau) -> tuple[str, tuple[float, ...], tuple[float, ...]]:
    """How to estimate ``hρ`` for this tableau: ``(kind, w, w A)``.

    - ``"stages"``: the Rayleigh quotient ``‖Σ w_l k_l‖ / ‖Σ (wA)_l k_l‖`` within a
      step; ``w = e_i − e_j`` for two stages at the same node (Hairer's test), else
      the combination with ``Σ w = Σ w c = 0`` (it cancels the smooth drift);
    - ``"alternation"``: where ``R = −1`` at the boundary (bosh3), a stiff mode held
      there flips sign every step, so consecutive error estimates point opposite ways;
    - ``"across"``: for a last stage at ``c = 1`` that is not the new solution
      (adaptive_heun), that stage and the next step's first are at the same time.
    """
    c = tableau.c
    s = len(c)
    a = _matrix(tableau)
    pair = next(
        ((i, j) for i in range(s - 1, 0, -1) for j in range(i - 1, 0, -1) if c[i] == c[j]), None
    )
    if pair is not None:
        w = np.zeros(s)
        w[pair[0]], w[pair[1]] = 1.0, -1.0
        return "stages", tuple(w), tuple(w @ a)
    _, r_boundary = _stability_at_boundary(tableau)
    if r_boundary < 0:
        return "alternation", (), ()
    if not tableau.fsal and c[-1] == 1.0:
        last = a[-1] - np.array(tableau.b)  # Y_s − y_1 = h Σ (a_s − b)_l k_l
        return "across", (), tuple(last)
    moments = np.stack([np.ones(s), np.array(c)])
    w = np.linalg.svd(moments)[2][2]
    return "stages", tuple(w), tuple(w @ a)


def _combine(weights, stages):
    total = None
    for weight, k in zip(weights, stages):
        if weight:
            total = weight * k if total is None else total.add(k, alpha=weight)
    return total


def _ratio(num: torch.Tensor, den: torch.Tensor, per_row: bool):
    """``‖num‖ / ‖den‖`` (per row: a float64 ``(B,)`` tensor, 0 where ``den`` vanishes)."""
    if per_row:
        rows = num.shape[0]
        top = num.reshape(rows, -1).square().sum(dim=1)
        bottom = den.reshape(rows, -1).square().sum(dim=1)
        value = (top / bottom.clamp_min(1e-300)).sqrt()
        return torch.where(bottom > 0, value, 0.0).to(torch.float64)
    top = float(num.reshape(-1).square().sum())
    bottom = float(den.reshape(-1).square().sum())
    return (top / bottom) ** 0.5 if bottom > 0 else 0.0


class StiffnessMonitor:
    """Hairer's test on the accepted steps of one explicit solve (see the module notes).

    ``every``: test every ``every``-th accepted step; ``count``: positive tests
    that declare stiffness; ``reset``: negative tests in a row that start the
    count over. With ``warn`` the first declaration issues a
    :class:`~neurode.errors.StiffnessWarning`; ``user_time`` maps solver time to
    the user's for the message. Per row (``(B,)`` step sizes) the counts are per
    row and :attr:`stiff_rows` says which rows are stiff.
    """

    def __init__(
        self,
        tableau: ButcherTableau,
        *,
        method: str | None = None,
        user_time: Callable[[float], float] = float,
        every: int = 16,
        count: int = 4,
        reset: int = 2,
        warn: bool = True,
    ):
        self.tableau = tableau
        self.method = method or tableau.name
        self.user_time = user_time
        self.every, self.count, self.reset = every, count, reset
        self.warn = warn
        self.kind, self.weights, self.state_weights = _test_of(tableau)
        self.boundary = real_stability_boundary(tableau)
        self.threshold = STABILITY_MARGIN * self.boundary
        self.start()

    def start(self, every: int | None = None) -> None:
        """A solve begins; ``every`` overrides the testing period for this solve."""
        self._every = self.every if every is None else every
        self.stiff_at: float | None = None
        """The user's time where a warning monitor declared stiffness (None: it did not)."""
        self._accepted = 0
        self._previous = None
        self.positives: int | torch.Tensor = 0
        self.negatives: int | torch.Tensor = 0
        self.stiff = False
        self.warned = False
        self.last_estimate: float | torch.Tensor = 0.0

    def clear(self, rows: torch.Tensor | None = None) -> None:
        """Forget the counts (of ``rows``): after a switch of method."""
        self._previous = None
        if rows is None or not isinstance(self.positives, torch.Tensor):
            self.positives, self.negatives, self.stiff = 0, 0, False
            return
        self.positives = torch.where(rows, 0, self.positives)
        self.negatives = torch.where(rows, 0, self.negatives)

    def estimate(self, attempt) -> float | torch.Tensor | None:
        """``h ρ`` of an accepted step (per row: a ``(B,)`` tensor); None without data yet."""
        step, h = attempt.step, attempt.h
        per_row = isinstance(h, torch.Tensor)
        with torch.no_grad():
            if self.kind == "stages":
                dk = _combine(self.weights, step.stages)
                dy = _combine(self.state_weights, step.stages)
                return _ratio(dk, dy, per_row)
            previous = self._previous
            if previous is None:
                return None
            if self.kind == "alternation":
                e0, e1 = previous.step.error_estimate, step.error_estimate
                if e0 is None or e1 is None:
                    return None
                # cos < −½ reads as "at the boundary", else as 0: a yes/no test.
                if per_row:
                    rows = e1.shape[0]
                    x, z = e0.reshape(rows, -1), e1.reshape(rows, -1)
                    dot = (x * z).sum(dim=1)
                    norms = x.norm(dim=1) * z.norm(dim=1)
                    alternating = dot < _ALTERNATION_COSINE * norms
                    return torch.where(alternating, self.boundary, 0.0).to(torch.float64)
                dot = float(torch.dot(e0.reshape(-1), e1.reshape(-1)))
                norms = float(e0.norm() * e1.norm())
                return self.boundary if dot < _ALTERNATION_COSINE * norms else 0.0
            # across: f(t_n, Y_s of the previous step) against f(t_n, y_n)
            dk = step.stages[0] - previous.step.stages[-1]
            dy = _combine(self.state_weights, previous.step.stages)
            h_previous = previous.h
            ratio = _ratio(dk, dy, per_row)
            return ratio / h_previous * h if per_row else ratio * abs(h / h_previous)

    def observe(self, attempt, rows: torch.Tensor | None = None) -> None:
        """An accepted step (``rows``: the rows that accepted it)."""
        self._accepted += 1
        every = self._every
        if self.kind != "stages" and every == 1:
            # Every step: each test pairs this step with the one accepted before it.
            estimate = self.estimate(attempt)
            self._previous = attempt
        else:
            phase = self._accepted % every
            if self.kind != "stages" and phase == every - 1:
                self._previous = attempt  # the test needs this step and the next one
            if phase:
                return
            estimate = self.estimate(attempt)
            self._previous = None
        if estimate is None:
            return
        self.last_estimate = estimate
        t, h = attempt.t0, attempt.h
        positive = estimate >= self.threshold
        if isinstance(positive, torch.Tensor):
            if rows is not None:
                positive_rows, negative_rows = positive & rows, ~positive & rows
            else:
                positive_rows, negative_rows = positive, ~positive
            if not isinstance(self.positives, torch.Tensor):
                zeros = torch.zeros(positive.shape, dtype=torch.long, device=positive.device)
                self.positives, self.negatives = zeros, zeros.clone()
            self.positives = self.positives + positive_rows
            self.negatives = torch.where(positive_rows, 0, self.negatives + negative_rows)
            restart = self.negatives >= self.reset
            self.positives = torch.where(restart, 0, self.positives)
            self.negatives = torch.where(restart, 0, self.negatives)
            stiff_rows = self.positives >= self.count
            if self.warn and not self.warned and bool(stiff_rows.any()):
                row = int(torch.nonzero(stiff_rows)[0])
                self._warn(float(t[row]), float(h[row]), float(estimate[row]), row)
            return
        if positive:
            self.positives += 1
            self.negatives = 0
        else:
            self.negatives += 1
            if self.negatives >= self.reset:
                self.positives = self.negatives = 0
        if self.positives >= self.count:
            self.stiff = True
            if self.warn and not self.warned:
                self._warn(t, h, estimate, None)

    @property
    def stiff_rows(self) -> torch.Tensor | bool:
        if isinstance(self.positives, torch.Tensor):
            return self.positives >= self.count
        return self.stiff

    def _warn(self, t: float, h: float, estimate: float, row: int | None) -> None:
        self.warned = True
        self.stiff_at = self.user_time(t)
        where = "" if row is None else f" (row {row})"
        warnings.warn(
            f"{self.method} is held at its stability limit at t={self.user_time(t):.6g}{where}: "
            f"the problem is stiff there (step size {abs(h):.3g}, h·|λ| ≈ {estimate:.2g}), so "
            "steps are set by stability, not accuracy, and the solve will be slow; gradients "
            "through it from here on are refused (StiffGradientError in backward()). Use "
            "method='auto' (switches to an implicit method where needed) or an implicit "
            "method such as 'rodas5p' or 'kvaerno5'.",
            StiffnessWarning,
            stacklevel=2,
        )


__all__ = ["STABILITY_MARGIN", "StiffnessMonitor", "real_stability_boundary"]
