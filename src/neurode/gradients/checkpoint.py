"""The checkpointed adjoint: exact gradients of the discrete solve in bounded memory.

The forward solve runs without a graph and keeps the state at the start of
every ``k``-th accepted step (the checkpoints) and the start time of every
accepted step (one float each). The backward pass visits the checkpoint
intervals from last to first: it replays the interval's steps from the stored
state with autograd on — the same step sizes, the same stages, the same dense
output for the save times inside it, so the replayed states equal the forward
ones (to rounding: a forward solve without autograd may combine the stages with
differently ordered BLAS arithmetic) — and backpropagates the adjoint through
that one interval:

    a_start = (∂y_end/∂y_start)^T a_end + Σ_{t_i in interval} (∂y(t_i)/∂y_start)^T dL/dy(t_i)

accumulating ``dL/dθ`` along the way. The state is never integrated backwards,
so the gradient is that of the forward discretisation (as ``gradient="direct"``,
up to rounding) and stays accurate on problems where ``"backsolve"`` diverges.
Memory is the checkpoints plus the graph of one interval.

Options (``gradient_options``):

- ``checkpoints``: the most states to keep (an int >= 1). They are spread
  evenly over the accepted steps: every ``k``-th step with ``k`` a power of
  two, chosen while the solve runs, so between half of and all of
  ``checkpoints`` are used. Default: about ``2 sqrt(steps)``, which balances the
  checkpoints against the replayed interval (``sqrt(steps)/2`` to ``sqrt(steps)``
  steps).

Time gradients use ``dL/dt_i = <dL/dy(t_i), f(t_i, y(t_i))>`` (i > 0) and
``dL/dt_0 = -<a(t_0), f(t_0, y_0)>`` as the other adjoints do.

``stats`` gains ``checkpoints`` (states kept) after the forward solve and
``nfe_backward`` / ``steps_backward`` (replayed) after backward. The replay does
not call the step callbacks again. Only Runge–Kutta methods (adaptive or fixed
grid) can be replayed; other integrators raise ``UnknownMethodError``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import UnknownMethodError, UnknownOptionError
from ..integrate import Callbacks, Segment
from ..problem import ODEProblem
from ..solvers.runge_kutta import runge_kutta_step
from ..solvers.tableau import ButcherTableau
from . import GradientResult, check_options, register
from ._adjoint_common import (
    apply_custom_backward,
    record_backward_stats,
    save_time_gradients,
    start_time_gradient,
    trainable,
)

_OPTIONS = frozenset({"checkpoints"})
_MIN_AUTOMATIC_CHECKPOINTS = 8

_HERMITE = ButcherTableau(name="hermite", order=3, c=(0.0,), a=((),), b=(1.0,))
"""A stand-in without ``dense`` coefficients: its segments interpolate by cubic Hermite,
as the fixed-grid loop's do with ``interp="cubic"``."""


def solve_checkpoint(
    problem: ODEProblem,
    y0: torch.Tensor,
    t: torch.Tensor,
    t_solver: list[float],
    *,
    params: tuple[torch.Tensor, ...] = (),
    options: dict[str, Any] | None = None,
    record_segments: bool = False,
) -> GradientResult:
    params = trainable(params)
    checkpointed = _Checkpointed(problem, t, t_solver, params, options or {}, record_segments)
    ys = apply_custom_backward(checkpointed, y0, t, params)
    return GradientResult(ys=ys, stats=checkpointed.stats, segments=checkpointed.segments)


class _StepRecorder:
    """Records each accepted step's start time and, thinned as it goes, its start state.

    States are kept at steps ``0, k, 2k, ...``; when more than the limit are held,
    ``k`` doubles and every other one is dropped.
    """

    def __init__(self, limit: int | None):
        self.limit = limit
        self.stride = 1
        self.times: list[float] = []
        self.indices: list[int] = []
        self.states: list[torch.Tensor] = []

    def _limit(self, steps: int) -> int:
        if self.limit is not None:
            return self.limit
        return max(_MIN_AUTOMATIC_CHECKPOINTS, math.ceil(2 * math.sqrt(steps)))

    def __call__(self, t: float, y: torch.Tensor, h: float) -> None:
        index = len(self.times)
        self.times.append(t)
        if index % self.stride:
            return
        self.indices.append(index)
        self.states.append(y)
        while len(self.states) > self._limit(index + 1):
            self.stride *= 2
            kept = [i for i, j in enumerate(self.indices) if j % self.stride == 0]
            self.indices = [self.indices[i] for i in kept]
            self.states = [self.states[i] for i in kept]


