"""neurode: neural ordinary differential equations on PyTorch.

Fast batched solvers (Euler to Dopri8, fixed and adaptive), every serious way
of computing their gradients, and the models built on them.
"""

from . import errors
from .api import method_names, odeint, odeint_adjoint, odeint_event, solve
from .check_gradients import GradientDriftWarning, GradientReport, check_gradients
from .errors import SolverError
from .gradients.reversible import ReversibleInstabilityWarning
from .sensitivities import sensitivities
from .integrate.solution import Solution

__version__ = "0.1.0"

__all__ = [
    "GradientDriftWarning",
    "GradientReport",
    "ReversibleInstabilityWarning",
    "Solution",
    "SolverError",
    "check_gradients",
    "errors",
    "method_names",
    "odeint",
    "odeint_adjoint",
    "odeint_event",
    "sensitivities",
    "solve",
]
