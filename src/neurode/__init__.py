"""neurode: neural ordinary differential equations on PyTorch.

Fast batched solvers (Euler to Dopri8, fixed and adaptive), every serious way
of computing their gradients, and the models built on them.
"""

from . import errors
from .api import method_names, odeint, odeint_adjoint, odeint_event, solve
from .errors import SolverError
from .solution import Solution

__version__ = "0.1.0"

__all__ = [
    "Solution",
    "SolverError",
    "errors",
    "method_names",
    "odeint",
    "odeint_adjoint",
    "odeint_event",
    "solve",
]
