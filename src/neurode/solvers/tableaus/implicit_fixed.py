"""Fixed-step implicit Runge–Kutta methods under torchdiffeq's names.

Coefficients from Hairer & Wanner, *Solving ODEs II* (HW II), §IV.5 (collocation
methods: Gauss, Radau IIA, Lobatto IIIA) and §IV.6 (SDIRK), and Hosea &
Shampine, "Analysis and implementation of TR-BDF2", Appl. Numer. Math. 20 (1996).

- ``implicit_euler``: Radau IIA with one stage; order 1, L-stable.
- ``implicit_midpoint``: Gauss with one stage; order 2, A-stable, symmetric.
- ``trapezoid``: Lobatto IIIA with two stages (its first stage is explicit);
  order 2, A-stable, ``R(∞) = −1``.
- ``gl4``, ``gl6``: Gauss–Legendre with 2 and 3 stages; order 4 and 6, A-stable.
  The nodes of ``gl4`` are ``1/2 ∓ √3/6`` (torchdiffeq's master repeats the first
  one, which makes its method first order).
- ``radauIIA3``, ``radauIIA5``: Radau IIA with 2 and 3 stages; order 3 and 5,
  L-stable, stiffly accurate.
- ``sdirk2``: Alexander's two-stage SDIRK, ``γ = 1 − √2/2``; order 2,
  L-stable, stiffly accurate.
- ``trbdf2``: the trapezoidal rule to ``c = 2γ`` then BDF2, as a three-stage
  ESDIRK with ``γ = 1 − √2/2``; order 2, L-stable, stiffly accurate, with
  Hosea & Shampine's third-order companion as the embedded method.

Dense output: the collocation polynomial for the collocation methods (of order
``s``, the number of stages, at every θ); the cubic Hermite interpolant for
``trbdf2``; for ``sdirk2`` the quadratic weights ``b_i(θ)`` with
``Σ b_i(θ) = θ`` and ``Σ b_i(θ) c_i = θ²/2`` (second order at every θ), which
equal ``b`` at θ = 1 exactly because ``2(1 − γ)² = 1``.
"""

from __future__ import annotations

import math

from ..implicit_tableau import ImplicitTableau, hermite_dense

_SQRT2 = math.sqrt(2.0)
_SQRT3 = math.sqrt(3.0)
_SQRT6 = math.sqrt(6.0)
_SQRT15 = math.sqrt(15.0)

IMPLICIT_EULER = ImplicitTableau(
    name="implicit_euler",
    order=1,
    c=(1.0,),
    a=((1.0,),),
    b=(1.0,),
    dense=((1.0,),),
    a_stable=True,
    l_stable=True,
)

IMPLICIT_MIDPOINT = ImplicitTableau(
    name="implicit_midpoint",
    order=2,
    c=(0.5,),
    a=((0.5,),),
    b=(1.0,),
    dense=((1.0,),),
    a_stable=True,
)

TRAPEZOID = ImplicitTableau(
    name="trapezoid",
    order=2,
    c=(0.0, 1.0),
    a=((0.0, 0.0), (0.5, 0.5)),
    b=(0.5, 0.5),
    dense=((1.0, -0.5), (0.0, 0.5)),
    a_stable=True,
)

GL4 = ImplicitTableau(
    name="gl4",
    order=4,
    c=(0.5 - _SQRT3 / 6, 0.5 + _SQRT3 / 6),
    a=(
        (0.25, 0.25 - _SQRT3 / 6),
        (0.25 + _SQRT3 / 6, 0.25),
    ),
    b=(0.5, 0.5),
    dense=(
        (0.5 + _SQRT3 / 2, -_SQRT3 / 2),
        (0.5 - _SQRT3 / 2, _SQRT3 / 2),
    ),
    a_stable=True,
)

