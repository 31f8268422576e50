"""A kept step: enough to evaluate the solution anywhere inside it.

``solve(..., dense=True)`` keeps one :class:`Segment` per accepted step, events
are located on them, and the checkpointed adjoint's replay saves through them.
The interpolant is the method's: the tableau's own continuous extension (or
cubic Hermite when it has none), or, on fixed grids as in torchdiffeq, linear
or cubic Hermite interpolation between the step's ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..solvers.interpolation import hermite_interpolate, linear_interpolate
from ..solvers.runge_kutta import dense_states
from ..solvers.tableau import ButcherTableau

INTERPOLATIONS = ("dense", "linear", "cubic")
"""``dense``: the tableau's interpolant (Hermite without one); ``linear``, ``cubic``:
between the step's ends."""


@dataclass
class Segment:
    """One accepted step from ``t0`` to ``t1``."""

    t0: float
    t1: float
    y0: torch.Tensor
    y1: torch.Tensor
    stages: Sequence[torch.Tensor]
    f1: torch.Tensor | None
    tableau: ButcherTableau | None
    interpolation: str = "dense"

    def states(self, thetas: Sequence[float]) -> list[torch.Tensor]:
        """The solution at ``t0 + θ (t1 − t0)`` for each ``θ``."""
        h = self.t1 - self.t0
        if self.interpolation == "linear":
            return [linear_interpolate(self.y0, self.y1, theta) for theta in thetas]
        if self.interpolation == "cubic":
            return [
                hermite_interpolate(self.y0, self.y1, self.stages[0], self.f1, h, theta)
                for theta in thetas
            ]
        states = []
        for theta in thetas:
            # The ends are the step's own states, not the interpolant's rounding of them.
            if theta == 0.0:
                states.append(self.y0)
            elif theta == 1.0:
                states.append(self.y1)
            else:
                states.extend(
                    dense_states(self.tableau, self.y0, self.y1, self.stages, self.f1, h, [theta])
                )
        return states

    def evaluate(self, t: float) -> torch.Tensor:
        h = self.t1 - self.t0
        theta = 0.0 if h == 0 else (t - self.t0) / h
        return self.states([theta])[0]


def interpolate_between_ends(
    interpolation: str,
    y0: torch.Tensor,
    y1: torch.Tensor,
    f0: torch.Tensor | None,
    f1: torch.Tensor | None,
    h: float | torch.Tensor,
    thetas: Sequence[float] | torch.Tensor,
    out: torch.Tensor | None = None,
) -> list[torch.Tensor] | torch.Tensor | None:
    """Linear (``"linear"``) or cubic Hermite (otherwise) values at ``t0 + θ h``.

    ``thetas`` as a list gives a list (or fills the rows of ``out``); as a ``(B,)``
    tensor it gives one state, row ``b`` at ``θ_b``.
    """
    per_row = isinstance(thetas, torch.Tensor)
    each = (thetas,) if per_row else thetas
    if interpolation == "linear":
        states = [linear_interpolate(y0, y1, theta) for theta in each]
    else:
        states = [hermite_interpolate(y0, y1, f0, f1, h, theta) for theta in each]
    if per_row:
        return states[0]
    if out is None:
        return states
    torch.stack(states, out=out)
    return None


__all__ = ["INTERPOLATIONS", "Segment", "interpolate_between_ends"]