def _chain(first, second):
    if first is None:
        return second
    return lambda t, y, h: (first(t, y, h), second(t, y, h))


class _Checkpointed:
    """Forward solve without a graph; backward by replaying checkpoint intervals."""

    def __init__(
        self,
        problem: ODEProblem,
        t: torch.Tensor,
        t_solver: list[float],
        params: tuple[torch.Tensor, ...],
        options: dict[str, Any],
        record_segments: bool,
    ):
        check_options("checkpoint", options, _OPTIONS)
        limit = options.get("checkpoints")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise UnknownOptionError(f"checkpoints must be an int >= 1, got {limit!r}")
        if problem.method.kind not in ("adaptive", "fixed"):
            raise UnknownMethodError(
                f"gradient='checkpoint' replays Runge–Kutta steps; method "
                f"{problem.method.name!r} is not one (use gradient='direct' or 'backsolve')"
            )
        self.problem = problem
        self.t = t
        self.t_solver = t_solver
        self.params = params
        self.limit = limit
        self.record_segments = record_segments
        self.stats: dict[str, Any] = {}
        self.segments = None

    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        problem = self.problem
        recorder = _StepRecorder(self.limit)
        user = problem.callbacks
        callbacks = Callbacks(
            step=user.step,
            accept_step=_chain(user.accept_step, recorder),
            reject_step=user.reject_step,
        )
        trajectory = problem.integrate(
            y0, self.t_solver, record_segments=self.record_segments, callbacks=callbacks
        )
        self.recorder = recorder
        self.stats.update(trajectory.stats)
        self.stats["nfe"] = problem.nfe
        self.stats["checkpoints"] = len(recorder.states)
        self.segments = trajectory.segments
        return torch.stack(trajectory.ys)

    # ............................................................................ backward
    def backward(self, ys: torch.Tensor, grad_ys: torch.Tensor, needs_grad: Sequence[bool]):
        problem, recorder, t_solver = self.problem, self.recorder, self.t_solver
        nfe_before = problem.nfe
        replay = _Replay(problem, t_solver, recorder.times)
        saves_by_step = replay.saves_by_step()
        params = self.params
        grad_params: list[torch.Tensor | None] = [None] * len(params)
        adjoint = None  # of the state at the end of the current interval
        bounds = [*recorder.indices, len(recorder.times)]
        for c in range(len(recorder.states) - 1, -1, -1):
            first, last = bounds[c], bounds[c + 1]
            with torch.enable_grad():
                start = recorder.states[c].detach().requires_grad_(True)
                end, saved = replay.run(start, first, last, saves_by_step)
                outputs, cotangents = [], []
                if adjoint is not None:
                    outputs.append(end)
                    cotangents.append(adjoint)
                for i, value in saved:
                    outputs.append(value)
                    cotangents.append(grad_ys[i])
                if not any(o.requires_grad for o in outputs):
                    adjoint = torch.zeros_like(start) if adjoint is None else adjoint * 0
                    continue
                grads = torch.autograd.grad(
                    outputs,
                    (start, *params),
                    cotangents,
                    allow_unused=True,
                    materialize_grads=True,
                )
            adjoint = grads[0]
            for k, g in enumerate(grads[1:]):
                grad_params[k] = g if grad_params[k] is None else grad_params[k] + g
        if adjoint is None:
            adjoint = torch.zeros_like(ys[0])

        grad_t = None
        if needs_grad[1]:
            time_grads = save_time_gradients(problem, t_solver, ys, grad_ys)
            time_grads[0] = start_time_gradient(problem, t_solver[0], ys[0], adjoint)
            grad_t = torch.stack(time_grads).to(self.t.dtype)
        record_backward_stats(
            self.stats, nfe_backward=problem.nfe - nfe_before, steps_backward=len(recorder.times)
        )
        grad_y0 = adjoint + grad_ys[0] if needs_grad[0] else None
        grad_params = [
            (torch.zeros_like(p) if g is None else g.to(p.dtype)) if need else None
            for g, p, need in zip(grad_params, params, needs_grad[2:])
        ]
        return grad_y0, grad_t, grad_params


