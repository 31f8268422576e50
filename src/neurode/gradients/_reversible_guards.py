r"""What keeps the reversible solver's results correct, or stops it with a typed error.

Three guards, each against one way the method fails
(:mod:`neurode.integrate.reversible_coupling` has the analysis):

- :class:`ForwardGuard` watches the forward solve. With adaptive steps the
  coupling defect is under error control, so the forward solution meets the
  tolerances, but a gap ``y − z`` that the coupling cannot damp makes the steps
  collapse: the guard stops the solve when the gap alone exceeds what any step
  size can bring within the tolerances, or when the gap holds the steps back to
  five times what the base method would need (a crawl). On a fixed grid no error test
  bounds the gap; the guard stops the solve when it runs away.
- :class:`RestartPairs` keeps a few forward pairs ``(y_n, z_n)``: at the save
  times, evenly thinned ones (``checkpoints``), and one wherever the estimated
  amplification of errors by the backward reconstruction since the latest pair
  exceeds the budget that rounding allows. Memory is a few states, not one per
  step; the count is in ``stats["stored_pairs"]``.
- :class:`ReconstructionCheck` compares each reconstructed pair with the stored
  one and raises when they differ by more than ``reconstruction_limit``
  tolerances; then backward restarts from the stored pair.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..errors import ReversibleInstabilityError
from ..integrate.error_norm import ErrorNorm
from ._step_recorder import StepRecorder

CRAWL_FACTOR, CRAWL_MARGIN = 5, 100
"""A forward solve stops when it has taken more than ``100 + 5 ×`` the steps its base method
would have needed (healthy: 1–1.2×; strongly damped stiff dynamics: 3×)."""

GAP_GROWTH, GAP_RELATIVE = 1e6, 0.1
"""On a fixed grid, a gap over one tolerance stops the solve once it is a million times its
smallest value (healthy: at most a thousand) or a tenth of the state."""

ROUNDING_UNITS = 100.0
"""Rounding in a reconstructed state, in units of ``ε |y|``."""

_REMEDY = (
    "Use the automatic coupling (leave 'coupling' and 'coupling_rate' out of "
    "gradient_options), set gradient_options['coupling_rate'] to the fastest decay rate, "
    "or use gradient='checkpoint'."
)
_REMEDY_AUTOMATIC = (
    "The dynamics decay too fast for the explicit base method (they are stiff): use "
    "gradient='checkpoint' (exact, memory ~ √steps) or 'direct', with an implicit method "
    "if the solve itself is slow."
)


def check_tolerances(y0: torch.Tensor, adaptive: Any) -> ErrorNorm:
    """The tolerances the guards measure in: the solve's; ``√ε`` on a fixed grid."""
    if adaptive is not None:
        return ErrorNorm(y0, adaptive.rtol, adaptive.atol)
    tolerance = math.sqrt(torch.finfo(y0.dtype).eps)
    return ErrorNorm(y0, tolerance, tolerance)


def _smallest_rtol(norm: ErrorNorm, y0: torch.Tensor) -> float:
    """``rtol`` as a number (the smallest of a tensor); from ``atol`` when it is zero."""
    eps = torch.finfo(y0.dtype).eps
    rtol = float(torch.as_tensor(norm.rtol).min())
    if rtol > 0.0:
        return rtol
    size = float(y0.abs().max()) if y0.numel() else 0.0
    atol = float(torch.as_tensor(norm.atol).min())
    return atol / (size + atol) if atol > 0.0 else eps


class ForwardGuard:
    """Raises :class:`ReversibleInstabilityError` when the forward solve cannot be right.

    Called after every decision with the attempt and the stepper
    (:class:`~neurode.integrate.reversible_stepper.ReversibleMethod`).
    """

    def __init__(self, coupling, adaptive: bool, user_time: Callable[[float], float]):
        self.coupling = coupling
        self.adaptive = adaptive
        self.user_time = user_time
        self.attempts = 0
        self.base_attempts = 0.0
        """About how many attempts the base method would have needed for the span so far:
        a step held back by the coupling defect counts ``(r_base / r_defect)^{1/k}``."""
        self._smallest_gap = math.inf

    def __call__(self, attempt, stepper) -> None:
        if self.adaptive:
            self._check_adaptive(attempt, stepper)
        else:
            self._check_fixed_grid(attempt)

    def _check_adaptive(self, attempt, stepper) -> None:
        self.attempts += 1
        defect, base = stepper.coupling_ratio, stepper.base_ratio
        if not defect > base:
            self.base_attempts += 1.0
            return
        self.base_attempts += (base / defect) ** (1.0 / stepper.error_order)
        gap = self.coupling.gap
        # (1 − λ)·gap is the part of the defect that no step size removes.
        if (1.0 - self.coupling.small_step_limit) * gap > 1.0 or not math.isfinite(gap):
            self._raise(attempt, f"the gap y − z between its two states is {gap:.3g} tolerances")
        if self.attempts > CRAWL_MARGIN + CRAWL_FACTOR * self.base_attempts:
            self._raise(
                attempt,
                f"the gap y − z between its two states held its steps back to "
                f"{self.attempts} where the base method would need about "
                f"{self.base_attempts:.0f}",
            )

    def _raise(self, attempt, reason: str) -> None:
        time = self.user_time(attempt.t0)
        remedy = _REMEDY_AUTOMATIC if self.coupling.automatic else _REMEDY
        raise ReversibleInstabilityError(
            f"the reversible solver cannot keep its forward solution within the tolerances "
            f"at t={time:.6g}: {reason}; it grows on dynamics that decay faster than the "
            f"coupling damps it. {remedy}",
            t=time,
        )

    def _check_fixed_grid(self, attempt) -> None:
        """Its round-trip defects accumulate and saturate (undamped, at most ``1 / (1 − λ₀)``
        = 1000 times the first); beyond a tolerance, growth to ``GAP_GROWTH`` times its
        smallest value is the parasitic mode running away, and a gap of a tenth of the
        state means steps far too large for the dynamics."""
        gap, relative = self.coupling.gap, self.coupling.relative_gap
        if gap > 0.0:
            self._smallest_gap = min(self._smallest_gap, gap)
        runaway = relative > GAP_RELATIVE or gap > GAP_GROWTH * self._smallest_gap
        if gap <= 1.0 or not runaway:
            return
        time = self.user_time(attempt.t0)
        raise ReversibleInstabilityError(
            f"the reversible solver's forward solution is wrong from t={time:.6g} on: the gap "
            f"y − z between its two states grew to {gap:.3g} tolerances (rtol = atol = √ε on "
            f"a fixed grid), {relative:.3g} of the state. The steps are too large for how "
            f"fast the dynamics decay, or the coupling does not damp the gap: take smaller "
            f"steps. {_REMEDY}",
            t=time,
        )


