"""The implicit and Rosenbrock method names, their options, and their method specs.

Adaptive: ``kvaerno3``, ``kvaerno4``, ``kvaerno5`` (Kværnø's L-stable ESDIRK
pairs), ``rodas5``, ``rodas5p`` (Rosenbrock). Fixed grid, with torchdiffeq
master's names and semantics (``options={"step_size": h}``, or the save times as
the grid; linear or cubic interpolation in between): ``implicit_euler``,
``implicit_midpoint``, ``trapezoid``, ``radauIIA3``, ``radauIIA5``, ``gl4``,
``gl6``, ``sdirk2``, ``trbdf2``. Their stage equations are solved by Newton's
method to the solve's ``rtol``/``atol`` (torchdiffeq's ``max_iters`` bounds the
iterations; a step that does not converge raises
:class:`~neurode.errors.SolverError`, since a fixed grid cannot retry it).

Options besides the common adaptive or fixed-grid ones:

- ``jacobian``: ``jacobian(t, y) -> ∂func/∂y`` called like ``func`` (``(N, N)``
  for the flattened state; ``(B, d, d)``, one block per row, with
  ``batch="per_sample"``, or in the joint mode for rows that do not interact);
  or ``"reverse"`` (default: one evaluation and a batched backward pass) /
  ``"forward"`` (``torch.func.jacfwd``) to pick the mode of automatic
  differentiation (joint mode: row blocks when the rows are found independent,
  :func:`~neurode.solvers.jacobian.row_block_jacobian`);
- ``linear_solver``: ``"lu"`` (default: dense LU, batched per row) or
  ``"krylov"`` (matrix-free GMRES on Jacobian–vector products, for states
  whose dense Jacobian does not fit), or a dict of GMRES settings
  ``{"rtol": 1e-3, "restart": 20, "max_restarts": 2}`` (implies Krylov);
  Rosenbrock methods need the exact Jacobian and take ``"lu"`` only;
- ``autonomous`` (Rosenbrock methods and ``auto``): ``True`` declares that
  ``func`` does not depend on ``t``, which saves the evaluation for ``∂f/∂t``
  in every step;
- ``predictive`` (adaptive methods, default ``True``): bound each proposed step
  size by Gustafsson's predictive rule as well
  (:mod:`neurode.integrate.controller`); ``False`` leaves the PID rule alone.

``auto`` (:mod:`neurode.integrate.auto_switch`) starts with ``tsit5`` and
switches to ``stiff_method`` (``"rodas5p"``, default, or ``"kvaerno5"``) where
the problem is stiff, and back; it takes the options of both.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidOptionError
from ..solvers.linear_solve import KrylovSettings
from ..solvers.newton import DEFAULT_MAX_ITERATIONS
from ..solvers.tableaus.stiff import IMPLICIT_TABLEAUS, ROSENBROCK_TABLEAUS
from .auto_switch import AutoSwitchMethod
from .implicit_stepper import ImplicitRungeKuttaMethod, StageSolverSettings
from .methods import ADAPTIVE_OPTIONS, FIXED_OPTIONS, BuildContext, register_method
from .problem import MethodSpec
from .rosenbrock_stepper import RosenbrockMethod

STAGE_OPTIONS = frozenset({"jacobian", "linear_solver"})
ADAPTIVE_STAGE_OPTIONS = STAGE_OPTIONS | {"predictive"}
IMPLICIT_ADAPTIVE_NAMES = ("kvaerno3", "kvaerno4", "kvaerno5")
ROSENBROCK_NAMES = ("rodas5", "rodas5p")
IMPLICIT_FIXED_NAMES = (
    "implicit_euler",
    "implicit_midpoint",
    "trapezoid",
    "radauIIA3",
    "radauIIA5",
    "gl4",
    "gl6",
    "sdirk2",
    "trbdf2",
)


def stage_settings(
    options: dict[str, Any],
    context: BuildContext,
    *,
    rtol=None,
    atol=None,
    krylov_allowed: bool = True,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> StageSolverSettings:
    """The stage-solver options, checked."""
    jacobian = options.get("jacobian", "reverse")
    method = "reverse"
    user = None
    if isinstance(jacobian, str):
        if jacobian not in ("forward", "reverse"):
            raise InvalidOptionError(
                f"jacobian must be a callable jacobian(t, y), 'forward' or 'reverse'; "
                f"got {jacobian!r}"
            )
        method = jacobian
    elif callable(jacobian):
        user = jacobian
    else:
        raise InvalidOptionError(
            f"jacobian must be a callable jacobian(t, y), 'forward' or 'reverse'; "
            f"got {type(jacobian).__name__}"
        )
    krylov = _linear_solver(options.get("linear_solver", "lu"))
    if krylov is not None and not krylov_allowed:
        raise InvalidOptionError(
            "Rosenbrock methods need the exact Jacobian factored: linear_solver must be 'lu'; "
            "for matrix-free solves use kvaerno3/4/5"
        )
    if krylov is not None and user is not None:
        raise InvalidOptionError(
            "a jacobian callable and linear_solver='krylov' exclude each other (Krylov "
            "solves use Jacobian-vector products)"
        )
    predictive = options.get("predictive", True)
    if not isinstance(predictive, bool):
        raise InvalidOptionError(f"predictive must be True or False, got {predictive!r}")
    return StageSolverSettings(
        rtol=context.rtol if rtol is None else rtol,
        atol=context.atol if atol is None else atol,
        jacobian=user,
        jacobian_method=method,
        krylov=krylov,
        reversed_time=context.reversed_time,
        max_iterations=max_iterations,
        predictive=predictive,
    )


def _linear_solver(value: Any) -> KrylovSettings | None:
    if value == "lu":
        return None
    if value in ("krylov", "gmres"):
        return KrylovSettings()
    if isinstance(value, KrylovSettings):
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"rtol", "restart", "max_restarts"})
        if unknown:
            raise InvalidOptionError(
                f"linear_solver settings take rtol, restart and max_restarts, not "
                f"{', '.join(unknown)}"
            )
        settings = KrylovSettings(**value)
        if not (0 < settings.rtol < 1) or settings.restart < 1 or settings.max_restarts < 0:
            raise InvalidOptionError(
                f"linear_solver needs 0 < rtol < 1, restart >= 1, max_restarts >= 0; got {value}"
            )
        return settings
    raise InvalidOptionError(
        f"linear_solver must be 'lu', 'krylov' or a dict of GMRES settings, got {value!r}"
    )


def _autonomous(options: dict[str, Any]) -> bool:
    value = options.get("autonomous", False)
    if not isinstance(value, bool):
        raise InvalidOptionError(f"autonomous must be True or False, got {value!r}")
    return value


def build_implicit_adaptive(name: str, options: dict[str, Any], context: BuildContext):
    tableau = IMPLICIT_TABLEAUS[name]
    settings = stage_settings(options, context)
    return MethodSpec(
        name=name,
        kind="adaptive",
        stepper=lambda: ImplicitRungeKuttaMethod(tableau, settings),
        adaptive=context.adaptive_options(options),
    )


def build_rosenbrock(name: str, options: dict[str, Any], context: BuildContext):
    tableau = ROSENBROCK_TABLEAUS[name]
    settings = stage_settings(options, context, krylov_allowed=False)
    autonomous = _autonomous(options)
    return MethodSpec(
        name=name,
        kind="adaptive",
        stepper=lambda: RosenbrockMethod(tableau, settings, autonomous=autonomous),
        adaptive=context.adaptive_options(options),
    )


def build_implicit_fixed(name: str, options: dict[str, Any], context: BuildContext):
    tableau = IMPLICIT_TABLEAUS[name]
    max_iters = options.get("max_iters", DEFAULT_MAX_ITERATIONS)
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise InvalidOptionError(f"max_iters must be a positive integer, got {max_iters!r}")
    settings = stage_settings(options, context, max_iterations=max_iters)
    fixed = context.fixed_options({k: v for k, v in options.items() if k not in _FIXED_EXTRA})
    return MethodSpec(
        name=name,
        kind="fixed",
        stepper=lambda: ImplicitRungeKuttaMethod(
            tableau, settings, interpolation=fixed.interp, with_error=False
        ),
        fixed=fixed,
    )


_FIXED_EXTRA = STAGE_OPTIONS | {"max_iters"}

AUTO_IMPLICIT = ("rodas5p", "kvaerno5")


def build_auto(name: str, options: dict[str, Any], context: BuildContext):
    """``auto``: tsit5, and ``stiff_method`` (default rodas5p) where the problem is stiff."""
    options = dict(options)
    implicit = options.pop("stiff_method", AUTO_IMPLICIT[0])
    if implicit not in AUTO_IMPLICIT:
        raise InvalidOptionError(
            f"stiff_method must be one of {', '.join(AUTO_IMPLICIT)}, got {implicit!r}"
        )
    autonomous = _autonomous(options)
    rosenbrock = implicit in ROSENBROCK_TABLEAUS
    settings = stage_settings(options, context, krylov_allowed=not rosenbrock)

    def stepper() -> AutoSwitchMethod:
        if rosenbrock:
            inner = RosenbrockMethod(ROSENBROCK_TABLEAUS[implicit], settings, autonomous=autonomous)
        else:
            inner = ImplicitRungeKuttaMethod(IMPLICIT_TABLEAUS[implicit], settings)
        return AutoSwitchMethod(inner, user_time=context.user_time)

    # Not replayable: a replay starts each interval on the explicit side, whatever side
    # the forward solve was on there (its steps would be unstable on a stiff stretch).
    return MethodSpec(
        name=name,
        kind="adaptive",
        stepper=stepper,
        adaptive=context.adaptive_options(options),
        replayable=False,
    )


for _name in IMPLICIT_ADAPTIVE_NAMES:
    register_method(_name, ADAPTIVE_OPTIONS | ADAPTIVE_STAGE_OPTIONS, build_implicit_adaptive)
for _name in ROSENBROCK_NAMES:
    register_method(
        _name, ADAPTIVE_OPTIONS | ADAPTIVE_STAGE_OPTIONS | {"autonomous"}, build_rosenbrock
    )
for _name in IMPLICIT_FIXED_NAMES:
    register_method(_name, FIXED_OPTIONS | _FIXED_EXTRA, build_implicit_fixed)
register_method(
    "auto", ADAPTIVE_OPTIONS | ADAPTIVE_STAGE_OPTIONS | {"autonomous", "stiff_method"}, build_auto
)

__all__ = [
    "AUTO_IMPLICIT",
    "IMPLICIT_ADAPTIVE_NAMES",
    "IMPLICIT_FIXED_NAMES",
    "ROSENBROCK_NAMES",
    "STAGE_OPTIONS",
    "build_implicit_adaptive",
    "build_implicit_fixed",
    "build_rosenbrock",
    "stage_settings",
]
