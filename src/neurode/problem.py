"""An initial value problem as the solver sees it.

:class:`ODEProblem` turns the user's ``func(t, y)`` into the vector field on the
solver's state: a single tensor (tuple states are flattened), time running
forwards (``t`` decreasing is solved in ``s = -t``), ``t`` handed over as a
0-dim tensor of the promoted dtype, output checked on the first evaluation and
cast when it is wider than the state. It counts evaluations and runs the
integration loop; the gradient methods build on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import DtypeMismatchError, ShapeMismatchError
from .integrate import (
    AdaptiveOptions,
    Callbacks,
    EventFunction,
    Trajectory,
    integrate_adaptive,
    integrate_fixed,
)
from .solvers.tableau import ButcherTableau
from .state import TupleLayout


@dataclass
class MethodSpec:
    """How to integrate: an adaptive pair, a fixed grid, or another integrator."""

    name: str
    kind: str  # "adaptive" | "fixed" | "custom"
    tableau: ButcherTableau | None = None
    adaptive: AdaptiveOptions | None = None
    grid: Sequence[float] | None = None
    interp: str = "linear"
    perturb: bool = False
    custom: Callable[..., Trajectory] | None = None
    """``custom(problem, func, y0, t_eval, record_segments)`` for Adams, scipy, ..."""


@dataclass
class ODEProblem:
    func: Callable
    layout: TupleLayout | None
    """Set when the user's state is a tuple."""
    state_shape: torch.Size
    state_dtype: torch.dtype
    time_dtype: torch.dtype
    device: torch.device
    reversed: bool
    method: MethodSpec
    callbacks: Callbacks = field(default_factory=Callbacks)
    nfe: int = 0
    _checked: bool = False
    _time_key: float | None = field(default=None, repr=False)
    _time_value: torch.Tensor | None = field(default=None, repr=False)
    """The last time tensor handed to ``func`` and its solver time: stages at equal
    times (dopri5's last two, a step's end and the next one's start) share it."""

    # ----------------------------------------------------------------- vector field
    def time_tensor(self, t: float) -> torch.Tensor:
        """The user's time for solver time ``t`` (negated when integrating backwards)."""
        # scalar_tensor: a third of torch.tensor's cost, and this runs once per evaluation.
        return torch.scalar_tensor(
            -t if self.reversed else t, dtype=self.time_dtype, device=self.device
        )

    def user_time(self, t: float) -> float:
        return -t if self.reversed else t

    def call_user(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``func`` at user time ``t`` (a tensor) on the solver state ``y``, in user orientation."""
        self.nfe += 1
        if self.layout is None:
            out = self.func(t, y)
            if not self._checked:
                self._check(out)
            if out.dtype != self.state_dtype:
                out = out.to(self.state_dtype)
            return out
        outputs = self.func(t, self.layout.unflatten(y))
        if not self._checked:
            self.layout.check_output(outputs)
            for out in outputs:
                self._check_dtype(out)
            self._checked = True
        return torch.cat([o.reshape(-1).to(self.state_dtype) for o in outputs])

    def vector_field(self, t: float, y: torch.Tensor, perturb: int = 0) -> torch.Tensor:
        """dy/ds at solver time ``s = t`` (``perturb`` = ±1 nudges ``t`` by one ulp)."""
        if perturb:
            tt = self.time_tensor(t)
            direction = -perturb if self.reversed else perturb
            tt = torch.nextafter(tt, tt + direction)
        elif t == self._time_key:
            tt = self._time_value
        else:
            tt = self._time_value = self.time_tensor(t)
            self._time_key = t
        out = self.call_user(tt, y)
        return -out if self.reversed else out

    def _check(self, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            raise ShapeMismatchError(
                f"func must return a tensor shaped like y0 {tuple(self.state_shape)}, "
                f"got {type(out).__name__}"
            )
        if out.shape != self.state_shape:
            raise ShapeMismatchError(
                f"func returned shape {tuple(out.shape)} but y0 has shape "
                f"{tuple(self.state_shape)}; dy/dt must have the state's shape"
            )
        self._check_dtype(out)
        self._checked = True

    def _check_dtype(self, out: torch.Tensor) -> None:
        if out.dtype == self.state_dtype:
            return
        if not out.is_floating_point() and not out.is_complex():
            raise DtypeMismatchError(
                f"func returned dtype {out.dtype} for a {self.state_dtype} state; "
                "return a floating-point tensor"
            )
        if torch.promote_types(out.dtype, self.state_dtype) != out.dtype:
            raise DtypeMismatchError(
                f"func returned {out.dtype} for a {self.state_dtype} state, which loses "
                f"precision; compute dy/dt in {self.state_dtype} (e.g. cast the module "
                f"with .to({self.state_dtype}))"
            )

    # -------------------------------------------------------------------- running
    def integrate(
        self,
        y0: torch.Tensor,
        t_eval: Sequence[float],
        *,
        func: Callable[[float, torch.Tensor, int], torch.Tensor] | None = None,
        method: MethodSpec | None = None,
        record_segments: bool = False,
        event_fn: EventFunction | None = None,
        callbacks: Callbacks | None = None,
    ) -> Trajectory:
        """Run the loop on solver times ``t_eval`` (increasing) from solver state ``y0``."""
        method = method or self.method
        func = func or self.vector_field
        callbacks = self.callbacks if callbacks is None else callbacks
        if method.kind == "adaptive":
            return integrate_adaptive(
                func,
                y0,
                t_eval,
                method.tableau,
                method.adaptive,
                callbacks=callbacks,
                record_segments=record_segments,
                event_fn=event_fn,
            )
        if event_fn is not None:
            raise ValueError(f"events need an adaptive method, not {method.name!r}")
        if method.kind == "fixed":
            grid = method.grid if method.grid is not None else list(t_eval)
            return integrate_fixed(
                func,
                y0,
                t_eval,
                method.tableau,
                grid,
                interp=method.interp,
                perturb=method.perturb,
                callbacks=callbacks,
                record_segments=record_segments,
            )
        return method.custom(self, func, y0, t_eval, record_segments)
