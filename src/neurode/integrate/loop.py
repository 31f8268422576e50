"""The integration loop: the one place where steps are taken.

Every method plugs in as a stepper (:mod:`neurode.integrate.stepper`) and every
step-size policy as a controller (:mod:`neurode.integrate.controller`):
adaptive or fixed grid, explicit, reversible, multistep or implicit, the whole
state at once or each row of a batch on its own. The loop itself only

    plans a step (controller) → attempts it (stepper) → decides (controller)
    → on acceptance: advances, saves at the requested times, records the dense
      output, looks for an event

and counts. Time runs forwards in solver time (the caller negates a
decreasing ``t``); ``user_time`` maps it back for the messages of errors.

Per-sample batching runs the same loop with per-row times: ``t_eval`` is then a
``(B, T)`` tensor, the controller a :class:`~neurode.integrate.controller.RowPIDController`,
and a row that rejects its step keeps its state while the others advance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..solvers.interpolation import row_scale
from .controller import check_finite
from .dense_output import Segment
from .events import EventFunction, event_sign, locate_event
from .saving import RowSaver, SavedStates
from .stepper import Stepper, VectorField


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
    stiff_at: float | None = None
    """The user's time where an explicit method was found held at its stability limit."""

    def stack(self) -> torch.Tensor:
        """The saved states as one tensor ``(len(ys), *state_shape)``, copied only if needed."""
        return torch.stack(self.ys) if self.stacked is None else self.stacked


@dataclass
class Callbacks:
    """User hooks, called as torchdiffeq calls them: ``(t, y, step_size)``."""

    step: Callable | None = None
    accept_step: Callable | None = None
    reject_step: Callable | None = None


NO_CALLBACKS = Callbacks()


def integrate(
    field: VectorField,
    y0: torch.Tensor,
    t_eval: Sequence[float] | torch.Tensor,
    stepper: Stepper,
    controller,
    *,
    callbacks: Callbacks = NO_CALLBACKS,
    record_segments: bool = False,
    event_fn: EventFunction | None = None,
    user_time: Callable[[float], float] = float,
) -> Trajectory:
    """Integrate from ``y0`` at ``t_eval[0]`` and save the state at every ``t_eval``.

    ``t_eval`` is an increasing sequence of floats, or a ``(B, T)`` float64 tensor
    of increasing rows (per-sample batching: ``controller`` is then a row
    controller, and ``t``, ``h`` in the callbacks are ``(B,)`` tensors). With
    ``event_fn`` the loop ignores ``t_eval[1:]`` and stops at the first sign change
    of ``event_fn(t, y)``.
    """
    per_row = isinstance(t_eval, torch.Tensor)
    if per_row:
        t, t_end = t_eval[:, 0].clone(), t_eval[:, -1]
        saver = RowSaver(y0, t_eval)
    else:
        t, t_end = t_eval[0], (math.inf if event_fn is not None else t_eval[-1])
    controller.begin(t, t_end)
    f0 = field(t, y0, controller.start_perturb)
    check_finite(f0, "func(t0, y0)", user_time(float(t.min()) if per_row else t))
    step_size = controller.first_step(field, t, y0, f0, stepper.error_order)
    stepper.start(y0, f0, controller.start_perturb)
    if not per_row:
        saver = SavedStates(
            y0, t_eval, preallocate=stepper.fused and event_fn is None, events=event_fn is not None
        )
    segments: list[Segment] | None = [] if record_segments else None
    keep_segments = record_segments or event_fn is not None
    sign0 = None
    if event_fn is not None:
        sign0 = event_sign(event_fn, t, y0)
        if not bool(sign0.all()):  # already on the event: torchdiffeq returns (t0, y0)
            stepper.finish()
            return Trajectory(
                ys=[y0], stats=controller.stats(), segments=[], event_time=t, event_state=y0
            )
    # Hoisted out of the loop, which runs once per step.
    step_callback, accept_callback = callbacks.step, callbacks.accept_step
    reject_callback = callbacks.reject_step
    perturb_ends = controller.perturb_ends
    checks_saves = not controller.adaptive
    next_save = math.inf if per_row else saver.next_time
    y = y0
    try:
        while True:
            if per_row:
                plan = controller.plan(t, step_size, y, saver.active)
                if plan is None:
                    break
            elif next_save > t_end:
                break
            else:
                plan = controller.plan(t, step_size, y, None)
            t1, h, end_on_jump = plan
            if step_callback is not None:
                step_callback(t, y, h)
            attempt = stepper.step(field, t, t1, h, y, perturb_ends, end_on_jump)
            accept, step_size, any_accepted = controller.decide(t, h, attempt)
            if not any_accepted:
                if reject_callback is not None:
                    reject_callback(t, y, h)
                stepper.reject(attempt)
                continue
            if accept_callback is not None:
                accept_callback(t, y, h)
            rows = accept if per_row else None
            if per_row:
                saver.save(field, attempt, t, t1, h, rows)
            elif next_save <= t1:
                saver.save(field, attempt, t, t1, h)
                next_save = saver.next_time
                if checks_saves:
                    # Fixed steps have no error test to notice a blow-up: one check per save.
                    check_finite(saver.latest(), "the state", user_time(t1))
            if keep_segments:
                segment = attempt.segment(field)
                if segments is not None:
                    segments.append(segment)
                if event_fn is not None:
                    event = locate_event(event_fn, sign0, segment)
                    if event is not None:
                        check_finite(event[1], "the state", user_time(event[0]))
                        return Trajectory(
                            ys=[y0],
                            stats=_stats(controller, stepper),
                            segments=segments,
                            event_time=event[0],
                            event_state=event[1],
                            stiff_at=getattr(getattr(stepper, "stiffness", None), "stiff_at", None),
                        )
            # After the dense output, which may have evaluated f(t1, y1) for the next step.
            stepper.accept(field, attempt, rows)
            if per_row:
                y = torch.where(row_scale(accept, y).bool(), attempt.y1, y)
                t = torch.where(accept, t1, t)
            else:
                t, y = t1, attempt.y1
    finally:
        stepper.finish()
    ys, stacked = saver.result()
    return Trajectory(
        ys=ys,
        stats=_stats(controller, stepper),
        segments=segments,
        stacked=stacked,
        stiff_at=getattr(getattr(stepper, "stiffness", None), "stiff_at", None),
    )


def _stats(controller, stepper: Stepper) -> dict:
    """The controller's step counts and whatever the stepper counts (``stats()``, optional)."""
    stats = controller.stats()
    own = getattr(stepper, "stats", None)
    if own is not None:
        stats.update(own())
    return stats


__all__ = ["Callbacks", "NO_CALLBACKS", "Trajectory", "integrate"]