GL6 = ImplicitTableau(
    name="gl6",
    order=6,
    c=(0.5 - _SQRT15 / 10, 0.5, 0.5 + _SQRT15 / 10),
    a=(
        (5 / 36, 2 / 9 - _SQRT15 / 15, 5 / 36 - _SQRT15 / 30),
        (5 / 36 + _SQRT15 / 24, 2 / 9, 5 / 36 - _SQRT15 / 24),
        (5 / 36 + _SQRT15 / 30, 2 / 9 + _SQRT15 / 15, 5 / 36),
    ),
    b=(5 / 18, 4 / 9, 5 / 18),
    dense=(
        (5 / 6 + _SQRT15 / 6, -5 / 3 - _SQRT15 / 6, 10 / 9),
        (-2 / 3, 10 / 3, -20 / 9),
        (5 / 6 - _SQRT15 / 6, -5 / 3 + _SQRT15 / 6, 10 / 9),
    ),
    a_stable=True,
)

RADAU_IIA3 = ImplicitTableau(
    name="radauIIA3",
    order=3,
    c=(1 / 3, 1.0),
    a=((5 / 12, -1 / 12), (3 / 4, 1 / 4)),
    b=(3 / 4, 1 / 4),
    dense=((3 / 2, -3 / 4), (-1 / 2, 3 / 4)),
    a_stable=True,
    l_stable=True,
)

RADAU_IIA5 = ImplicitTableau(
    name="radauIIA5",
    order=5,
    c=((4 - _SQRT6) / 10, (4 + _SQRT6) / 10, 1.0),
    a=(
        ((88 - 7 * _SQRT6) / 360, (296 - 169 * _SQRT6) / 1800, (-2 + 3 * _SQRT6) / 225),
        ((296 + 169 * _SQRT6) / 1800, (88 + 7 * _SQRT6) / 360, (-2 - 3 * _SQRT6) / 225),
        ((16 - _SQRT6) / 36, (16 + _SQRT6) / 36, 1 / 9),
    ),
    b=((16 - _SQRT6) / 36, (16 + _SQRT6) / 36, 1 / 9),
    dense=(
        (1 / 3 + _SQRT6 / 2, 2 / 3 - 13 * _SQRT6 / 12, -5 / 9 + 5 * _SQRT6 / 9),
        (1 / 3 - _SQRT6 / 2, 2 / 3 + 13 * _SQRT6 / 12, -5 / 9 - 5 * _SQRT6 / 9),
        (1 / 3, -4 / 3, 10 / 9),
    ),
    a_stable=True,
    l_stable=True,
)

_G_SDIRK2 = 1.0 - _SQRT2 / 2
SDIRK2 = ImplicitTableau(
    name="sdirk2",
    order=2,
    c=(_G_SDIRK2, 1.0),
    a=((_G_SDIRK2, 0.0), (1.0 - _G_SDIRK2, _G_SDIRK2)),
    b=(1.0 - _G_SDIRK2, _G_SDIRK2),
    # b_1(θ) = (θ − θ²/2) / (1 − γ), b_2(θ) = θ − b_1(θ).
    dense=(
        (1 / (1 - _G_SDIRK2), -0.5 / (1 - _G_SDIRK2)),
        (1 - 1 / (1 - _G_SDIRK2), 0.5 / (1 - _G_SDIRK2)),
    ),
    a_stable=True,
    l_stable=True,
)

_G_TRBDF2 = 1.0 - _SQRT2 / 2
_W_TRBDF2 = _SQRT2 / 4
_B_TRBDF2 = (_W_TRBDF2, _W_TRBDF2, _G_TRBDF2)
# Hosea & Shampine's third-order companion: b̂ = ((1 − w)/3, (3w + 1)/3, d/3), d = γ.
_B_HAT_TRBDF2 = ((1 - _W_TRBDF2) / 3, (3 * _W_TRBDF2 + 1) / 3, _G_TRBDF2 / 3)
TRBDF2 = ImplicitTableau(
    name="trbdf2",
    order=2,
    embedded_order=3,
    c=(0.0, 2 * _G_TRBDF2, 1.0),
    a=(
        (0.0, 0.0, 0.0),
        (_G_TRBDF2, _G_TRBDF2, 0.0),
        _B_TRBDF2,
    ),
    b=_B_TRBDF2,
    b_error=tuple(x - y for x, y in zip(_B_TRBDF2, _B_HAT_TRBDF2)),
    dense=hermite_dense(_B_TRBDF2),
    a_stable=True,
    l_stable=True,
)
