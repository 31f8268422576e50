"""Kværnø's ESDIRK pairs 3(2), 4(3) and 5(4).

A. Kværnø, "Singly diagonally implicit Runge–Kutta methods with an explicit
first stage", BIT Numer. Math. 44 (2004) 489–502. The names are diffrax's.

Every pair has an explicit first stage (``k_1 = f(t_n, y_n)``, which is the
previous step's last stage), ``s − 1`` implicit stages sharing one diagonal
entry ``γ``, and two stiffly accurate solutions: the last stage (order p, the
one propagated) and the stage before it (order p − 1, the embedded one), both
at ``c = 1``. So ``b`` is the last row of ``A``, ``b̂`` the row before, and the
error estimate is the difference of the last two stage values. The propagated
method is L-stable.

For the 3(2) and 4(3) pairs the paper gives every coefficient in closed form as
a function of ``γ``; the order conditions hold for any ``γ``, and L-stability
(``R(∞) = 0``) picks ``γ`` as a root of

- 3(2): ``6γ³ − 18γ² + 9γ − 1 = 0``, ``γ ≈ 0.4358665215``;
- 4(3): ``24γ⁴ − 96γ³ + 72γ² − 16γ + 1 = 0``, ``γ ≈ 0.5728160625``

(the paper's ten-digit values), written here to full double precision so that
``R(∞)`` vanishes to rounding. Kværnø also gives a "3/4" variant of the second
pair that propagates the third-order stage; it needs a different ``γ``, and
this is the 4/3 one. The 5(4) pair's coefficients are the published decimals
(``γ = 0.26``).

Dense output is the cubic Hermite interpolant through both ends of the step
(:func:`~neurode.solvers.implicit_tableau.hermite_dense`), as diffrax uses for
these methods: third order for every θ.
"""

from __future__ import annotations

from ..implicit_tableau import ImplicitTableau, hermite_dense


def _lower(rows: list[list[float]], gamma: float) -> tuple[tuple[float, ...], ...]:
    """The full ``A`` from its strictly lower rows: explicit first stage, ``γ`` on the diagonal."""
    s = len(rows) + 1
    full = [[0.0] * s]
    for i, row in enumerate(rows, start=1):
        full.append([*row, gamma] + [0.0] * (s - i - 1))
    return tuple(tuple(row) for row in full)


def _esdirk_pair(
    name: str, order: int, c: tuple[float, ...], rows: list[list[float]], gamma: float
) -> ImplicitTableau:
    a = _lower(rows, gamma)
    b = a[-1]
    b_hat = a[-2]
    return ImplicitTableau(
        name=name,
        order=order,
        embedded_order=order - 1,
        c=c,
        a=a,
        b=b,
        b_error=tuple(x - y for x, y in zip(b, b_hat)),
        dense=hermite_dense(b),
        a_stable=True,
        l_stable=True,
    )


def _poly(gamma: float, *coefficients: float) -> float:
    """``Σ_k coefficients[k] γ^(n−k)``, highest power first."""
    value = 0.0
    for coefficient in coefficients:
        value = value * gamma + coefficient
    return value


# --- 3(2), 4 stages -------------------------------------------------------------------
_G3 = 0.435866521508458999416019451194
KVAERNO3 = _esdirk_pair(
    "kvaerno3",
    3,
    c=(0.0, 2 * _G3, 1.0, 1.0),
    rows=[
        [_G3],
        [(-4 * _G3**2 + 6 * _G3 - 1) / (4 * _G3), (-2 * _G3 + 1) / (4 * _G3)],
        [
            (6 * _G3 - 1) / (12 * _G3),
            -1 / ((24 * _G3 - 12) * _G3),
            (-6 * _G3**2 + 6 * _G3 - 1) / (6 * _G3 - 3),
        ],
    ],
    gamma=_G3,
)

# --- 4(3), 5 stages -------------------------------------------------------------------
_G4 = 0.572816062482134855408001384977


def _p4(*coefficients: float) -> float:
    return _poly(_G4, *coefficients)


_A31 = _p4(144, -180, 81, -15, 1) * _G4 / _p4(12, -6, 1) ** 2
_A32 = _p4(-36, 39, -15, 2) * _G4 / _p4(12, -6, 1) ** 2
KVAERNO4 = _esdirk_pair(
    "kvaerno4",
    4,
    c=(0.0, 2 * _G4, _G4 + _A31 + _A32, 1.0, 1.0),
    rows=[
        [_G4],
        [_A31, _A32],
        [
            _p4(-144, 396, -330, 117, -18, 1) / (12 * _G4**2 * _p4(12, -9, 2)),
            _p4(72, -126, 69, -15, 1) / (12 * _G4**2 * _p4(3, -1)),
            (_p4(-6, 6, -1) * _p4(12, -6, 1) ** 2) / (12 * _G4**2 * _p4(12, -9, 2) * _p4(3, -1)),
        ],
        [
            _p4(288, -312, 120, -18, 1) / (48 * _G4**2 * _p4(12, -9, 2)),
            _p4(24, -12, 1) / (48 * _G4**2 * _p4(3, -1)),
            -(_p4(12, -6, 1) ** 3) / (48 * _G4**2 * _p4(3, -1) * _p4(12, -9, 2) * _p4(6, -6, 1)),
            _p4(-24, 36, -12, 1) / _p4(24, -24, 4),
        ],
    ],
    gamma=_G4,
)

# --- 5(4), 7 stages -------------------------------------------------------------------
_G5 = 0.26
KVAERNO5 = _esdirk_pair(
    "kvaerno5",
    5,
    c=(
        0.0,
        0.52,
        1.230333209967908,
        0.8957659843500759,
        0.43639360985864756,
        1.0,
        1.0,
    ),
    rows=[
        [_G5],
        [0.13, 0.84033320996790809],
        [0.22371961478320505, 0.47675532319799699, -0.06470895363112615],
        [0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998],
        [
            0.13855640231268224,
            0.0,
            -0.04245337201752043,
            0.02446657898003141,
            0.61943039072480676,
        ],
        [
            0.13659751177640291,
            0.0,
            -0.05496908796538376,
            -0.04118626728321046,
            0.62993304899016403,
            0.06962479448202728,
        ],
    ],
    gamma=_G5,
)
