"""Classical fixed-step explicit Runge–Kutta methods."""

from __future__ import annotations

from ..tableau import ButcherTableau

EULER = ButcherTableau(name="euler", order=1, c=(0.0,), a=((),), b=(1.0,))

MIDPOINT = ButcherTableau(name="midpoint", order=2, c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0))

HEUN2 = ButcherTableau(name="heun2", order=2, c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5))

HEUN3 = ButcherTableau(
    name="heun3",
    order=3,
    c=(0.0, 1 / 3, 2 / 3),
    a=((), (1 / 3,), (0.0, 2 / 3)),
    b=(0.25, 0.0, 0.75),
)

# Kutta's 3/8 rule: the method torchdiffeq calls "rk4".
RK4_38 = ButcherTableau(
    name="rk4",
    order=4,
    c=(0.0, 1 / 3, 2 / 3, 1.0),
    a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
    b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
)

RK4_CLASSIC = ButcherTableau(
    name="rk4_classic",
    order=4,
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
)
