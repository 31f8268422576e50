"""Registry of every explicit Runge–Kutta tableau by method name."""

from __future__ import annotations

from ..tableau import ButcherTableau
from .dopri5 import DOPRI5
from .dopri8 import DOPRI8
from .fixed import EULER, HEUN2, HEUN3, MIDPOINT, RK4_38, RK4_CLASSIC
from .low_order_adaptive import ADAPTIVE_HEUN, BOSH3, FEHLBERG2
from .tsit5 import TSIT5

TABLEAUS: dict[str, ButcherTableau] = {
    t.name: t
    for t in (
        EULER,
        MIDPOINT,
        HEUN2,
        HEUN3,
        RK4_38,
        RK4_CLASSIC,
        ADAPTIVE_HEUN,
        FEHLBERG2,
        BOSH3,
        DOPRI5,
        TSIT5,
        DOPRI8,
    )
}

__all__ = ["TABLEAUS", "ButcherTableau"]
