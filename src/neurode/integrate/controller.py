r"""Step-size controllers: where the next step ends, and whether a step is kept.

The loop holds no policy of its own; a controller answers its three questions:

- :meth:`begin`: the first step size (Hairer's rule, ``first_step``, or the grid);
- :meth:`plan`: where the step from ``t`` ends — clipped to ``[min_step, max_step]``,
  to the end of the span and to breakpoints (``step_t``/``jump_t``) — and whether
  it ends on a discontinuity; it raises when the step size has underflowed or
  ``max_num_steps`` is used up;
- :meth:`decide`: given the attempted step (its error estimate, whether its
  implicit stages converged), accept or reject it and propose the next step.

:class:`PIDController` is the adaptive rule (Söderlind 2003, in the
parametrisation diffrax uses), with ``k`` the order of the error estimate plus one
and ``r_n`` the error ratio of step ``n``:

    h_{n+1} = h_n · safety · r_n^{-β1/k} · r_{n-1}^{β2/k} · r_{n-2}^{-β3/k}
    β1 = pcoeff + icoeff + dcoeff,  β2 = pcoeff + 2 dcoeff,  β3 = dcoeff

clipped to ``[dfactor, ifactor]``; ``pcoeff = dcoeff = 0, icoeff = 1`` is the
classic integral controller. After an accepted step of an implicit or Rosenbrock
method (an attempt with ``predictive`` set) the proposal is also bounded by
Gustafsson's predictive rule (HNW II §IV.8, (8.21)–(8.23), as RADAU5 uses it),

    h_{n+1} ≤ safety · h_n · (h_n / h_{n-1}) · (r_{n-1} / r_n²)^{1/k},

which follows a step size that keeps shrinking (the approach to a fast
transient) instead of proposing the same size again and again and having every
other step rejected: van der Pol (μ = 1000) with rodas5 at rtol 1e-4 has 34
rejected steps instead of 161. :class:`RowPIDController` is the same rule with one
step size per row of the batch (per-sample batching). :class:`GridController`
steps along a fixed grid — from ``step_size``, from the user's grid, or the
recorded steps of an earlier solve being replayed — and accepts every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from ..errors import MaxStepsExceededError, NonFiniteStateError, SolverError, StepSizeTooSmallError
from .error_norm import ErrorNorm
from .initial_step import initial_step_size

UserTime = Callable[[float], float]
"""Maps solver time to the user's time (they differ in sign when ``t`` decreases)."""

NEWTON_FAILURE_FACTOR = 0.5
"""A step whose implicit stages did not converge is retried at this fraction (HNW II §IV.8).

An attempt may also say ``finite=False`` (per row: a mask): its stages met NaN or
infinity, so a step size that underflows there is reported as ``func`` leaving its
domain rather than as the solution changing too fast."""


@dataclass(frozen=True)
class PIDCoefficients:
    """Settings of the adaptive step-size rule, checked once."""

    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    min_step: float = 0.0
    max_step: float = math.inf

    def __post_init__(self) -> None:
        if not (0 < self.safety <= 1):
            raise ValueError(f"safety must be in (0, 1], got {self.safety}")
        if self.ifactor < 1 or not (0 < self.dfactor <= 1):
            raise ValueError(
                f"need ifactor >= 1 and 0 < dfactor <= 1, got {self.ifactor}, {self.dfactor}"
            )
        if self.min_step < 0 or self.max_step <= 0 or self.min_step > self.max_step:
            raise ValueError(
                f"need 0 <= min_step <= max_step and max_step > 0, "
                f"got {self.min_step}, {self.max_step}"
            )

    def factor(self, ratio, previous, before_previous, k: float):
        """``safety · r_n^{-β1/k} · r_{n-1}^{β2/k} · r_{n-2}^{-β3/k}`` (floats or tensors)."""
        beta1 = (self.pcoeff + self.icoeff + self.dcoeff) / k
        factor = self.safety * ratio**-beta1
        if self.pcoeff or self.dcoeff:
            beta2 = (self.pcoeff + 2 * self.dcoeff) / k
            beta3 = self.dcoeff / k
            factor = factor * previous**beta2 * before_previous**-beta3
        return factor


_RATIO_FLOOR = 1e-4
"""Ratios are floored in the controller's memory so a lucky tiny error does not dominate."""

_PREDICTION_RATIO_FLOOR = 1e-2
"""``r_{n-1}`` in the predictive rule is floored here, as RADAU5 does."""


