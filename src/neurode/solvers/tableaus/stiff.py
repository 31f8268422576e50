"""Registry of the implicit Runge–Kutta and Rosenbrock tableaus by method name.

Kept apart from the explicit registry (:data:`neurode.solvers.tableaus.TABLEAUS`)
because these need a different stepper: :mod:`neurode.solvers.dirk` for the
diagonally implicit ones, :mod:`neurode.solvers.fully_implicit` for the others,
:mod:`neurode.solvers.rosenbrock` for the Rosenbrock methods.
"""

from __future__ import annotations

from ..implicit_tableau import ImplicitTableau
from ..rosenbrock_tableau import RosenbrockTableau
from .implicit_fixed import (
    GL4,
    GL6,
    IMPLICIT_EULER,
    IMPLICIT_MIDPOINT,
    RADAU_IIA3,
    RADAU_IIA5,
    SDIRK2,
    TRAPEZOID,
    TRBDF2,
)
from .kvaerno import KVAERNO3, KVAERNO4, KVAERNO5
from .rodas import RODAS5, RODAS5P

IMPLICIT_TABLEAUS: dict[str, ImplicitTableau] = {
    t.name: t
    for t in (
        IMPLICIT_EULER,
        IMPLICIT_MIDPOINT,
        TRAPEZOID,
        GL4,
        GL6,
        RADAU_IIA3,
        RADAU_IIA5,
        SDIRK2,
        TRBDF2,
        KVAERNO3,
        KVAERNO4,
        KVAERNO5,
    )
}

ROSENBROCK_TABLEAUS: dict[str, RosenbrockTableau] = {t.name: t for t in (RODAS5, RODAS5P)}

__all__ = ["IMPLICIT_TABLEAUS", "ROSENBROCK_TABLEAUS", "ImplicitTableau", "RosenbrockTableau"]
