"""Keeping a few states of a solve as it runs, through the accepted-step callback.

The checkpointed adjoint keeps its checkpoints this way, the backsolve adjoint the
states it checks its backward reconstruction against.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

MIN_AUTOMATIC_STATES = 8


class StepRecorder:
    """Records each accepted step's start time and, thinned as it goes, its start state.

    States are kept at steps ``0, k, 2k, ...``; when more than the limit are held,
    ``k`` doubles and every other one is dropped. ``limit=None`` keeps about
    ``2 √steps``. ``all_times=False`` keeps only the times of the kept states.
    """

    def __init__(self, limit: int | None, *, all_times: bool = True):
        self.limit = limit
        self.all_times = all_times
        self.stride = 1
        self.steps = 0
        self.times: list[float] = []
        self.indices: list[int] = []
        self.states: list[torch.Tensor] = []
        self.state_times: list[float] = []

    def _limit(self, steps: int) -> int:
        if self.limit is not None:
            return self.limit
        return max(MIN_AUTOMATIC_STATES, math.ceil(2 * math.sqrt(steps)))

    def __call__(self, t: float, y: torch.Tensor, h: float) -> None:
        index = self.steps
        self.steps += 1
        if self.all_times:
            self.times.append(t)
        if index % self.stride:
            return
        self.indices.append(index)
        self.states.append(y)
        self.state_times.append(t)
        while len(self.states) > self._limit(index + 1):
            self.stride *= 2
            kept = [i for i, j in enumerate(self.indices) if j % self.stride == 0]
            self.indices = [self.indices[i] for i in kept]
            self.states = [self.states[i] for i in kept]
            self.state_times = [self.state_times[i] for i in kept]


def chain_callbacks(first: Callable | None, second: Callable) -> Callable:
    """A callback calling ``first`` (if any), then ``second``."""
    if first is None:
        return second
    return lambda t, y, h: (first(t, y, h), second(t, y, h))


__all__ = ["MIN_AUTOMATIC_STATES", "StepRecorder", "chain_callbacks"]
