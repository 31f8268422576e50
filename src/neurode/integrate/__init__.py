"""The integration layer: the one loop every method plugs into.

- :mod:`~neurode.integrate.loop`: the loop (plan, attempt, decide, save, record).
- :mod:`~neurode.integrate.controller`: step sizes (adaptive PID, per row, fixed grid).
- :mod:`~neurode.integrate.error_norm`, :mod:`~neurode.integrate.initial_step`: the
  error test and Hairer's first step.
- :mod:`~neurode.integrate.stepper`: the stepper contract;
  :mod:`~neurode.integrate.runge_kutta_stepper`, :mod:`~neurode.integrate.multistep`
  and the other ``*_stepper`` modules: the methods as steppers.
- :mod:`~neurode.integrate.dense_output`, :mod:`~neurode.integrate.saving`,
  :mod:`~neurode.integrate.events`: what happens inside an accepted step.
- :mod:`~neurode.integrate.problem`, :mod:`~neurode.integrate.methods`: the problem as
  the solver sees it, and method names with their options.
- :mod:`~neurode.integrate.per_sample`, :mod:`~neurode.integrate.scipy_solver`,
  :mod:`~neurode.integrate.solution`, :mod:`~neurode.integrate.tuple_state`,
  :mod:`~neurode.integrate.tolerances`.

This layer imports only :mod:`neurode.solvers` and :mod:`neurode.errors`.
"""

from . import multistep as _multistep  # noqa: F401  (registers the Adams family)
from . import scipy_solver as _scipy_solver  # noqa: F401  (registers scipy_solver)
from . import stiff_methods as _stiff_methods  # noqa: F401  (registers implicit methods)
from .dense_output import Segment
from .loop import Callbacks, Trajectory, integrate
from .methods import build_method, method_names
from .problem import AdaptiveOptions, FixedGridOptions, MethodSpec, ODEProblem
from .solution import Solution

__all__ = [
    "AdaptiveOptions",
    "Callbacks",
    "FixedGridOptions",
    "MethodSpec",
    "ODEProblem",
    "Segment",
    "Solution",
    "Trajectory",
    "build_method",
    "integrate",
    "method_names",
]