class _Replay:
    """Re-runs recorded accepted steps as the integration loop ran them.

    Mirrors ``integrate_adaptive`` and ``integrate_fixed``: the same stage
    evaluations (with the same one-sided ``perturb`` at breakpoints), the same
    first-same-as-last reuse, and the same dense output at the save times.
    """

    def __init__(self, problem: ODEProblem, t_solver: list[float], starts: list[float]):
        method = problem.method
        self.func = problem.vector_field
        self.tableau = method.tableau
        self.t_solver = t_solver
        self.adaptive = method.kind == "adaptive"
        if self.adaptive:
            self.ends = [*starts[1:], t_solver[-1]]
            t0, t1 = t_solver[0], t_solver[-1]
            self.jumps = {x for x in method.adaptive.jump_t if t0 < x < t1}
            self.perturb = bool(self.jumps)
        else:
            grid = method.grid if method.grid is not None else t_solver
            self.ends = list(grid[1 : len(starts) + 1])
            self.jumps = set()
            self.perturb = method.perturb
            self.cubic = method.interp == "cubic"
        self.starts = starts

    def saves_by_step(self) -> dict[int, list[tuple[int, float]]]:
        """For each step, the save times it produced: ``[(index in t, solver time)]``."""
        saves: dict[int, list[tuple[int, float]]] = {}
        for i in range(1, len(self.t_solver)):
            step = bisect.bisect_left(self.ends, self.t_solver[i])
            saves.setdefault(step, []).append((i, self.t_solver[i]))
        return saves

    def _start_perturb(self, step: int) -> int:
        """The one-sided evaluation the loop used for ``f`` at the start of ``step``."""
        if not self.adaptive:
            return 1 if self.perturb else 0
        if step == 0 or self.starts[step] in self.jumps:
            return 1 if self.perturb else 0
        return -1 if (self.perturb and self.tableau.fsal) else 0

    def run(
        self,
        y: torch.Tensor,
        first: int,
        last: int,
        saves_by_step: dict[int, list[tuple[int, float]]],
    ) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]:
        """Steps ``first .. last-1`` from ``y``; the end state and the saves on the way."""
        func, tableau = self.func, self.tableau
        saved: list[tuple[int, torch.Tensor]] = []
        t = self.starts[first]
        f0 = func(t, y, self._start_perturb(first))
        for step in range(first, last):
            t1 = self.ends[step]
            result = runge_kutta_step(
                tableau,
                func,
                t,
                y,
                f0,
                t1 - t,
                t1=t1,
                perturb_end=self.perturb,
                with_error=self.adaptive,
            )
            y1 = result.y1
            saves = saves_by_step.get(step, ())
            if self.adaptive:
                on_jump = t1 in self.jumps
                f1 = result.f1
                if (f1 is None or on_jump) and (step + 1 < last or (saves and not tableau.dense)):
                    f1 = func(t1, y1, 1 if on_jump else 0)
                segment = Segment(t, t1, y, y1, result.stages, f1, tableau)
            elif saves and self.cubic:
                segment = Segment(t, t1, y, y1, [f0], func(t1, y1, 0), _HERMITE)
            else:
                segment = Segment(t, t1, y, y1, [f0], None, None)
            for i, te in saves:
                saved.append((i, y1 if te == t1 else segment.evaluate(te)))
            t, y = t1, y1
            if step + 1 < last:
                f0 = f1 if self.adaptive else func(t, y, 1 if self.perturb else 0)
        return y, saved


register("checkpoint", solve_checkpoint)
