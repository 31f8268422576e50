"""The integration loop: steps, step-size control, saving, events, statistics.

Times are Python floats in the loop (the state stays on its device); the loop
always runs forwards in time — integrating backwards is done by the caller
through ``s = -t``. ``func(t, y, perturb)`` is the vector field on the
solver's state; ``perturb`` is ``+1``/``-1`` to ask for an evaluation just
after/before ``t`` (one ulp, for discontinuities), else 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .errors import MaxStepsExceededError, NonFiniteStateError, StepSizeTooSmallError
from .solvers.runge_kutta import (
    RungeKuttaStep,
    RungeKuttaStepper,
    can_fuse,
    dense_evaluate,
    hermite_interpolate,
)
from .solvers.tableau import ButcherTableau
from .step_size import ErrorNorm, Norm, PIDController, initial_step_size

VectorField = Callable[[float, torch.Tensor, int], torch.Tensor]
EventFunction = Callable[[float, torch.Tensor], torch.Tensor]

_EVENT_BISECTIONS_MAX = 200


@dataclass
class Segment:
    """One accepted step, enough to evaluate the dense output inside it."""

    t0: float
    t1: float
    y0: torch.Tensor
    y1: torch.Tensor
    stages: list[torch.Tensor]
    f1: torch.Tensor | None
    tableau: ButcherTableau | None
    """None for a fixed-grid segment interpolated linearly."""

    def evaluate(self, t: float) -> torch.Tensor:
        h = self.t1 - self.t0
        theta = 0.0 if h == 0 else (t - self.t0) / h
        if self.tableau is None:
            if theta == 0.0:
                return self.y0
            if theta == 1.0:
                return self.y1
            return torch.lerp(self.y0, self.y1, theta)
        return dense_evaluate(self.tableau, self.y0, self.y1, self.stages, self.f1, h, theta)


@dataclass
class Trajectory:
    """What the loop returns: the saved states and how it got there."""

    ys: list[torch.Tensor]
    stats: dict[str, int] = field(default_factory=dict)
    segments: list[Segment] | None = None
    event_time: float | None = None
    event_state: torch.Tensor | None = None
    stacked: torch.Tensor | None = None
    """``torch.stack(ys)`` when the loop wrote the states into one tensor (``ys`` are
    then its rows): use it instead of stacking again."""

    def stack(self) -> torch.Tensor:
        """The saved states as one tensor ``(len(ys), *state_shape)``, copied only if needed."""
        return torch.stack(self.ys) if self.stacked is None else self.stacked


@dataclass
class AdaptiveOptions:
    rtol: float | torch.Tensor = 1e-7
    atol: float | torch.Tensor = 1e-9
    norm: Norm | None = None
    controller: PIDController = field(default_factory=PIDController)
    first_step: float | None = None
    max_num_steps: int = 2**31 - 1
    step_t: Sequence[float] = ()
    jump_t: Sequence[float] = ()


@dataclass
class Callbacks:
    """User hooks, called as torchdiffeq calls them: ``(t, y, step_size)``."""

    step: Callable | None = None
    accept_step: Callable | None = None
    reject_step: Callable | None = None


def _check_finite(tensor: torch.Tensor, what: str, t: float) -> None:
    # A NaN or infinity anywhere makes the sum non-finite; only then (or when the sum
    # overflows) is the elementwise test, which allocates a mask, needed.
    total = tensor.detach().sum().item()
    if math.isfinite(abs(total)) or bool(torch.isfinite(tensor).all()):
        return
    raise NonFiniteStateError(
        f"{what} became NaN or infinite at t={t:.6g}; the dynamics may blow up there. "
        "Check func for overflow, lower the tolerances, or shorten the time span.",
        t=t,
    )


_PREALLOCATE_CPU_BYTES_MAX = 32 * 2**20
"""Above this a fresh CPU tensor comes straight from the OS (glibc's largest mmap
threshold) and pays a page fault per 4 KiB on first write; a caller that stacks
``ys`` again would pay that twice, so larger outputs are collected as a list."""


class _SavedStates:
    """The states at the save times, collected step by step.

    Without autograd they are written straight into one ``(len(t_eval), *shape)``
    tensor (:attr:`Trajectory.stacked`): the dense output of a step is one matrix
    product into its rows, and a caller using :meth:`Trajectory.stack` copies nothing.
    """

    def __init__(self, y0: torch.Tensor, count: int, preallocate: bool):
        self.buffer = None
        self.ys = [y0]
        size = count * y0.numel() * y0.element_size()
        if preallocate and (y0.device.type != "cpu" or size <= _PREALLOCATE_CPU_BYTES_MAX):
            self.buffer = torch.empty((count, *y0.shape), dtype=y0.dtype, device=y0.device)
            self.buffer[0].copy_(y0)
        self.filled = 1

    def add(
        self,
        stepper: RungeKuttaStepper,
        step: RungeKuttaStep,
        t0: float,
        y0: torch.Tensor,
        f1: torch.Tensor | None,
        h: float,
        times: Sequence[float],
        t1: float,
    ) -> None:
        """The accepted step from ``t0`` to ``t1`` holds ``times`` (increasing, in ``(t0, t1]``)."""
        ends_on_t1 = times[-1] == t1
        thetas = [(te - t0) / h for te in (times[:-1] if ends_on_t1 else times)]
        if self.buffer is None:
            if thetas:
                self.ys += stepper.dense_states(step, y0, f1, h, thetas)
            if ends_on_t1:
                self.ys.append(step.y1)
        else:
            start, end = self.filled, self.filled + len(thetas)
            if thetas:
                stepper.dense_states(step, y0, f1, h, thetas, out=self.buffer[start:end])
            if ends_on_t1:
                self.buffer[end].copy_(step.y1)
        self.filled += len(times)

    def add_state(self, y: torch.Tensor) -> None:
        if self.buffer is None:
            self.ys.append(y)
        else:
            self.buffer[self.filled].copy_(y)
        self.filled += 1

    def trajectory(self, stats: dict[str, int], segments: list[Segment] | None) -> Trajectory:
        if self.buffer is None:
            return Trajectory(ys=self.ys, stats=stats, segments=segments)
        return Trajectory(
            ys=list(self.buffer.unbind(0)), stats=stats, segments=segments, stacked=self.buffer
        )


class _OutputCursor:
    """Hands out the requested save times inside each accepted step."""

    def __init__(self, t_eval: Sequence[float]):
        self.t_eval = t_eval
        self.next = 1

    @property
    def done(self) -> bool:
        return self.next >= len(self.t_eval)

    def next_time(self) -> float:
        """The next save time; infinity once every one is handed out."""
        return self.t_eval[self.next] if self.next < len(self.t_eval) else math.inf

    def take_until(self, t1: float) -> list[float]:
        start = self.next
        while self.next < len(self.t_eval) and self.t_eval[self.next] <= t1:
            self.next += 1
        return self.t_eval[start : self.next]


def integrate_adaptive(
    func: VectorField,
    y0: torch.Tensor,
    t_eval: Sequence[float],
    tableau: ButcherTableau,
    options: AdaptiveOptions,
    *,
    callbacks: Callbacks | None = None,
    record_segments: bool = False,
    event_fn: EventFunction | None = None,
) -> Trajectory:
    """Integrate with an embedded Runge–Kutta pair and adaptive steps.

    ``t_eval`` is strictly increasing; states are saved at each of its times by
    dense output. With ``event_fn`` the loop ignores ``t_eval[1:]`` and stops at
    the first sign change of ``event_fn(t, y)`` (root located by bisection on
    the dense output).
    """
    callbacks = callbacks or Callbacks()
    controller = options.controller
    controller.reset()
    order = tableau.error_exponent_order
    t = t_eval[0]
    t_end = math.inf if event_fn is not None else t_eval[-1]
    step_points = {x for x in options.step_t if t < x < t_end}
    jump_points = {x for x in options.jump_t if t < x < t_end}
    if step_points & jump_points:
        raise ValueError("`step_t` and `jump_t` must not share any time")
    breakpoints = sorted(step_points | jump_points)
    next_break = 0
    has_jumps = bool(jump_points)

    y = y0
    f0 = func(t, y, 1 if has_jumps else 0)
    _check_finite(f0, "func(t0, y0)", t)
    if options.first_step is not None:
        step_size = float(options.first_step)
    else:
        step_size = initial_step_size(
            lambda s, z: func(s, z, 0),
            t,
            y,
            f0,
            order - 1,
            options.rtol,
            options.atol,
            options.norm,
        )

    stepper = RungeKuttaStepper.acquire(tableau, y0, fused=can_fuse(y0, f0))
    error_norm = ErrorNorm(y0, options.rtol, options.atol, options.norm)
    cursor = _OutputCursor(t_eval)
    saved = _SavedStates(y0, len(t_eval), preallocate=stepper.fused and event_fn is None)
    segments: list[Segment] | None = [] if record_segments else None
    accepted = rejected = 0
    keep_f1 = tableau.dense is None
    last_ratio_finite = True
    event_sign = None
    if event_fn is not None:
        with torch.no_grad():
            event_sign = torch.sign(event_fn(t, y))
    # Hoisted out of the loop, which runs once per step.
    max_num_steps = options.max_num_steps
    min_step, max_step = controller.min_step, controller.max_step
    step_callback, accept_callback = callbacks.step, callbacks.accept_step
    reject_callback = callbacks.reject_step
    next_save = math.inf if event_fn is not None else cursor.next_time()
    next_break_time = breakpoints[0] if breakpoints else math.inf

    while next_save <= t_end:
        if accepted + rejected >= max_num_steps:
            raise MaxStepsExceededError(
                f"max_num_steps={max_num_steps} exceeded at t={t:.6g} "
                f"(step size {step_size:.3g}); raise options['max_num_steps'], loosen "
                "rtol/atol, or use an implicit method if the problem is stiff.",
                t=t,
            )
        step_size = min(max(step_size, min_step), max_step)
        t1 = min(t + step_size, t_end)
        on_breakpoint = next_break_time <= t1
        if on_breakpoint:
            t1 = next_break_time
        on_jump = on_breakpoint and t1 in jump_points
        h = t1 - t
        # A step within a few ulps of t makes no progress: scipy's rule, so that a
        # finite-time blow-up ends with an error instead of crawling on forever.
        if not h > 10 * math.ulp(t):
            if not last_ratio_finite:
                _check_finite(y, "the state", t)
                raise NonFiniteStateError(
                    f"func returned NaN or infinity near t={t:.6g} for every step size tried; "
                    "the dynamics leave their domain or overflow there.",
                    t=t,
                )
            raise StepSizeTooSmallError(
                f"step size {step_size:.3g} underflows at t={t:.17g}: the solution changes "
                "too fast for the tolerances; loosen rtol/atol, check func for a singularity "
                "near this time, or use an implicit method if the problem is stiff.",
                t=t,
            )
        if step_callback is not None:
            step_callback(t, y, h)
        result = stepper.step(func, t, y, f0, h, t1=t1, perturb_end=has_jumps)
        ratio = error_norm.ratio(result.error_estimate, y, result.y1)
        last_ratio_finite = math.isfinite(ratio)
        accept = last_ratio_finite and (ratio <= 1.0 or h <= min_step)
        if accept:
            if accept_callback is not None:
                accept_callback(t, y, h)
            accepted += 1
            y1 = result.y1
            f1 = result.f1
            if f1 is None or on_jump:
                # Non-FSAL methods need f(t1, y1) for the next step anyway; after a jump
                # it is taken from the right of the discontinuity.
                f1 = func(t1, y1, 1 if on_jump else 0)
            if next_save <= t1:
                saved.add(stepper, result, t, y, f1, h, cursor.take_until(t1), t1)
                next_save = cursor.next_time()
            if segments is not None or event_fn is not None:
                segment = Segment(t, t1, y, y1, result.stages, f1 if keep_f1 else None, tableau)
            if segments is not None:
                segments.append(segment)
            if event_fn is not None:
                event = _locate_event(event_fn, event_sign, segment)
                if event is not None:
                    stepper.release()
                    trajectory = Trajectory(ys=[y0], stats=_stats(accepted, rejected))
                    trajectory.segments = segments
                    trajectory.event_time, trajectory.event_state = event
                    return trajectory
            if on_breakpoint:
                next_break += 1
                next_break_time = (
                    breakpoints[next_break] if next_break < len(breakpoints) else math.inf
                )
            t, y, f0 = t1, y1, f1
        else:
            if reject_callback is not None:
                reject_callback(t, y, h)
            rejected += 1
        step_size = controller.propose(h, ratio, order, accept)
        if not last_ratio_finite and step_size < 1e-13 * max(abs(t), 1.0):
            _check_finite(result.y1, "the state", t)

    stepper.release()
    return saved.trajectory(_stats(accepted, rejected), segments)


def _stats(accepted: int, rejected: int) -> dict[str, int]:
    return {"steps": accepted + rejected, "accepted": accepted, "rejected": rejected}


def _locate_event(
    event_fn: EventFunction, sign0: torch.Tensor, segment: Segment
) -> tuple[float, torch.Tensor] | None:
    """Bisection for the first sign change of ``event_fn`` inside an accepted step.

    Any component changing sign counts. Returns ``(t_event, y(t_event))`` or None.
    """
    with torch.no_grad():
        sign1 = torch.sign(event_fn(segment.t1, segment.y1))
        if bool((sign1 == sign0).all()):
            return None
        lo, hi = segment.t0, segment.t1
        for _ in range(_EVENT_BISECTIONS_MAX):
            mid = 0.5 * (lo + hi)
            if mid <= lo or mid >= hi:
                break
            sign_mid = torch.sign(event_fn(mid, segment.evaluate(mid)))
            if bool((sign_mid == sign0).all()):
                lo = mid
            else:
                hi = mid
        t_event = hi
    return t_event, segment.evaluate(t_event)


def fixed_grid_from_step_size(t0: float, t1: float, step_size: float) -> list[float]:
    """The grid ``t0, t0 + h, t0 + 2h, ...`` ending exactly at ``t1`` (torchdiffeq's rule)."""
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size}")
    n = int(math.ceil((t1 - t0) / step_size + 1))
    grid = [t0 + i * step_size for i in range(n)]
    grid[-1] = t1
    # A final interval shorter than rounding would give a zero step.
    if len(grid) > 2 and grid[-2] >= t1:
        grid.pop(-2)
    return grid


