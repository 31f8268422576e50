"""neurode: neural ordinary differential equations on PyTorch.

Fast batched solvers (Euler to Dopri8, fixed and adaptive), every serious way
of computing their gradients, and the models built on them.
"""

from . import errors
from ._version import __version__
from .api import method_names, odeint, odeint_adjoint, odeint_dense, odeint_event, solve
from .check_gradients import GradientDriftWarning, GradientReport, check_gradients
from .errors import SolverError, StiffnessWarning
from .gradients.reversible import ReversibleInstabilityWarning
from .integrate.solution import Solution
from .sensitivities import sensitivities

__all__ = [
    "__version__",
    "GradientDriftWarning",
    "GradientReport",
    "ReversibleInstabilityWarning",
    "Solution",
    "SolverError",
    "StiffnessWarning",
    "check_gradients",
    "errors",
    "method_names",
    "odeint",
    "odeint_adjoint",
    "odeint_dense",
    "odeint_event",
    "sensitivities",
    "solve",
]
