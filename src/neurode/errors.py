"""Typed errors.

Bad arguments raise subclasses of :class:`ValueError` before any work is done;
failures during a solve raise subclasses of :class:`SolverError`, whose message
names the time reached and suggests a fix.
"""

from __future__ import annotations


class NeurodeInputError(ValueError):
    """Base class for bad arguments given to neurode."""


class InvalidTimesError(NeurodeInputError):
    """`t` is not a 1-D, finite, strictly monotonic tensor."""


class NonFiniteInputError(NeurodeInputError):
    """`y0` (or another input) holds NaN or infinity."""


class ShapeMismatchError(NeurodeInputError):
    """`func` returned a tensor whose shape differs from the state's."""


class DtypeMismatchError(NeurodeInputError):
    """`func` returned a dtype that cannot represent the state without loss."""


class UnknownMethodError(NeurodeInputError):
    """The solver or gradient method name is not known."""


class UnknownOptionError(NeurodeInputError):
    """An option name is not accepted by the chosen method."""


class InvalidOptionError(UnknownOptionError):
    """An option's value is not valid for the chosen method (its name is known)."""


class InvalidToleranceError(NeurodeInputError):
    """A tolerance is negative or non-finite."""


class StructureMismatchError(NeurodeInputError):
    """A tuple state and `func`'s output have different structure."""


class GradientUnavailableError(NeurodeInputError):
    """Gradients were requested through a method that cannot provide them."""


class StiffnessWarning(UserWarning):
    """An explicit method is held at its stability limit: the problem is stiff there.

    Its steps are then set by stability, not accuracy, so the solve is slow, and
    a gradient through it from there on raises :class:`StiffGradientError` in
    ``backward()``; ``method="auto"`` (switches to an implicit
    method where needed) or an implicit method such as ``"kvaerno5"`` or
    ``"rodas5p"`` solves such problems in far fewer steps. Issued once per solve.
    """


class SolverError(RuntimeError):
    """A solve failed while running. ``t`` is the time reached."""

    def __init__(self, message: str, t: float | None = None):
        super().__init__(message)
        self.t = t


class StiffGradientError(SolverError):
    """A gradient was asked through steps of an explicit method held at its stability limit.

    Raised in ``backward()`` when the gradient reaches outputs at or after the
    time ``t`` where the stiffness test fired. Direct backpropagation treats the
    step sizes as constants, but at the stability limit it is the step-size
    control that keeps the solution stable; the derivative of the steps with
    their sizes frozen is not the derivative of the solution (tsit5 on Robertson
    over [0, 0.4] at rtol 1e-4: −0.71 where the true value is 3.9e-4). Use
    ``method="auto"``, ``"rodas5p"`` or ``"kvaerno5"``.
    """


class StepSizeTooSmallError(SolverError):
    """The step-size controller asked for a step below ``min_step`` or below rounding."""


class MaxStepsExceededError(SolverError):
    """The solve needed more than ``max_num_steps`` steps."""


class NonFiniteStateError(SolverError):
    """The state or `func`'s output became NaN or infinite."""


class AdjointDivergedError(SolverError):
    """The backsolve adjoint's backward re-integration of the state left the forward solution.

    Its gradient would be wrong; ``gradient="checkpoint"`` never integrates the state
    backwards.
    """


class ReversibleInstabilityError(SolverError):
    """The reversible solver cannot give a correct result on this problem.

    Its forward solve could not keep the shadow state's gap under the tolerances,
    or its backward reconstruction of the states drifted from the forward ones: the
    dynamics contract (or grow) too fast for the coupling over the span.
    ``gradient="checkpoint"`` (or ``"direct"``) never reconstructs states.
    """
