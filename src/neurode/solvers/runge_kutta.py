"""One generic explicit Runge–Kutta step, serving every tableau.

The step is a pure function of tensors: given ``f0 = f(t, y0)`` it evaluates the
remaining stages, combines them into ``y1`` and (for embedded pairs) the error
estimate, and returns the stages for the dense output. Coefficients are
pre-multiplied by the step size once per step and applied with fused
``add(..., alpha=...)`` so that zero coefficients cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .tableau import ButcherTableau

StageFunction = Callable[[float, torch.Tensor, int], torch.Tensor]
"""``f(t, y, perturb)``: the vector field; ``perturb=-1`` asks for the limit from the left."""


def linear_combination(base: torch.Tensor | None, terms, coefficients) -> torch.Tensor:
    """``base + Σ_j coefficients[j] * terms[j]``, skipping zero coefficients.

    ``base=None`` means zero. The result never aliases ``base`` or a term, so the
    in-place accumulation is safe under autograd.
    """
    result = None
    for coefficient, term in zip(coefficients, terms):
        if coefficient == 0.0:
            continue
        if result is None:
            result = (
                term * coefficient if base is None else torch.add(base, term, alpha=coefficient)
            )
        else:
            result.add_(term, alpha=coefficient)
    if result is None:
        return torch.zeros_like(terms[0]) if base is None else base.clone()
    return result


@dataclass
class RungeKuttaStep:
    """Result of one attempted step from ``t`` to ``t + h``."""

    y1: torch.Tensor
    f1: torch.Tensor | None
    """``f(t + h, y1)`` when the tableau is FSAL, else None."""
    error_estimate: torch.Tensor | None
    stages: list[torch.Tensor]


def runge_kutta_step(
    tableau: ButcherTableau,
    func: StageFunction,
    t: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    step_size: float,
    *,
    t1: float | None = None,
    perturb_end: bool = False,
    with_error: bool = True,
) -> RungeKuttaStep:
    r"""Advance ``y0`` by one step of size ``h = step_size``.

    ``k_1 = f0``, ``k_i = f(t + c_i h, y0 + h Σ_{j<i} a_ij k_j)``,
    ``y1 = y0 + h Σ b_i k_i``, error estimate ``h Σ (b_i - b̂_i) k_i``.
    Stages with ``c_i = 1`` are evaluated at exactly ``t1`` (default ``t + h``),
    from the left when ``perturb_end`` (a discontinuity may sit at ``t1``).
    """
    h = step_size
    t_end = t + h if t1 is None else t1
    stages = [f0]
    a, c = tableau.a, tableau.c
    y1 = None
    for i in range(1, tableau.stages):
        y_stage = linear_combination(y0, stages, [h * a_ij for a_ij in a[i]])
        if tableau.fsal and i == tableau.stages - 1:
            y1 = y_stage
        if c[i] == 1.0:
            stages.append(func(t_end, y_stage, -1 if perturb_end else 0))
        else:
            stages.append(func(t + c[i] * h, y_stage, 0))
    if y1 is None:
        y1 = linear_combination(y0, stages, [h * b_i for b_i in tableau.b])
    f1 = stages[-1] if tableau.fsal else None
    error_estimate = None
    if with_error and tableau.b_error is not None:
        error_estimate = linear_combination(None, stages, [h * e_i for e_i in tableau.b_error])
    return RungeKuttaStep(y1=y1, f1=f1, error_estimate=error_estimate, stages=stages)


def dense_weights(tableau: ButcherTableau, theta: float) -> list[float] | None:
    """``b_i(θ)`` of the tableau's own continuous extension, or None if it has none."""
    if tableau.dense is None:
        return None
    weights = []
    for row in tableau.dense:
        power, value = theta, 0.0
        for coefficient in row:
            value += coefficient * power
            power *= theta
        weights.append(value)
    return weights


def hermite_interpolate(
    y0: torch.Tensor,
    y1: torch.Tensor,
    f0: torch.Tensor,
    f1: torch.Tensor,
    step_size: float,
    theta: float,
) -> torch.Tensor:
    """Cubic Hermite interpolation on ``[t, t + h]`` at ``t + θ h`` (third-order accurate)."""
    h = step_size
    t2, t3 = theta * theta, theta * theta * theta
    h00 = 2 * t3 - 3 * t2 + 1
    h10 = t3 - 2 * t2 + theta
    h01 = -2 * t3 + 3 * t2
    h11 = t3 - t2
    return linear_combination(None, (y0, f0, y1, f1), (h00, h * h10, h01, h * h11))


def dense_evaluate(
    tableau: ButcherTableau,
    y0: torch.Tensor,
    y1: torch.Tensor,
    stages: list[torch.Tensor],
    f1: torch.Tensor | None,
    step_size: float,
    theta: float,
) -> torch.Tensor:
    """The solution at ``t + θ h`` inside an accepted step.

    Uses the tableau's own interpolant when it has one,
    ``y0 + h Σ b_i(θ) k_i``; otherwise cubic Hermite through
    ``(y0, k_1)`` and ``(y1, f1)``.
    """
    if theta == 0.0:
        return y0
    if theta == 1.0:
        return y1
    weights = dense_weights(tableau, theta)
    if weights is not None:
        return linear_combination(y0, stages, [step_size * w for w in weights])
    if f1 is None:
        raise ValueError("Hermite dense output needs f(t1, y1)")
    return hermite_interpolate(y0, y1, stages[0], f1, step_size, theta)
