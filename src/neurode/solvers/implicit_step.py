r"""What an implicit or Rosenbrock step returns, and its dense output.

Every step from ``t`` to ``t + h`` returns an :class:`ImplicitStep`. Its dense
output is one formula for all of them,

.. math::

    y(t + θh) = y_0 + σ Σ_i w_i(θ)\, v_i, \qquad w_i(θ) = Σ_j P_{ij} θ^{j+1},

where for an implicit Runge–Kutta step ``v_i = k_i`` are the stage derivatives,
``σ = h`` and ``P`` the tableau's ``dense`` rows; for a Rosenbrock step
``v_i = u_i`` are the stage increments, ``σ = 1`` and ``P`` the weights of its
interpolant rewritten as polynomials (:mod:`neurode.solvers.rosenbrock`).
``θ`` is a float, or in per-row mode a ``(B,)`` tensor (each row its own θ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NewtonStats:
    """The stage solves of one step; each has the shape of the row flags, ``()`` or ``(B,)``."""

    iterations: torch.Tensor
    """Newton iterations summed over the implicit stages."""
    rate: torch.Tensor
    """The largest contraction ``θ`` over the stages: the Jacobian policy's input."""
    eta: torch.Tensor
    """Seed of the next step's first Newton stopping test (``eta`` of the next step call)."""


@dataclass
class ImplicitStep:
    """Result of one attempted implicit step from ``t`` to ``t + h``.

    Where ``converged`` is False (per row: for those rows) the other values are
    meaningless and the step must be retried with a smaller ``h``.
    """

    y1: torch.Tensor
    error_estimate: torch.Tensor | None
    """``y1 − ŷ1`` of the embedded pair (filtered if asked), or None for fixed-step methods."""
    f1: torch.Tensor | None
    """``f(t + h, y1)`` when the step has it for free (stiffly accurate, ``c_s = 1``), else None."""
    stages: list[torch.Tensor]
    """``k_i`` (Runge–Kutta) or ``u_i`` (Rosenbrock): the values the dense output combines."""
    converged: torch.Tensor
    """Bool, ``()`` or ``(B,)``: every stage solve converged (Rosenbrock: all values finite)."""
    function_evaluations: int
    """Calls of ``func`` made by the step (each covers every row)."""
    newton: NewtonStats | None
    """None for a Rosenbrock step, which has no Newton iteration."""
    y0: torch.Tensor
    stage_scale: float | torch.Tensor
    """``σ`` of the dense formula: ``h`` (rows shaped like ``y0`` in per-row mode) or 1."""
    dense: tuple[tuple[float, ...], ...]
    """``P``: the coefficients of ``θ, θ², …`` in each stage's dense weight."""
    finite: torch.Tensor | None = None
    """Like ``converged``: False where a stage solve met NaN or infinity (``f`` left its
    domain) rather than converging too slowly; None when not tracked."""

    def interpolate(self, theta: float | torch.Tensor) -> torch.Tensor:
        """The solution at ``t + θh``, ``θ ∈ [0, 1]`` (per row: a ``(B,)`` tensor)."""
        if isinstance(theta, torch.Tensor):
            theta = theta.to(device=self.y0.device, dtype=self.y0.dtype)
            theta = theta.reshape((-1,) + (1,) * (self.y0.ndim - 1))
        elif theta == 0.0:
            return self.y0
        result = self.y0
        for row, stage in zip(self.dense, self.stages):
            weight = 0.0
            power = theta
            for coefficient in row:
                weight = weight + coefficient * power
                power = power * theta
            result = result + self.stage_scale * weight * stage
        return result
