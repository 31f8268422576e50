"""Adams–Bashforth and Adams–Moulton linear multistep formulas.

Both integrate the polynomial ``p`` interpolating past values of ``f`` over one
step ``[t_n, t_n + h]`` (HNW I §III.1):

    y_{n+1} = y_n + h Σ_j β_j f_j,      β_j = (1/h) ∫_{t_n}^{t_n+h} L_j(t) dt,

with ``L_j`` the Lagrange basis polynomials on the interpolation nodes.

- Adams–Bashforth of order ``p`` (explicit) interpolates ``f_n, f_{n-1}, …,
  f_{n-p+1}``.
- Adams–Moulton of order ``p`` (implicit) interpolates ``f_{n+1}, f_n, …,
  f_{n-p+2}``.

On a uniform grid the weights are the classical constants, computed here once
in exact rational arithmetic (AB4: ``(55, -59, 37, -9)/24``; AM4:
``(9, 19, -5, 1)/24``). On a non-uniform grid they follow from the actual node
positions, so the formulas keep their order on any grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from functools import cache

import torch

from .runge_kutta import linear_combination

MAX_ORDER = 12
"""Highest order offered: beyond it the weights grow large and the formulas lose stability."""

_UNIFORM_TOLERANCE = 1e-12
"""Node positions (in units of ``h``) this close to integers count as a uniform grid."""


def integrated_lagrange_weights(nodes: Sequence) -> list:
    """``∫_0^1 L_j(s) ds`` for the Lagrange basis on ``nodes`` (positions in units of ``h``).

    Works in any field: :class:`~fractions.Fraction` nodes give exact weights,
    floats give floating-point ones. The weights integrate every polynomial of
    degree below ``len(nodes)`` exactly over ``[0, 1]``.
    """
    weights = []
    one = nodes[0] ** 0  # 1 in the field of the nodes
    for j, x_j in enumerate(nodes):
        # Coefficients (lowest degree first) of Π_{m≠j} (s - x_m) / (x_j - x_m).
        poly = [one]
        denominator = one
        for m, x_m in enumerate(nodes):
            if m == j:
                continue
            # Out of place: the nodes may be tensors (differentiated grid times).
            shifted = [0] + poly
            for k, coefficient in enumerate(poly):
                shifted[k] = shifted[k] - x_m * coefficient
            poly = shifted
            denominator = denominator * (x_j - x_m)
        integral = sum(coefficient / (k + 1) for k, coefficient in enumerate(poly))
        weights.append(integral / denominator)
    return weights


def _check_order(order: int) -> None:
    if not 1 <= order <= MAX_ORDER:
        raise ValueError(f"Adams order must be between 1 and {MAX_ORDER}, got {order}")


@cache
def adams_bashforth_weights(order: int) -> tuple[float, ...]:
    """Uniform-grid weights ``β_0..β_{p-1}`` of ``f_n, f_{n-1}, …`` (order ``p``)."""
    _check_order(order)
    exact = integrated_lagrange_weights([Fraction(-j) for j in range(order)])
    return tuple(float(w) for w in exact)


@cache
def adams_moulton_weights(order: int) -> tuple[float, ...]:
    """Uniform-grid weights ``β_0..β_{p-1}`` of ``f_{n+1}, f_n, …`` (order ``p``)."""
    _check_order(order)
    exact = integrated_lagrange_weights([Fraction(1 - j) for j in range(order)])
    return tuple(float(w) for w in exact)


def _node_positions(times: Sequence[float], t_n: float, h: float) -> list[float]:
    return [(s - t_n) / h for s in times]


def _is_uniform(positions: Sequence[float], first: int) -> bool:
    return all(
        abs(x - (first - j)) <= _UNIFORM_TOLERANCE * max(1.0, abs(x))
        for j, x in enumerate(positions)
    )


def bashforth_weights_on_grid(past_times: Sequence[float], t_next: float) -> tuple[float, ...]:
    """Adams–Bashforth weights for ``past_times = (t_n, t_{n-1}, …)`` and the step to ``t_next``.

    The order is ``len(past_times)``.
    """
    t_n = past_times[0]
    positions = _node_positions(past_times, t_n, t_next - t_n)
    if _is_uniform(positions, 0):
        return adams_bashforth_weights(len(positions))
    return tuple(integrated_lagrange_weights(positions))


def moulton_weights_on_grid(past_times: Sequence[float], t_next: float) -> tuple[float, ...]:
    """Adams–Moulton weights of ``f(t_next), f(t_n), f(t_{n-1}), …`` for ``past_times = (t_n, …)``.

    The order is ``len(past_times) + 1``.
    """
    t_n = past_times[0]
    positions = _node_positions([t_next, *past_times], t_n, t_next - t_n)
    if _is_uniform(positions, 1):
        return adams_moulton_weights(len(positions))
    return tuple(integrated_lagrange_weights(positions))


def adams_bashforth_step(
    y: torch.Tensor,
    past_derivatives: Sequence[torch.Tensor],
    weights: Sequence[float],
    step_size: float,
) -> torch.Tensor:
    """``y_n + h Σ_j β_j f_{n-j}`` (the explicit step, or the predictor)."""
    return linear_combination(y, past_derivatives, [step_size * w for w in weights])


def adams_moulton_base(
    y: torch.Tensor,
    past_derivatives: Sequence[torch.Tensor],
    weights: Sequence[float],
    step_size: float,
) -> torch.Tensor:
    """The known part ``y_n + h Σ_{j≥1} β_j f_{n+1-j}`` of the Adams–Moulton formula.

    The corrector is then ``base + h β_0 f(t_{n+1}, y_{n+1})``.
    """
    return linear_combination(y, past_derivatives, [step_size * w for w in weights[1:]])


__all__ = [
    "MAX_ORDER",
    "adams_bashforth_step",
    "adams_bashforth_weights",
    "adams_moulton_base",
    "adams_moulton_weights",
    "bashforth_weights_on_grid",
    "integrated_lagrange_weights",
    "moulton_weights_on_grid",
]