def integrate_fixed(
    func: VectorField,
    y0: torch.Tensor,
    t_eval: Sequence[float],
    tableau: ButcherTableau,
    grid: Sequence[float],
    *,
    interp: str = "linear",
    perturb: bool = False,
    callbacks: Callbacks | None = None,
    record_segments: bool = False,
) -> Trajectory:
    """Integrate on a fixed grid; save at ``t_eval`` by linear (or cubic Hermite) interpolation."""
    callbacks = callbacks or Callbacks()
    if interp not in ("linear", "cubic"):
        raise ValueError(f"interp must be 'linear' or 'cubic', got {interp!r}")
    cursor = _OutputCursor(t_eval)
    saved = _SavedStates(y0, len(t_eval), preallocate=False)
    segments: list[Segment] | None = [] if record_segments else None
    y = y0
    steps = 0
    stepper = None
    for t, t1 in zip(grid[:-1], grid[1:]):
        if cursor.done:
            break
        h = t1 - t
        if callbacks.step is not None:
            callbacks.step(t, y, h)
        f0 = func(t, y, 1 if perturb else 0)
        if stepper is None:
            stepper = RungeKuttaStepper.acquire(tableau, y0, fused=can_fuse(y0, f0))
            saved = _SavedStates(y0, len(t_eval), preallocate=stepper.fused)
        result = stepper.step(func, t, y, f0, h, t1=t1, perturb_end=perturb, with_error=False)
        y1 = result.y1
        steps += 1
        if callbacks.accept_step is not None:
            callbacks.accept_step(t, y, h)
        saves = cursor.take_until(t1)
        if saves or segments is not None:
            if interp == "cubic":
                segment = Segment(t, t1, y, y1, [f0], func(t1, y1, 0), _HERMITE)
            else:
                segment = Segment(t, t1, y, y1, [f0], None, None)
            for te in saves:
                saved.add_state(y1 if te == t1 else segment.evaluate(te))
            if segments is not None:
                segments.append(segment)
        y = y1
    if stepper is not None:
        stepper.release()
    return saved.trajectory(_stats(steps, 0), segments)


_HERMITE = ButcherTableau(name="hermite", order=3, c=(0.0,), a=((),), b=(1.0,))
"""A one-stage stand-in whose ``dense`` is None: segments using it interpolate by cubic Hermite."""

__all__ = [
    "AdaptiveOptions",
    "Callbacks",
    "Segment",
    "Trajectory",
    "fixed_grid_from_step_size",
    "hermite_interpolate",
    "integrate_adaptive",
    "integrate_fixed",
]
