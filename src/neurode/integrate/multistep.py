"""The fixed-grid Adams loop: ``explicit_adams``, ``implicit_adams`` and ``fixed_adams``.

A method of order ``p`` needs ``f`` at the ``p`` latest grid points (``p - 1``
for the corrector), so the first ``p - 1`` steps are taken by a one-step
Runge–Kutta method of order at least ``p`` (Kutta's 3/8 rule for ``p <= 4``,
the eighth-order Dormand–Prince weights above). After that:

- ``explicit_adams`` takes Adams–Bashforth steps: one evaluation of ``f`` per step.
- ``implicit_adams`` / ``fixed_adams`` predict with Adams–Bashforth and correct
  with Adams–Moulton of the same order, P(EC)^m E: the corrector is repeated
  until two successive iterates agree within ``rtol``/``atol`` in the max norm,
  at most ``max_iters`` times (``max_iters=1`` is the classic PECE scheme; a
  corrector that has not converged after ``max_iters > 1`` iterations warns).
  ``explicit_adams`` accepts ``max_iters`` for torchdiffeq compatibility and
  ignores it.

Adams runs as a stepper of the one integration loop on a fixed grid: states at
the requested times are interpolated linearly between grid points (or by cubic
Hermite with ``interp="cubic"``), as for fixed-grid Runge–Kutta methods, and
events work the same way. ``max_order`` is the order of the formulas (default 4). In
torchdiffeq the same option counts one more and raises the order step by step
from a Runge–Kutta start; here the order is fixed from the first multistep step.
"""

from __future__ import annotations

import warnings
from collections import deque
from typing import Any

import torch

from ..errors import InvalidOptionError
from ..solvers.adams import (
    MAX_ORDER,
    adams_bashforth_step,
    adams_moulton_base,
    bashforth_weights_on_grid,
    moulton_weights_on_grid,
)
from ..solvers.runge_kutta import RungeKuttaStepper
from ..solvers.tableau import ButcherTableau
from ..solvers.tableaus import TABLEAUS
from .dense_output import Segment, interpolate_between_ends
from .methods import BuildContext, register_method
from .problem import MethodSpec
from .stepper import VectorField

ADAMS_OPTIONS = frozenset(
    {
        "step_size",
        "grid_constructor",
        "perturb",
        "interp",
        "max_iters",
        "max_order",
        "norm",
        "dtype",
        "max_num_steps",
    }
)
"""Options of the Adams methods (``norm`` and ``dtype`` are accepted for torchdiffeq
compatibility; the corrector's convergence test always uses the max norm)."""

DEFAULT_ORDER = 4
DEFAULT_MAX_ITERS = 4


def _startup_tableau(order: int) -> ButcherTableau:
    return TABLEAUS["rk4"] if order <= 4 else TABLEAUS["dopri8"]


def _corrector_converged(
    previous: torch.Tensor,
    current: torch.Tensor,
    rtol: float | torch.Tensor,
    atol: float | torch.Tensor,
) -> bool:
    """``max |Δ| / (atol + rtol · max(|previous|, |current|)) < 1``."""
    with torch.no_grad():
        scale = torch.maximum(previous.abs(), current.abs()).mul_(rtol).add_(atol)
        ratio = ((current - previous).abs() / scale).max()
    return bool(ratio < 1)


class AdamsAttempt:
    """One Adams step; its dense output interpolates between the grid points."""

    converged = True
    error_terms = ()

    def __init__(self, method, t0, t1, h, y0, y1, f0, end_on_jump):
        self.method = method
        self.t0, self.t1, self.h = t0, t1, h
        self.y0, self.y1, self.f0 = y0, y1, f0
        self.end_on_jump = end_on_jump
        self.f1 = None

    def end_derivative(self, field: VectorField) -> torch.Tensor:
        if self.f1 is None:
            self.f1 = field(self.t1, self.y1, 0)
        return self.f1

    def dense_states(self, field: VectorField, thetas, out=None):
        interpolation = self.method.interpolation
        f1 = None if interpolation == "linear" else self.end_derivative(field)
        return interpolate_between_ends(
            interpolation, self.y0, self.y1, self.f0, f1, self.h, thetas, out
        )

    def segment(self, field: VectorField) -> Segment:
        interpolation = self.method.interpolation
        f1 = None if interpolation == "linear" else self.end_derivative(field)
        return Segment(self.t0, self.t1, self.y0, self.y1, [self.f0], f1, None, interpolation)