def _predicted_factor(coefficients: PIDCoefficients, h, previous_h, previous_ratio, ratio, k):
    """Gustafsson's bound on ``h_{n+1}/h_n`` (floats or tensors), clipped like the PID factor."""
    factor = coefficients.safety * (h / previous_h) * (previous_ratio / ratio**2) ** (1 / k)
    if isinstance(factor, torch.Tensor):
        return factor.clamp(min=coefficients.dfactor, max=coefficients.ifactor)
    return min(coefficients.ifactor, max(factor, coefficients.dfactor))


def _max_steps_error(max_num_steps: int, t: float, step_size: float, rows: str = ""):
    return MaxStepsExceededError(
        f"max_num_steps={max_num_steps} exceeded{rows} at t={t:.6g} (step size "
        f"{step_size:.3g}); raise options['max_num_steps'], loosen rtol/atol, or use an "
        "implicit method if the problem is stiff.",
        t=t,
    )


def _underflow_error(step_size: float, t: float, rows: str = ""):
    return StepSizeTooSmallError(
        f"step size {step_size:.3g}{rows} underflows at t={t:.17g}: the solution changes "
        "too fast for the tolerances; loosen rtol/atol, check func for a singularity near "
        "this time, or use an implicit method if the problem is stiff.",
        t=t,
    )


def _non_finite_error(t: float, rows: str = ""):
    return NonFiniteStateError(
        f"func returned NaN or infinity{rows} near t={t:.6g} for every step size tried; "
        "the dynamics leave their domain or overflow there.",
        t=t,
    )


def _state_non_finite_error(t: float, rows: str = ""):
    return NonFiniteStateError(
        f"the state{rows} became NaN or infinite at t={t:.6g}; the dynamics may blow up "
        "there. Check func for overflow, lower the tolerances, or shorten the time span.",
        t=t,
    )


def _is_finite(tensor: torch.Tensor) -> bool:
    # A NaN or infinity anywhere makes the sum non-finite; only then (or when the sum
    # overflows) is the elementwise test, which allocates a mask, needed.
    total = tensor.detach().sum().item()
    return math.isfinite(abs(total)) or bool(torch.isfinite(tensor).all())


def check_finite(tensor: torch.Tensor, what: str, t: float) -> None:
    """Raise :class:`NonFiniteStateError` naming ``t`` when ``tensor`` holds NaN or infinity."""
    if not _is_finite(tensor):
        raise NonFiniteStateError(
            f"{what} became NaN or infinite at t={t:.6g}; the dynamics may blow up there. "
            "Check func for overflow, lower the tolerances, or shorten the time span.",
            t=t,
        )


