"""Low-order embedded pairs: adaptive Heun 2(1), Fehlberg 2(1), Bogacki–Shampine 3(2)."""

from __future__ import annotations

from ..tableau import ButcherTableau

ADAPTIVE_HEUN = ButcherTableau(
    name="adaptive_heun",
    order=2,
    embedded_order=1,
    c=(0.0, 1.0),
    a=((), (1.0,)),
    b=(0.5, 0.5),
    b_error=(0.5 - 1.0, 0.5),
)

# Fehlberg's RKF 2(1): the second-order solution is propagated.
FEHLBERG2 = ButcherTableau(
    name="fehlberg2",
    order=2,
    embedded_order=1,
    c=(0.0, 0.5, 1.0),
    a=((), (0.5,), (1 / 256, 255 / 256)),
    b=(1 / 512, 255 / 256, 1 / 512),
    b_error=(1 / 512 - 1 / 256, 0.0, 1 / 512),
)

BOSH3 = ButcherTableau(
    name="bosh3",
    order=3,
    embedded_order=2,
    fsal=True,
    c=(0.0, 0.5, 0.75, 1.0),
    a=((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    b_error=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
)
