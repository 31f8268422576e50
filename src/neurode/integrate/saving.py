"""Saving the state at the requested times, from the dense output of each accepted step.

:class:`SavedStates` serves a solve of the whole state (one list of increasing
save times); :class:`RowSaver` serves per-sample batching (each row its own
save times, shape ``(B, T)``). Both take the accepted step's attempt and write
every save time it passed; a save time on the step's end gets the step's own
state, not the interpolant's rounding of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..solvers.interpolation import row_scale
from .stepper import StepAttempt, VectorField

_PREALLOCATE_CPU_BYTES_MAX = 32 * 2**20
"""Above this a fresh CPU tensor comes straight from the OS (glibc's largest mmap
threshold) and pays a page fault per 4 KiB on first write; a caller that stacks
``ys`` again would pay that twice, so larger outputs are collected as a list."""


class SavedStates:
    """The states at the save times ``t_eval`` (increasing), collected step by step.

    Without autograd (``preallocate``) they are written straight into one
    ``(len(t_eval), *shape)`` tensor: the dense output of a step is one matrix
    product into its rows, and a caller using ``stack()`` copies nothing.
    """

    def __init__(
        self,
        y0: torch.Tensor,
        t_eval: Sequence[float],
        preallocate: bool,
        *,
        events: bool = False,
    ):
        # An event ends the solve: no save times are written before it.
        self.t_eval = t_eval[:1] if events else t_eval
        self.next_index = 1
        self.buffer = None
        self.ys = [y0]
        size = len(self.t_eval) * y0.numel() * y0.element_size()
        if preallocate and (y0.device.type != "cpu" or size <= _PREALLOCATE_CPU_BYTES_MAX):
            self.buffer = torch.empty(
                (len(self.t_eval), *y0.shape), dtype=y0.dtype, device=y0.device
            )
            self.buffer[0].copy_(y0)

    @property
    def next_time(self) -> float:
        """The next save time; infinity once every one is written."""
        index = self.next_index
        return self.t_eval[index] if index < len(self.t_eval) else math.inf

    def save(
        self, field: VectorField, attempt: StepAttempt, t0: float, t1: float, h: float, rows=None
    ) -> bool:
        """Write every save time in ``(t0, t1]`` from the accepted step; whether there was one."""
        start = self.next_index
        t_eval = self.t_eval
        if start >= len(t_eval) or t_eval[start] > t1:
            return False
        end = start
        while end < len(t_eval) and t_eval[end] <= t1:
            end += 1
        times = t_eval[start:end]
        self.next_index = end
        # A save time on the step's end gets the step's own state, not the interpolant's
        # rounding of it; unless times are differentiated, where the interpolant (equal
        # in value) carries the save time's own gradient.
        ends_on_t1 = not isinstance(t1, torch.Tensor) and times[-1] == t1
        thetas = [(te - t0) / h for te in (times[:-1] if ends_on_t1 else times)]
        if self.buffer is None:
            if thetas:
                self.ys += attempt.dense_states(field, thetas)
            if ends_on_t1:
                self.ys.append(attempt.y1)
            return True
        last = start + len(thetas)
        if thetas:
            attempt.dense_states(field, thetas, out=self.buffer[start:last])
        if ends_on_t1:
            self.buffer[last].copy_(attempt.y1)
        return True

    def latest(self) -> torch.Tensor:
        """The last state written."""
        return self.ys[-1] if self.buffer is None else self.buffer[self.next_index - 1]

    def result(self) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """``(ys, stacked)``: the states, and the one tensor holding them if there is one."""
        if self.buffer is None:
            return self.ys, None
        return list(self.buffer.unbind(0)), self.buffer


class RowSaver:
    """Per-row save times ``t_eval`` of shape ``(B, T)``; ``saved[b, j] = y_b(t_eval[b, j])``.

    The saved states are rewritten out of place, so that autograd follows them.
    """

    def __init__(self, y0: torch.Tensor, t_eval: torch.Tensor):
        batch, count = t_eval.shape
        self.t_eval = t_eval
        self.count = count
        self.saved = y0.unsqueeze(1).expand(batch, count, *y0.shape[1:]).clone()
        self.next_index = torch.ones(batch, dtype=torch.long, device=y0.device)
        self.rows = torch.arange(batch, device=y0.device)

    @property
    def active(self) -> torch.Tensor:
        """Rows with save times still to write."""
        return self.next_index < self.count

    def _due(self, accepted: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
        column = self.next_index.clamp(max=self.count - 1)
        target = self.t_eval.gather(1, column[:, None]).squeeze(1)
        return accepted & (self.next_index < self.count) & (target <= t1)

    def save(self, field, attempt: StepAttempt, t0, t1, h, accepted: torch.Tensor) -> bool:
        """Write every save time the accepted rows' steps have passed (a row may have several)."""
        due = self._due(accepted, t1)
        y0, y1 = attempt.y0, attempt.y1
        saved_any = False
        while bool(due.any()):
            saved_any = True
            column = self.next_index.clamp(max=self.count - 1)
            target = self.t_eval.gather(1, column[:, None]).squeeze(1)
            at_end = target == t1
            theta = torch.where(due & ~at_end & (h > 0), (target - t0) / h, 1.0)
            value = attempt.dense_states(field, theta)
            value = torch.where(row_scale(at_end, y0).bool(), y1, value)
            current = self.saved[self.rows, column]
            value = torch.where(row_scale(due, y0).bool(), value, current)
            self.saved = self.saved.index_put((self.rows, column), value)
            self.next_index = self.next_index + due
            due = self._due(accepted, t1)
        return saved_any

    def latest(self) -> torch.Tensor:
        return self.saved

    def result(self) -> tuple[list[torch.Tensor], None]:
        """``([ys], None)`` with ``ys`` of shape ``(T, B, ...)``."""
        return [self.saved.transpose(0, 1)], None


__all__ = ["RowSaver", "SavedStates"]