class PIDController:
    """Adaptive steps for the whole state at once (one step size, one error ratio)."""

    adaptive = True

    def __init__(
        self,
        error_norm: ErrorNorm,
        coefficients: PIDCoefficients,
        *,
        first_step: float | None = None,
        max_num_steps: int = 2**31 - 1,
        step_t: Iterable[float] = (),
        jump_t: Iterable[float] = (),
        user_time: UserTime = float,
    ):
        self.error_norm = error_norm
        self.coefficients = coefficients
        self.first_step_size = first_step
        self.max_num_steps = max_num_steps
        self.step_t, self.jump_t = tuple(step_t), tuple(jump_t)
        self.user_time = user_time

    # ------------------------------------------------------------------ the solve
    def begin(self, t0: float, t_end: float) -> None:
        """Start a solve on ``[t0, t_end]`` (``t_end`` is infinite when an event ends it)."""
        step_points = {x for x in self.step_t if t0 < x < t_end}
        jump_points = {x for x in self.jump_t if t0 < x < t_end}
        if step_points & jump_points:
            raise ValueError("`step_t` and `jump_t` must not share any time")
        self._breakpoints = sorted(step_points | jump_points)
        self._jumps = jump_points
        self._next_break = 0
        self._next_break_time = self._breakpoints[0] if self._breakpoints else math.inf
        self._on_breakpoint = self._at_min_step = False
        self._t_end = t_end
        self._history = [1.0, 1.0]
        self._previous: tuple[float, float] | None = None  # (h, ratio) of the last accepted step
        self._accepted = self._rejected = 0
        self._last_finite = True
        self._clip = (self.coefficients.min_step, self.coefficients.max_step)
        # With a discontinuity in the span, stages at a step's end are taken from the
        # left everywhere (a step may end on one), as torchdiffeq does.
        self.perturb_ends = bool(jump_points)

    def first_step(
        self, field: Callable, t0: float, y0: torch.Tensor, f0: torch.Tensor, error_order: int
    ) -> float:
        """The first step size: ``first_step``, or Hairer's rule (one evaluation of ``f``)."""
        self._k = float(error_order)
        if self.first_step_size is not None:
            return float(self.first_step_size)
        return initial_step_size(
            lambda s, z: field(s, z, 0), t0, y0, f0, error_order - 1, self.error_norm
        )

    def stats(self) -> dict[str, int]:
        accepted, rejected = self._accepted, self._rejected
        return {"steps": accepted + rejected, "accepted": accepted, "rejected": rejected}

    @property
    def start_perturb(self) -> int:
        """How ``f`` is evaluated at the start: from the right when the span has jumps."""
        return 1 if self._jumps else 0

    def plan(self, t: float, step_size: float, y: torch.Tensor, active=None) -> tuple:
        """``(t1, h, ends_on_jump)`` of the next step from ``t``."""
        if self._accepted + self._rejected >= self.max_num_steps:
            raise _max_steps_error(self.max_num_steps, self.user_time(t), step_size)
        low, high = self._clip
        step_size = min(max(step_size, low), high)
        # (t + h) - t may round above h: remember the floor was hit, not compare h again.
        self._at_min_step = step_size <= low
        t1 = min(t + step_size, self._t_end)
        on_breakpoint = self._next_break_time <= t1
        if on_breakpoint:
            t1 = self._next_break_time
        self._on_breakpoint = on_breakpoint
        h = t1 - t
        # A step within a few ulps of t makes no progress: scipy's rule, so that a
        # finite-time blow-up ends with an error instead of crawling on forever.
        if not h > 10 * math.ulp(t):
            if not self._last_finite:
                check_finite(y, "the state", self.user_time(t))
                raise _non_finite_error(self.user_time(t))
            raise _underflow_error(step_size, self.user_time(t))
        return t1, h, on_breakpoint and t1 in self._jumps

    def decide(self, t: float, h: float, attempt) -> tuple[bool, float, bool]:
        """``(accept, next_step_size, accept)`` for the attempted step of size ``h`` from ``t``."""
        coefficients = self.coefficients
        if not attempt.converged:
            self._last_finite = bool(getattr(attempt, "finite", True))
            self._rejected += 1
            return False, min(max(h * NEWTON_FAILURE_FACTOR, self._clip[0]), self._clip[1]), False
        ratio = 0.0
        for error_estimate, start, end in attempt.error_terms:
            value = self.error_norm.ratio(error_estimate, start, end)
            if not value <= ratio:  # NaN wins, so that it is never taken for a small error
                ratio = value
        finite = self._last_finite = math.isfinite(ratio)
        accept = finite and (ratio <= 1.0 or self._at_min_step)
        if not finite:
            factor = coefficients.dfactor
        elif ratio == 0.0:
            factor = coefficients.ifactor
        else:
            factor = coefficients.factor(ratio, *self._history, self._k)
            factor = min(coefficients.ifactor, max(factor, coefficients.dfactor))
        if not accept:
            self._rejected += 1
        else:
            predictive = getattr(attempt, "predictive", False)
            if predictive and self._previous is not None and ratio > 0.0:
                predicted = _predicted_factor(coefficients, h, *self._previous, ratio, self._k)
                factor = min(factor, predicted)
            # A step cut short at a breakpoint says nothing about the step size's trend.
            self._previous = (
                None if self._on_breakpoint else (h, max(ratio, _PREDICTION_RATIO_FLOOR))
            )
            self._accepted += 1
            self._history = [max(ratio, _RATIO_FLOOR), self._history[0]]
            if self._on_breakpoint:
                self._next_break += 1
                breakpoints = self._breakpoints
                self._next_break_time = (
                    breakpoints[self._next_break]
                    if self._next_break < len(breakpoints)
                    else math.inf
                )
        low, high = self._clip
        proposed = min(max(h * factor, low), high)
        if not finite and proposed < 1e-13 * max(abs(t), 1.0) and not _is_finite(attempt.y1):
            raise _state_non_finite_error(self.user_time(t))
        return accept, proposed, accept


