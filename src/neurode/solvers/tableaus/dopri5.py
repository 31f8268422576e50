"""Dormand–Prince 5(4), FSAL (Dormand & Prince 1980), with Shampine's dense output.

The fifth-order solution is propagated; ``b̂`` is the fourth-order embedded
solution and ``b_error = b − b̂``.

Dense output is Shampine's (1986) continuous extension (HNW I §II.6): the
quartic in θ

    y(t_n + θh) = y_n + θ Δ + θ(1−θ) (h k_1 − Δ)
                  + θ²(1−θ) (2Δ − h k_1 − h k_7) + θ²(1−θ)² h Σ_i d_i k_i,

with ``Δ = y_{n+1} − y_n = h Σ_i b_i k_i``. It matches ``y_n``, ``y_{n+1}`` and
both end slopes ``k_1`` and ``k_7 = f(t_{n+1}, y_{n+1})`` (so it is C¹ across
steps), and the ``d_i`` make it fourth order for every θ ∈ [0, 1]. Expanded in
powers of θ it gives the exact rational weights ``b_i(θ) = Σ_j dense[i][j] θ^{j+1}``
below (the θ⁴ column is the ``d_i``), with ``b_i(1) = b_i``.
"""

from __future__ import annotations

from ..tableau import ButcherTableau

_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B_HAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)

# Row i: coefficients of θ, θ², θ³, θ⁴ in b_i(θ).
_DENSE = (
    (1.0, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432),
    (0.0, 0.0, 0.0, 0.0),
    (0.0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799),
    (0.0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072),
    (0.0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632),
    (0.0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844),
    (0.0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423),
)

DOPRI5 = ButcherTableau(
    name="dopri5",
    order=5,
    embedded_order=4,
    fsal=True,
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _B[:6],
    ),
    b=_B,
    b_error=tuple(b - bh for b, bh in zip(_B, _B_HAT, strict=True)),
    dense=_DENSE,
)
