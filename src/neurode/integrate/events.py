"""Terminal events: where inside an accepted step ``event_fn(t, y)`` changes sign.

The root is located by bisection on the step's dense output, to the resolution
of floating point (or ``_EVENT_BISECTIONS_MAX`` halvings). Any component of
``event_fn`` changing sign counts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .dense_output import Segment

EventFunction = Callable[[float, torch.Tensor], torch.Tensor]
"""``event_fn(t, y)`` in solver time on the solver's state."""

_EVENT_BISECTIONS_MAX = 200


def event_sign(event_fn: EventFunction, t: float, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.sign(event_fn(t, y))


def locate_event(
    event_fn: EventFunction, sign0: torch.Tensor, segment: Segment
) -> tuple[float, torch.Tensor] | None:
    """``(t_event, y(t_event))`` of the first sign change inside ``segment``, or None."""
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


__all__ = ["EventFunction", "event_sign", "locate_event"]
