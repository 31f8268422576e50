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
not call the step callbacks again. The replay is the integration loop itself,
stepping along the recorded steps (a :class:`~neurode.integrate.controller.GridController`)
with the forward method's own stepper, so any one-step method can be replayed;
multistep methods (whose steps depend on earlier ones) and solves outside torch
raise ``UnknownMethodError``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import InvalidOptionError, UnknownMethodError
from ..integrate.controller import GridController
from ..integrate.loop import Callbacks
from ..integrate.problem import ODEProblem
from . import GradientResult, check_options, register
from ._adjoint_common import (
    apply_custom_backward,
    record_backward_stats,
    save_time_gradients,
    start_time_gradient,
    trainable,
)
from ._step_recorder import StepRecorder, chain_callbacks
from .stiff_guard import refuse_gradients_past_stiffness

_OPTIONS = frozenset({"checkpoints"})


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
    # The replays differentiate the same frozen steps as direct backpropagation.
    ys = refuse_gradients_past_stiffness(ys, t, checkpointed.stiff_at, problem.method.name)
    return GradientResult(ys=ys, stats=checkpointed.stats, segments=checkpointed.segments)


class _Checkpointed:
    """Forward solve without a graph; backward by replaying checkpoint intervals."""

    gradient_name = "checkpoint"

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
            raise InvalidOptionError(f"checkpoints must be an int >= 1, got {limit!r}")
        if problem.method.kind not in ("adaptive", "fixed") or not problem.method.replayable:
            raise UnknownMethodError(
                f"gradient='checkpoint' replays steps from stored states; the steps of method "
                f"{problem.method.name!r} cannot be replayed that way (use gradient='direct' "
                "or 'backsolve')"
            )
        self.problem = problem
        self.t = t
        self.t_solver = t_solver
        self.params = params
        self.limit = limit
        self.record_segments = record_segments
        self.stats: dict[str, Any] = {}
        self.stiff_at: float | None = None
        self.segments = None

    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        problem = self.problem
        recorder = StepRecorder(self.limit)
        user = problem.callbacks
        callbacks = Callbacks(
            step=user.step,
            accept_step=chain_callbacks(user.accept_step, recorder),
            reject_step=user.reject_step,
        )
        trajectory = problem.integrate(
            y0, self.t_solver, record_segments=self.record_segments, callbacks=callbacks
        )
        self.recorder = recorder
        self.stiff_at = trajectory.stiff_at
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
    """Re-runs recorded accepted steps as the forward loop ran them.

    The integration loop with the forward method's stepper, stepping along the
    recorded step times: the same stage evaluations (with the same one-sided
    ``perturb`` at breakpoints), the same first-same-as-last reuse, and the same
    dense output at the save times.
    """

    def __init__(self, problem: ODEProblem, t_solver: list[float], starts: list[float]):
        method = problem.method
        self.problem = problem
        self.t_solver = t_solver
        self.starts = starts
        self.ends = [*starts[1:], t_solver[-1]]
        if method.kind == "adaptive":
            t0, t1 = t_solver[0], t_solver[-1]
            self.jumps = frozenset(x for x in method.adaptive.jump_t if t0 < x < t1)
            self.perturb = False
        else:
            self.jumps = frozenset()
            self.perturb = method.fixed.perturb

    def saves_by_step(self) -> dict[int, list[tuple[int, float]]]:
        """For each step, the save times it produced: ``[(index in t, solver time)]``."""
        saves: dict[int, list[tuple[int, float]]] = {}
        for i in range(1, len(self.t_solver)):
            step = bisect.bisect_left(self.ends, self.t_solver[i])
            saves.setdefault(step, []).append((i, self.t_solver[i]))
        return saves

    def _start_perturb(self, step: int) -> int:
        """How the forward loop had evaluated ``f`` at the start of ``step``."""
        if self.perturb:
            return 1
        if not self.jumps:
            return 0
        if step == 0 or self.starts[step] in self.jumps:
            return 1
        # Inside the span a first-same-as-last derivative was taken from the left.
        return -1 if self.problem.method.tableau.fsal else 0

    def run(
        self,
        y: torch.Tensor,
        first: int,
        last: int,
        saves_by_step: dict[int, list[tuple[int, float]]],
    ) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]:
        """Steps ``first .. last-1`` from ``y``; the end state and the saves on the way."""
        saves = [save for step in range(first, last) for save in saves_by_step.get(step, ())]
        end = self.ends[last - 1]
        times = [self.starts[first], *(te for _, te in saves)]
        if times[-1] != end:
            times.append(end)
        grid = [*self.starts[first:last], end]
        controller = GridController(
            grid=grid,
            perturb=self.perturb,
            jumps=self.jumps,
            perturb_ends=bool(self.jumps),
            start_perturb=self._start_perturb(first),
            user_time=self.problem.user_time,
        )
        trajectory = self.problem.integrate(y, times, controller=controller, callbacks=Callbacks())
        states = trajectory.ys
        saved = [(i, states[k + 1]) for k, (i, _) in enumerate(saves)]
        return states[-1], saved


register("checkpoint", solve_checkpoint)