class RowPIDController:
    """:class:`PIDController`'s rule with one step size, error ratio and history per row.

    Times and step sizes are float64 ``(B,)`` tensors; rows that are finished
    (no save time left) take zero steps. Host syncs are batched: one read of a
    few flags in :meth:`plan`, one in :meth:`decide`.
    """

    adaptive = True
    start_perturb = 0
    perturb_ends = False

    def __init__(
        self,
        error_norm: ErrorNorm,
        coefficients: PIDCoefficients,
        *,
        first_step: float | None = None,
        max_num_steps: int = 2**31 - 1,
        user_time: UserTime = float,
    ):
        self.error_norm = error_norm
        self.coefficients = coefficients
        self.first_step_size = first_step
        self.max_num_steps = max_num_steps
        self.user_time = user_time

    def begin(self, t0: torch.Tensor, t_end: torch.Tensor) -> None:
        self._t_end = t_end
        batch, device = t0.shape[0], t0.device
        self._history = torch.ones(batch, 2, dtype=torch.float64, device=device)
        # (h, ratio) of each row's last accepted step; h = 0: none yet.
        self._previous = torch.zeros(batch, 2, dtype=torch.float64, device=device)
        self._accepted = torch.zeros(batch, dtype=torch.long, device=device)
        self._rejected = torch.zeros_like(self._accepted)
        self._last_finite = torch.ones(batch, dtype=torch.bool, device=device)

    def first_step(self, field, t0, y0, f0, error_order) -> torch.Tensor:
        self._k = float(error_order)
        if self.first_step_size is not None:
            size = torch.full((y0.shape[0],), float(self.first_step_size), dtype=torch.float64)
            return size.to(y0.device)
        return initial_step_size(
            lambda s, z: field(s, z, 0), t0, y0, f0, error_order - 1, self.error_norm
        )

    def stats(self) -> dict[str, torch.Tensor]:
        accepted, rejected = self._accepted, self._rejected
        return {"steps": accepted + rejected, "accepted": accepted, "rejected": rejected}

    def clip(self, step_size: torch.Tensor) -> torch.Tensor:
        return step_size.clamp(min=self.coefficients.min_step, max=self.coefficients.max_step)

    def plan(self, t: torch.Tensor, step_size: torch.Tensor, y: torch.Tensor, active):
        """``(t1, h, False)`` with ``h = 0`` on rows not ``active``; None when no row is."""
        step_size = self.clip(step_size)
        t1 = torch.minimum(t + step_size, self._t_end)
        h = t1 - t
        over = active & (self._accepted + self._rejected >= self.max_num_steps)
        # A step below ten units in the last place of t makes no real progress (near a
        # blow-up it would otherwise crawl on forever): the step size has underflowed.
        stuck = active & ~((h > 0) & (step_size >= 10 * _ulp(t)))
        any_active, any_over, any_stuck = torch.stack(
            [active.any(), over.any(), stuck.any()]
        ).tolist()
        if not any_active:
            return None
        if any_over:
            row = _first_row(over)
            raise _max_steps_error(
                self.max_num_steps,
                self.user_time(float(t[row])),
                float(step_size[row]),
                f" by row {row}",
            )
        if any_stuck:
            row = _first_row(stuck)
            time = self.user_time(float(t[row]))
            if not bool(self._last_finite[row]):
                raise _non_finite_error(time, f" for row {row}")
            raise _underflow_error(float(step_size[row]), time, f" of row {row}")
        self._active = active
        return torch.where(active, t1, t), torch.where(active, h, 0.0), False

    def decide(self, t: torch.Tensor, h: torch.Tensor, attempt):
        """``(accept, next_step_size, any_accepted)`` with a mask and a step size per row."""
        c = self.coefficients
        active = self._active
        ratio = None
        for error_estimate, start, end in attempt.error_terms:
            value = self.error_norm.ratio(error_estimate, start, end)
            ratio = value if ratio is None else torch.maximum(ratio, value)
        converged = attempt.converged
        if not isinstance(converged, torch.Tensor):
            converged = torch.full_like(active, bool(converged))
        finite = torch.isfinite(ratio)
        at_min_step = h <= c.min_step * (1 + 1e-12)  # (t + h) - t may round above h
        if bool((finite & converged).all()):
            return self._decide_regular(t, h, ratio, at_min_step, attempt)
        accept = active & converged & finite & ((ratio <= 1.0) | at_min_step)
        positive = finite & (ratio > 0)
        factor = c.factor(
            torch.where(positive, ratio, 1.0), self._history[:, 0], self._history[:, 1], self._k
        )
        factor = factor.clamp(min=c.dfactor, max=c.ifactor)
        factor = torch.where(finite & (ratio == 0), c.ifactor, factor)
        factor = torch.where(finite, factor, c.dfactor)
        factor = torch.where(converged, factor, NEWTON_FAILURE_FACTOR)
        factor = self._with_prediction(factor, h, ratio, accept, attempt)
        updated = torch.stack([ratio.clamp(min=_RATIO_FLOOR), self._history[:, 0]], dim=1)
        self._history = torch.where(accept[:, None], updated, self._history)
        proposed = self.clip(h * factor)
        collapsing = active & converged & ~finite
        collapsing &= proposed < 1e-13 * t.abs().clamp(min=1.0)
        bad_state = ~torch.isfinite(attempt.y1.detach()).reshape(h.shape[0], -1).all(dim=1)
        failing = collapsing & bad_state
        any_accepted, any_failing = torch.stack([accept.any(), failing.any()]).tolist()
        if any_failing:
            row = _first_row(failing)
            raise _state_non_finite_error(self.user_time(float(t[row])), f" of row {row}")
        self._accepted += accept
        self._rejected += active & ~accept
        stages_finite = getattr(attempt, "finite", True)
        self._last_finite = torch.where(
            active, finite | (~converged & stages_finite), self._last_finite
        )
        return accept, torch.where(active, proposed, h), any_accepted

    def _decide_regular(self, t, h, ratio, at_min_step, attempt):
        """:meth:`decide` when every row's stages converged and its error ratio is finite
        (the common case), without the masks that only matter otherwise."""
        c = self.coefficients
        active = self._active
        accept = active & ((ratio <= 1.0) | at_min_step)
        positive = ratio > 0
        factor = c.factor(
            torch.where(positive, ratio, 1.0), self._history[:, 0], self._history[:, 1], self._k
        )
        factor = torch.where(positive, factor.clamp(min=c.dfactor, max=c.ifactor), c.ifactor)
        factor = self._with_prediction(factor, h, ratio, accept, attempt)
        updated = torch.stack([ratio.clamp(min=_RATIO_FLOOR), self._history[:, 0]], dim=1)
        self._history = torch.where(accept[:, None], updated, self._history)
        proposed = self.clip(h * factor)
        self._accepted += accept
        self._rejected += active & ~accept
        self._last_finite = self._last_finite | active
        return accept, torch.where(active, proposed, h), bool(accept.any())

    def _with_prediction(self, factor, h, ratio, accept, attempt):
        """The factor bounded by the predictive rule on the accepted rows that ask for it
        (``attempt.predictive``: a bool or a mask); remembers their ``(h, ratio)``."""
        predictive = getattr(attempt, "predictive", False)
        previous_h, previous_ratio = self._previous[:, 0], self._previous[:, 1]
        if predictive is not False:
            use = accept & (previous_h > 0) & (ratio > 0)
            if isinstance(predictive, torch.Tensor):
                use = use & predictive
            if bool(use.any()):
                predicted = _predicted_factor(
                    self.coefficients,
                    h,
                    torch.where(use, previous_h, 1.0),
                    previous_ratio,
                    torch.where(use, ratio, 1.0),
                    self._k,
                )
                factor = torch.where(use, torch.minimum(factor, predicted), factor)
        latest = torch.stack([h, ratio.clamp(min=_PREDICTION_RATIO_FLOOR)], dim=1)
        self._previous = torch.where(accept[:, None], latest, self._previous)
        return factor


