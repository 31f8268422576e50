"""An initial value problem as the solver sees it, and how to integrate it.

:class:`ODEProblem` turns the user's ``func(t, y)`` into the vector field on the
solver's state: a single tensor (tuple states are flattened), time running
forwards (``t`` decreasing is solved in ``s = -t``), ``t`` handed over as a
0-dim tensor of the promoted dtype, output checked on every evaluation's shape
and cast when it is wider than the state. It counts evaluations and runs the
integration loop with the method's stepper and controller; the gradient methods
build on it.

:class:`MethodSpec` is a method with its options checked: how to make its
stepper and its controller for one solve.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import DtypeMismatchError, ShapeMismatchError
from .controller import (
    GridController,
    PIDCoefficients,
    PIDController,
    RowPIDController,
    fixed_grid_from_step_size,
)
from .error_norm import ErrorNorm, Norm
from .events import EventFunction
from .loop import NO_CALLBACKS, Callbacks, Trajectory, integrate
from .stepper import Stepper
from .tuple_state import TupleLayout


@dataclass
class AdaptiveOptions:
    """Settings of an adaptive solve."""

    rtol: float | torch.Tensor = 1e-7
    atol: float | torch.Tensor = 1e-9
    norm: Norm | None = None
    coefficients: PIDCoefficients = field(default_factory=PIDCoefficients)
    first_step: float | None = None
    max_num_steps: int = 2**31 - 1
    step_t: Sequence[float] = ()
    jump_t: Sequence[float] = ()


@dataclass
class FixedGridOptions:
    """Settings of a fixed-grid solve: the grid (None: the save times) or its step size."""

    grid: Sequence[float] | None = None
    step_size: float | None = None
    interp: str = "linear"
    perturb: bool = False
    max_num_steps: int = 2**31 - 1
    given: bool = False
    """Whether the grid came from the options (``step_size``, ``grid_constructor``)
    rather than being the save times."""

    def points(self, t0: float, t1: float) -> list[float]:
        """The grid as a list (built from ``step_size`` over ``[t0, t1]`` if need be)."""
        if self.step_size is None:
            return list(self.grid)
        return fixed_grid_from_step_size(t0, t1, self.step_size)


@dataclass
class MethodSpec:
    """How to integrate: an adaptive pair, a fixed grid, or another integrator."""

    name: str
    kind: str  # "adaptive" | "fixed" | "custom"
    stepper: Callable[[], Stepper] | None = None
    """Makes a fresh stepper for one solve."""
    tableau: Any = None
    """The explicit Runge–Kutta tableau, for methods that are one (the reversible
    wrapper and the checkpoint replay work on it)."""
    adaptive: AdaptiveOptions | None = None
    fixed: FixedGridOptions | None = None
    custom: Callable[..., Trajectory] | None = None
    """``custom(problem, func, y0, t_eval, record_segments)`` for scipy."""
    differentiable: bool = True
    """False when no gradient can flow through the solve (it runs outside torch)."""
    replayable: bool = True
    """Whether a step can be recomputed from its start state alone (the checkpointed
    adjoint replays steps that way; a multistep method's steps depend on earlier ones)."""

    @property
    def grid(self) -> Sequence[float] | None:
        return None if self.fixed is None else self.fixed.grid

    @property
    def valid_callbacks(self) -> tuple[str, ...]:
        """The step callbacks this method calls: fixed grids have no accept or reject."""
        if self.kind == "adaptive":
            return ("step", "accept_step", "reject_step")
        return ("step",) if self.kind == "fixed" else ()

    def supported_callbacks(self, callbacks: Callbacks, suffix: str = "") -> Callbacks:
        """``callbacks`` without those the method cannot call, each dropped with a warning.

        As torchdiffeq does: ``func.callback_accept_step`` on a fixed grid, say, warns
        that the method does not support it.
        """
        kept = {}
        for name in ("step", "accept_step", "reject_step"):
            callback = getattr(callbacks, name)
            if callback is None:
                continue
            if name in self.valid_callbacks:
                kept[name] = callback
            else:
                warnings.warn(
                    f"method {self.name!r} does not support callback 'callback_{name}{suffix}'; "
                    "it will not be called",
                    UserWarning,
                    stacklevel=4,
                )
        return Callbacks(**kept)

    def controller(
        self,
        y0: torch.Tensor,
        user_time: Callable[[float], float] = float,
        *,
        per_row: bool = False,
    ):
        """A fresh controller for one solve from ``y0``."""
        if self.kind == "fixed":
            fixed = self.fixed
            return GridController(
                grid=fixed.grid if fixed.step_size is None else None,
                step_size=fixed.step_size,
                perturb=fixed.perturb,
                max_num_steps=fixed.max_num_steps,
                user_time=user_time,
            )
        options = self.adaptive
        norm = ErrorNorm(y0, options.rtol, options.atol, options.norm, per_row=per_row)
        if per_row:
            return RowPIDController(
                norm,
                options.coefficients,
                first_step=options.first_step,
                max_num_steps=options.max_num_steps,
                user_time=user_time,
            )
        return PIDController(
            norm,
            options.coefficients,
            first_step=options.first_step,
            max_num_steps=options.max_num_steps,
            step_t=options.step_t,
            jump_t=options.jump_t,
            user_time=user_time,
        )


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
    method: MethodSpec | None
    callbacks: Callbacks = field(default_factory=Callbacks)
    nfe: int = 0
    inspect_first: Callable[[Any, torch.Tensor], None] | None = None
    """Called once with the first evaluation's output, computed with a graph from a
    detached copy of the state (a gradient method checks what ``func`` depends on)."""
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
        if self.inspect_first is not None:
            return self._call_inspected(t, y)
        self.nfe += 1
        if self.layout is None:
            out = self.func(t, y)
            if not self._checked or type(out) is not torch.Tensor or out.shape != y.shape:
                self._check(out, y.shape)
            if out.dtype != self.state_dtype:
                out = out.to(self.state_dtype)
            return out
        outputs = self.func(t, self.layout.unflatten(y))
        self.layout.check_output(outputs)
        if not self._checked:
            for out in outputs:
                self._check_dtype(out)
            self._checked = True
        return self.layout.flatten_like(outputs, self.state_dtype)

    def _call_inspected(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        inspect, self.inspect_first = self.inspect_first, None
        with torch.enable_grad():
            y_leaf = y.detach().requires_grad_(True)
            out = self.call_user(t, y_leaf)
        inspect(out, y_leaf)
        return out.detach()

    def vector_field(self, t: float, y: torch.Tensor, perturb: int = 0) -> torch.Tensor:
        """dy/ds at solver time ``s = t`` (``perturb`` = ±1 nudges ``t`` by one ulp).

        ``t`` is a float, or a 0-dim tensor when the step times themselves are
        differentiated (fixed grids whose times carry ``t``'s gradient).
        """
        if type(t) is not float and isinstance(t, torch.Tensor):
            return self._field_at_time_tensor(t, y, perturb)
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

    def _field_at_time_tensor(self, t: torch.Tensor, y: torch.Tensor, perturb: int):
        tt = (-t if self.reversed else t).to(self.time_dtype)
        if perturb:
            direction = -perturb if self.reversed else perturb
            nudged = torch.nextafter(tt.detach(), tt.detach() + direction)
            tt = tt + (nudged - tt.detach())  # the nudge, keeping t's gradient
        out = self.call_user(tt, y)
        return -out if self.reversed else out

    def row_field(self, t: torch.Tensor, y: torch.Tensor, perturb: int = 0) -> torch.Tensor:
        """The vector field with one solver time per row (per-sample batching)."""
        tt = (-t if self.reversed else t).to(self.time_dtype)
        out = self.call_user(tt, y)
        return -out if self.reversed else out

    def _check(self, out: Any, shape: torch.Size) -> None:
        if not isinstance(out, torch.Tensor):
            raise ShapeMismatchError(
                f"func must return a tensor shaped like y0 {tuple(shape)}, got "
                f"{type(out).__name__}" + (" (did func forget to return?)" if out is None else "")
            )
        if out.shape != shape:
            raise ShapeMismatchError(
                f"func returned shape {tuple(out.shape)} but y0 has shape "
                f"{tuple(shape)}; dy/dt must have the state's shape"
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
        if out.is_complex() and not self.state_dtype.is_complex:
            raise DtypeMismatchError(
                f"func returned the complex dtype {out.dtype} for a real {self.state_dtype} "
                "state; casting would drop the imaginary part. Make y0 complex, or return "
                "a real tensor (e.g. .real)"
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
        t_eval: Sequence[float] | torch.Tensor,
        *,
        func: Callable | None = None,
        method: MethodSpec | None = None,
        record_segments: bool = False,
        event_fn: EventFunction | None = None,
        callbacks: Callbacks | None = None,
        stepper: Stepper | None = None,
        controller: Any = None,
        user_time: Callable[[float], float] | None = None,
    ) -> Trajectory:
        """Run the loop on solver times ``t_eval`` (increasing) from solver state ``y0``.

        ``func`` replaces the problem's own vector field (an augmented system, say);
        ``stepper`` and ``controller`` replace the method's (a replay, say).
        ``t_eval`` as a ``(B, T)`` tensor solves each row on its own. ``user_time``
        replaces how solver times are reported in errors (a backward solve's).
        """
        method = method or self.method
        user_time = self.user_time if user_time is None else user_time
        per_row = isinstance(t_eval, torch.Tensor)
        if func is None:
            func = self.row_field if per_row else self.vector_field
        callbacks = self.callbacks if callbacks is None else callbacks
        if method.kind == "custom":
            if event_fn is not None:
                raise ValueError(f"events are not available with method {method.name!r}")
            return method.custom(self, func, y0, t_eval, record_segments)
        return integrate(
            func,
            y0,
            t_eval,
            stepper if stepper is not None else method.stepper(),
            controller
            if controller is not None
            else method.controller(y0, user_time, per_row=per_row),
            callbacks=callbacks or NO_CALLBACKS,
            record_segments=record_segments,
            event_fn=event_fn,
            user_time=user_time,
        )


__all__ = ["AdaptiveOptions", "FixedGridOptions", "MethodSpec", "ODEProblem"]