class RestartPairs:
    """Chooses the forward pairs ``(y_n, z_n)`` that backward checks and restarts from.

    Called with the pair at the start (index 0, ``amplification`` 0) and at the end
    of every accepted step ``n`` (index ``n + 1``) with that step's ``α_n``.
    ``budget`` bounds the largest sum of ``α`` over consecutive steps between two
    kept pairs: the largest amplification of an error made while reconstructing.
    """

    def __init__(self, save_times: set[float], thinned: int, budget: float):
        self.save_times = save_times
        self.recorder = StepRecorder(thinned, all_times=False) if thinned else None
        self.budget = budget
        self.pairs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._worst = 0.0

    def __call__(
        self, index: int, t: float, y: torch.Tensor, z: torch.Tensor, amplification: float
    ) -> None:
        self._worst = max(0.0, self._worst) + amplification
        if t in self.save_times or self._worst > self.budget:
            self.pairs[index] = (y, z)
            self._worst = 0.0
        if self.recorder is not None:
            self.recorder(t, (y, z), 0.0)  # its call count is the step index

    def result(self, last: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """The pairs by step index, without the start and the end (backward has those)."""
        pairs = dict(self.pairs)
        if self.recorder is not None:
            pairs.update(zip(self.recorder.indices, self.recorder.states))
        pairs.pop(0, None)
        pairs.pop(last, None)
        return pairs


class ReconstructionCheck:
    """Compares reconstructed pairs with stored ones, in tolerances (RMS).

    ``limit`` below what rounding allows (about ``100 ε / rtol`` tolerances: float32 at
    the default ``rtol``) is raised to it. :attr:`budget` is the ``log`` of the
    amplification that rounding may undergo between restart pairs and stay a tenth of
    the limit.
    """

    def __init__(
        self,
        norm: ErrorNorm,
        y0: torch.Tensor,
        limit: float,
        user_time: Callable[[float], float],
        stats: dict[str, Any],
    ):
        self.norm = norm
        self.user_time = user_time
        self.stats = stats
        eps = torch.finfo(y0.dtype).eps
        rounding = ROUNDING_UNITS * eps / _smallest_rtol(norm, y0)
        self.limit = max(limit, rounding)
        self.enabled = limit != math.inf
        self.budget = max(1.0, math.log(0.1 * min(self.limit, 1e6) / rounding))

    def __call__(self, time: float, y, z, y_ref, z_ref) -> None:
        """Raises when ``(y, z)``, reconstructed at solver time ``time``, left the stored pair."""
        norm = self.norm
        scale = norm.scale(y_ref)
        drift = max(float(norm.size((y - y_ref) / scale)), float(norm.size((z - z_ref) / scale)))
        if not math.isfinite(drift):
            drift = math.inf
        self.stats["reconstruction_drift"] = max(self.stats.get("reconstruction_drift", 0.0), drift)
        if drift <= self.limit:
            return
        user_time = self.user_time(time)
        raise ReversibleInstabilityError(
            f"the reversible solver's backward reconstruction reached t={user_time:.6g} "
            f"{drift:.3g} tolerances away from the forward solution there (limit "
            f"{self.limit:.3g}), so its gradient would be wrong: the dynamics decay or grow "
            "too fast over the span to be run back algebraically. Use gradient='checkpoint' "
            "(exact, memory ~ √steps) or 'direct', keep more restart points "
            "(gradient_options['checkpoints']), or take smaller steps.",
            t=user_time,
        )


__all__ = [
    "ForwardGuard",
    "ReconstructionCheck",
    "RestartPairs",
    "check_tolerances",
]
