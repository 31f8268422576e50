"""The result of :func:`neurode.solve`."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import torch

from .dense_output import Segment
from .tuple_state import TupleLayout


@dataclass
class Solution:
    """Saved states, their times, statistics and (optionally) the dense solution.

    ``ys`` has shape ``(len(ts), *y0.shape)`` (a tuple of such for tuple states).
    ``stats`` holds ``nfe``, ``steps``, ``accepted`` and ``rejected`` of the forward
    solve; gradient methods add ``nfe_backward`` (and friends) during backward.
    ``status`` is ``"success"`` or ``"event"`` (stopped at an event).
    """

    ys: Any
    ts: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)
    status: str = "success"
    event_time: torch.Tensor | None = None
    _segments: list[Segment] | None = field(default=None, repr=False)
    _layout: TupleLayout | None = field(default=None, repr=False)
    _reversed: bool = field(default=False, repr=False)

    def evaluate(self, t: float | torch.Tensor) -> Any:
        """The dense solution at time(s) ``t`` inside the solved span.

        Needs ``solve(..., dense=True)``. A 0-dim ``t`` gives one state, a 1-D ``t``
        a stack of states.
        """
        if self._segments is None:
            raise ValueError("dense output was not recorded; call solve(..., dense=True)")
        times = torch.as_tensor(t, dtype=torch.float64)
        flat_times = times.reshape(-1).tolist()
        states = [self._evaluate_one(float(x)) for x in flat_times]
        stacked = torch.stack(states) if times.ndim else states[0]
        if self._layout is not None:
            return self._layout.unflatten(stacked)
        return stacked

    def _evaluate_one(self, t_user: float) -> torch.Tensor:
        segments = self._segments
        s = -t_user if self._reversed else t_user
        start, end = segments[0].t0, segments[-1].t1
        tolerance = 1e-12 * max(abs(start), abs(end), 1.0)
        if not (start - tolerance <= s <= end + tolerance):
            lo, hi = sorted((-start, -end) if self._reversed else (start, end))
            raise ValueError(f"t={t_user} is outside the solved span [{lo}, {hi}]")
        s = min(max(s, start), end)
        index = bisect.bisect_left([seg.t1 for seg in segments], s)
        return segments[min(index, len(segments) - 1)].evaluate(s)