class AdamsMethod:
    """Adams–Bashforth (``corrector=False``) or Adams–Bashforth–Moulton steps on a grid.

    The first ``order - 1`` steps are one-step Runge–Kutta steps; after that each
    step uses ``f`` at the ``order`` latest grid points.
    """

    error_order = 1
    fused = False

    def __init__(
        self,
        *,
        order: int = DEFAULT_ORDER,
        corrector: bool = True,
        max_iters: int = DEFAULT_MAX_ITERS,
        rtol: float | torch.Tensor = 1e-7,
        atol: float | torch.Tensor = 1e-9,
        interpolation: str = "linear",
        user_time=float,
    ):
        self.user_time = user_time
        self.order = order
        self.corrector = corrector
        self.max_iters = max_iters
        self.rtol, self.atol = rtol, atol
        self.interpolation = interpolation

    def start(self, y0: torch.Tensor, f0: torch.Tensor, perturb: int = 0) -> None:
        self._startup = RungeKuttaStepper(_startup_tableau(self.order), y0, fused=False)
        self._past_f: deque[torch.Tensor] = deque(maxlen=self.order)
        self._past_t: deque[float] = deque(maxlen=self.order)
        self._f0: torch.Tensor | None = f0
        self._start_perturb = 0
        self._unconverged: list[float] = []

    def step(self, field, t, t1, h, y, perturb_end, end_on_jump) -> AdamsAttempt:
        f_here = self._f0
        if f_here is None:
            f_here = field(t, y, self._start_perturb)
        self._past_f.appendleft(f_here)
        self._past_t.appendleft(t)
        order = self.order
        if len(self._past_f) < order:
            y1 = self._startup.step(
                field, t, y, f_here, h, t1=t1, perturb_end=perturb_end, with_error=False
            ).y1
        else:
            past_t, past_f = self._past_t, self._past_f
            y1 = adams_bashforth_step(y, past_f, bashforth_weights_on_grid(past_t, t1), h)
            if self.corrector:
                y1 = self._correct(field, y, y1, t1, h, perturb_end)
        return AdamsAttempt(self, t, t1, h, y, y1, f_here, end_on_jump)

    def _correct(self, field, y, y1, t1, h, perturb_end) -> torch.Tensor:
        """P(EC)^m E: repeat the corrector until two iterates agree (or ``max_iters``)."""
        # The corrector of order p uses f_{n+1} and the p - 1 latest values.
        order = self.order
        recent_t = list(self._past_t)[: order - 1]
        moulton = moulton_weights_on_grid(recent_t, t1) if recent_t else (1.0,)
        base = adams_moulton_base(y, list(self._past_f)[: order - 1], moulton, h)
        converged = False
        for _ in range(self.max_iters):
            f_end = field(t1, y1, -1 if perturb_end else 0)
            weight = h * moulton[0]
            if isinstance(weight, torch.Tensor):  # differentiated step times
                corrected = base + f_end * weight.to(f_end.dtype)
            else:
                corrected = torch.add(base, f_end, alpha=weight)
            # With max_iters=1 (PECE) the single correction is the method itself.
            converged = self.max_iters == 1 or _corrector_converged(
                y1, corrected, self.rtol, self.atol
            )
            y1 = corrected
            if converged:
                break
        if not converged:
            self._unconverged.append(t1)
        return y1

    def accept(self, field, attempt: AdamsAttempt, rows=None) -> None:
        if attempt.end_on_jump:
            self._f0, self._start_perturb = None, 1
        else:
            self._f0, self._start_perturb = attempt.f1, 0

    def reject(self, attempt: AdamsAttempt) -> None:
        raise AssertionError("Adams steps on a fixed grid are never rejected")

    def finish(self) -> None:
        if self._unconverged:
            warnings.warn(
                f"the Adams–Moulton corrector did not converge within max_iters={self.max_iters} "
                f"on {len(self._unconverged)} step(s), first at "
                f"t={self.user_time(self._unconverged[0]):.6g}; the result is less accurate than "
                "the tolerances ask. Use a smaller step_size, raise max_iters, or use an implicit "
                "method if the problem is stiff.",
                RuntimeWarning,
                stacklevel=2,
            )
            self._unconverged = []


# ----------------------------------------------------------------------- method specs
def _int_option(options: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidOptionError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def build_adams_method(name: str, options: dict[str, Any], context: BuildContext) -> MethodSpec:
    """The :class:`MethodSpec` of ``explicit_adams``, ``implicit_adams`` or ``fixed_adams``."""
    fixed = context.fixed_options(options)
    order = _int_option(options, "max_order", DEFAULT_ORDER, 1, MAX_ORDER)
    max_iters = _int_option(options, "max_iters", DEFAULT_MAX_ITERS, 1, 10_000)
    corrector = name != "explicit_adams"
    rtol, atol = context.rtol, context.atol

    def stepper() -> AdamsMethod:
        return AdamsMethod(
            order=order,
            corrector=corrector,
            max_iters=max_iters,
            rtol=rtol,
            atol=atol,
            interpolation=fixed.interp,
            user_time=context.user_time,
        )

    return MethodSpec(name=name, kind="fixed", stepper=stepper, fixed=fixed, replayable=False)


ADAMS_METHOD_NAMES = ("explicit_adams", "implicit_adams", "fixed_adams")

for _name in ADAMS_METHOD_NAMES:
    register_method(_name, ADAMS_OPTIONS, build_adams_method)

__all__ = [
    "ADAMS_METHOD_NAMES",
    "ADAMS_OPTIONS",
    "AdamsMethod",
    "build_adams_method",
]
