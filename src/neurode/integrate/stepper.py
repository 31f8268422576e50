"""What a stepper is: the contract between a method and the integration loop.

The loop (:mod:`neurode.integrate.loop`) owns the time, the state and the saved
outputs; the controller (:mod:`neurode.integrate.controller`) owns the step
sizes; a stepper owns one method's arithmetic and whatever that method carries
from step to step (the first-same-as-last derivative, the reversible method's
second state, the Adams history, an implicit method's Jacobian). Every method —
explicit Runge–Kutta, the reversible wrapper, Adams, implicit and Rosenbrock —
is a stepper, and per-sample batching is the same steppers with per-row times.

A stepper answers:

- ``error_order``: ``q + 1`` for an error estimate of order ``q`` (the
  controller's exponent); ``fused``: whether it writes into reusable buffers
  (the loop then also writes the saved states into one preallocated tensor);
- ``start(y0, f0, perturb)``: a solve begins at ``y0`` with ``f0 = f(t0, y0)``, evaluated
  from the side ``perturb`` says (``+1``: just after ``t0``, as a grid with torchdiffeq's
  ``perturb`` asks);
- ``step(field, t, t1, h, y, perturb_end, end_on_jump)``: attempt the step,
  returning a :class:`StepAttempt`; ``perturb_end`` asks for stages at ``t1`` to
  be evaluated from the left, ``end_on_jump`` says ``t1`` is a discontinuity, so
  a derivative there for later use must be taken again from the right;
- ``accept(field, attempt, rows=None)``: the attempt was kept (``rows``: the
  mask of rows that kept it);
- ``reject(attempt)``: the attempt was not kept;
- ``finish()``: the solve is over (buffers may be handed back).

A :class:`StepAttempt` exposes ``y1``, ``error_terms`` (pairs of error
estimates and the states that scale them; empty without an estimate),
``converged`` (false when an implicit method's stage equations did not
converge: the controller then retries with a smaller step), and the dense output
inside the step: ``dense_states(field, thetas, out)`` and ``segment(field)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

VectorField = Callable[[Any, torch.Tensor, int], torch.Tensor]
"""``field(t, y, perturb)`` on the solver's state, time running forwards.

``perturb`` is ``+1``/``-1`` to ask for an evaluation just after/before ``t``
(one ulp, for discontinuities), else 0. ``t`` is a float, or a ``(B,)`` float64
tensor of per-row times (per-sample batching)."""

ErrorTerm = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(error_estimate, y_start, y_end)``: an estimate measured against its two states."""


class StepAttempt(Protocol):
    t0: Any
    t1: Any
    h: Any
    y0: torch.Tensor
    y1: torch.Tensor
    error_terms: Sequence[ErrorTerm]
    converged: bool | torch.Tensor

    def dense_states(
        self, field: VectorField, thetas: Sequence[float] | torch.Tensor, out=None
    ) -> list[torch.Tensor] | torch.Tensor | None:
        """The solution at ``t0 + θ h``: a list (or rows of ``out``), or per row for a tensor."""

    def segment(self, field: VectorField):
        """A :class:`~neurode.integrate.dense_output.Segment` of this step, kept for later."""


class Stepper(Protocol):
    error_order: int
    fused: bool

    def start(self, y0: torch.Tensor, f0: torch.Tensor, perturb: int = 0) -> None: ...

    def step(
        self,
        field: VectorField,
        t: Any,
        t1: Any,
        h: Any,
        y: torch.Tensor,
        perturb_end: bool,
        end_on_jump: bool,
    ) -> StepAttempt: ...

    def accept(
        self, field: VectorField, attempt: StepAttempt, rows: torch.Tensor | None = None
    ) -> None: ...

    def reject(self, attempt: StepAttempt) -> None: ...

    def finish(self) -> None: ...


__all__ = ["ErrorTerm", "StepAttempt", "Stepper", "VectorField"]