def _ulp(t: torch.Tensor) -> torch.Tensor:
    magnitude = t.abs()
    return torch.nextafter(magnitude, torch.full_like(magnitude, math.inf)) - magnitude


def _first_row(mask: torch.Tensor) -> int:
    return int(torch.nonzero(mask)[0])


class GridController:
    """Fixed steps: along ``grid``, or ``t0, t0 + h, t0 + 2h, ...`` built lazily.

    With ``step_size`` and a finite end the grid is torchdiffeq's
    (``ceil((t_end - t0)/h + 1)`` points, the last moved onto ``t_end``); with an
    infinite end (an event ends the solve) it never ends. The number of steps is
    checked against ``max_num_steps`` before the first one, so a tiny step size
    fails at once instead of after filling memory. Every step is accepted; a
    step whose implicit stages did not converge cannot be retried on a fixed grid
    and raises :class:`~neurode.errors.SolverError`.

    ``perturb`` evaluates ``f`` at every grid point from both sides (stage times
    equal to a step's end from the left, the next step's start from the right),
    as torchdiffeq's ``perturb`` option does; ``jumps`` does so at those points
    only, and ``perturb_ends`` nudges every step's end stages from the left (how
    the adaptive loop runs when there are jumps: used to replay its steps).
    ``start_perturb`` overrides how ``f`` is evaluated at the first point.
    """

    adaptive = False

    def __init__(
        self,
        *,
        grid: Sequence[float] | None = None,
        step_size: float | None = None,
        perturb: bool = False,
        jumps: Iterable[float] = (),
        perturb_ends: bool = False,
        start_perturb: int | None = None,
        max_num_steps: int = 2**31 - 1,
        user_time: UserTime = float,
    ):
        if (grid is None) == (step_size is None):
            raise ValueError("give exactly one of grid and step_size")
        if step_size is not None and not (step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"step_size must be positive and finite, got {step_size}")
        self.grid = None if grid is None else list(grid)
        self.step_size = step_size
        self.perturb = perturb
        self.jumps = frozenset(jumps)
        self.perturb_ends = perturb_ends or perturb
        self.start_perturb = (1 if perturb else 0) if start_perturb is None else start_perturb
        self.max_num_steps = max_num_steps
        self.user_time = user_time

    def begin(self, t0: float, t_end: float) -> None:
        self._t0, self._t_end = t0, t_end
        self._index = 0
        if self.grid is not None:
            if self.grid[0] != t0:
                raise ValueError("the grid must start at the first time")
            steps = len(self.grid) - 1
        elif math.isfinite(t_end):
            steps = count_grid_steps(t0, t_end, self.step_size)
        else:
            steps = 0
        if steps > self.max_num_steps:
            raise _max_steps_error(self.max_num_steps, self.user_time(t0), self.step_size or 0.0)
        self._last = steps

    def first_step(self, field, t0, y0, f0, error_order) -> float:
        return math.nan

    def stats(self) -> dict[str, int]:
        return {"steps": self._index, "accepted": self._index, "rejected": 0}

    def plan(self, t: float, step_size: float, y: torch.Tensor, active=None) -> tuple:
        index = self._index + 1
        if self.grid is not None:
            t1 = self.grid[index] if index < len(self.grid) else math.inf
        elif not self._last:  # no end: an event ends the solve
            if index > self.max_num_steps:
                raise _max_steps_error(self.max_num_steps, self.user_time(t), self.step_size)
            t1 = self._t0 + index * self.step_size
        elif index < self._last:
            t1 = self._t0 + index * self.step_size
        else:
            t1 = self._t_end if index == self._last else math.inf
        if t1 == math.inf:
            raise SolverError(
                f"the grid ends at t={self.user_time(t):.6g} before the solve does; it must "
                "cover the whole span",
                t=self.user_time(t),
            )
        return t1, t1 - t, self.perturb or t1 in self.jumps

    def decide(self, t: float, h: float, attempt) -> tuple[bool, float]:
        if not attempt.converged:
            if not getattr(attempt, "finite", True):
                raise _non_finite_error(self.user_time(t))
            raise SolverError(
                f"the implicit stages of the step from t={self.user_time(t):.6g} did not "
                "converge, and a fixed grid cannot retry with a smaller step; use a smaller "
                "step_size or an adaptive implicit method (kvaerno5, rodas5p).",
                t=self.user_time(t),
            )
        self._index += 1
        return True, math.nan, True


def count_grid_steps(t0: float, t1: float, step_size: float) -> int:
    """Steps of the grid ``t0, t0 + h, ...`` ending exactly at ``t1`` (torchdiffeq's rule)."""
    n = int(math.ceil((t1 - t0) / step_size + 1))
    steps = n - 1
    # A final interval shorter than rounding would give a zero step.
    if steps > 1 and t0 + (steps - 1) * step_size >= t1:
        steps -= 1
    return max(steps, 1)


def fixed_grid_from_step_size(t0: float, t1: float, step_size: float) -> list[float]:
    """The grid ``t0, t0 + h, t0 + 2h, ...`` ending exactly at ``t1``, as a list."""
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    steps = count_grid_steps(t0, t1, step_size)
    return [t0 + i * step_size for i in range(steps)] + [t1]


__all__ = [
    "GridController",
    "NEWTON_FAILURE_FACTOR",
    "PIDCoefficients",
    "PIDController",
    "RowPIDController",
    "check_finite",
    "count_grid_steps",
    "fixed_grid_from_step_size",
]
