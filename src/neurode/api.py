"""Public entry points: ``odeint``, ``odeint_adjoint``, ``odeint_event`` and ``solve``.

All arguments are checked here, before any evaluation of ``func``; the layers
above use nothing but these functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import gradients
from .errors import (
    InvalidOptionError,
    InvalidTimesError,
    NonFiniteInputError,
    StructureMismatchError,
    UnknownMethodError,
    UnknownOptionError,
)
from .gradients.captured import captured_tensors
from .gradients.event_time import attach_without_gradient
from .integrate import Callbacks, ODEProblem, Solution, build_method, method_names
from .integrate.per_sample import BATCH_MODES, solve_per_sample
from .integrate.tolerances import check_tolerance_pair
from .integrate.tuple_state import TupleLayout

Tensors = torch.Tensor | tuple[torch.Tensor, ...]


# --------------------------------------------------------------------------- checks
def _check_state(y0: Any) -> tuple[torch.Tensor, TupleLayout | None]:
    if isinstance(y0, torch.Tensor):
        members, layout = (y0,), None
    elif isinstance(y0, (tuple, list)) and y0 and all(isinstance(y, torch.Tensor) for y in y0):
        members, layout = tuple(y0), TupleLayout.of(tuple(y0))
    else:
        raise StructureMismatchError(
            f"y0 must be a tensor or a non-empty tuple of tensors, got {type(y0).__name__}"
        )
    for i, y in enumerate(members):
        name = "y0" if layout is None else f"y0[{i}]"
        if not (y.is_floating_point() or y.is_complex()):
            raise NonFiniteInputError(f"{name} must be floating point, got {y.dtype}")
        if not bool(torch.isfinite(y).all()):
            raise NonFiniteInputError(f"{name} contains NaN or infinity")
    if layout is not None:
        dtypes = {y.dtype for y in members}
        devices = {y.device for y in members}
        if len(devices) > 1:
            raise StructureMismatchError(f"all members of y0 must be on one device, got {devices}")
        dtype = dtypes.pop() if len(dtypes) == 1 else _promote(dtypes)
        state = layout.flatten([y.to(dtype) for y in members])
        return state, layout
    return y0, None


def _promote(dtypes) -> torch.dtype:
    result = None
    for d in dtypes:
        result = d if result is None else torch.promote_types(result, d)
    return result


def _check_times(t: Any, device: torch.device) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        try:
            t = torch.as_tensor(t, dtype=torch.float64)
        except (TypeError, ValueError) as error:
            raise InvalidTimesError(f"t must be a 1-D tensor of times: {error}") from None
    if t.ndim != 1 or t.numel() < 1:
        raise InvalidTimesError(
            f"t must be a 1-D tensor with at least one time, got shape {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if not bool(torch.isfinite(t).all()):
        raise InvalidTimesError("t contains NaN or infinity")
    if t.numel() > 1:
        diffs = t[1:] - t[:-1]
        if not (bool((diffs > 0).all()) or bool((diffs < 0).all())):
            index = int(torch.nonzero((diffs <= 0) if diffs[0] > 0 else (diffs >= 0))[0])
            raise InvalidTimesError(
                "t must be strictly increasing or strictly decreasing; "
                f"t[{index}]={float(t[index])} and t[{index + 1}]={float(t[index + 1])} "
                "break the order (duplicates are not allowed)"
            )
    return t.to(device)


def _wrap_norm(norm: Any, layout: TupleLayout | None):
    if norm is None:
        if layout is None:
            return None

        # torchdiffeq's default for tuples: the largest RMS norm over the members.
        def tuple_rms(flat: torch.Tensor) -> torch.Tensor:
            return torch.stack(
                [
                    torch.linalg.vector_norm(m) / math.sqrt(max(m.numel(), 1))
                    for m in layout.unflatten(flat)
                ]
            ).max()

        return tuple_rms
    if isinstance(norm, str):
        raise UnknownOptionError(
            f"norm={norm!r} is only meaningful in adjoint_options; pass a callable here"
        )
    if not callable(norm):
        raise UnknownOptionError("the norm option must be a callable returning a scalar tensor")
    if layout is None:
        return norm
    return lambda flat: norm(layout.unflatten(flat))


def _callbacks(func: Any, suffix: str = "") -> Callbacks:
    return Callbacks(
        step=getattr(func, f"callback_step{suffix}", None),
        accept_step=getattr(func, f"callback_accept_step{suffix}", None),
        reject_step=getattr(func, f"callback_reject_step{suffix}", None),
    )


class _Prepared:
    """Everything a solve needs, checked."""

    def __init__(self, func, y0, t, rtol, atol, method, options):
        if not callable(func):
            raise StructureMismatchError("func must be callable as func(t, y)")
        state, layout = _check_state(y0)
        t = _check_times(t, state.device)
        self.t = t
        self.layout = layout
        self.state = state
        self.reversed = t.numel() > 1 and bool(t[1] < t[0])
        sign = -1.0 if self.reversed else 1.0
        self.t_solver = [sign * x for x in t.detach().tolist()]
        options = dict(options or {})
        rtol, atol = check_tolerance_pair(rtol, atol, state, layout=layout)
        if "norm" in options:
            options["norm"] = _wrap_norm(options["norm"], layout)
        elif layout is not None:
            options["norm"] = _wrap_norm(None, layout)
        # func sees t in the state's (real) dtype, as in torchdiffeq: a float32 model is
        # not handed a float64 time. The solver's own times stay float64 throughout.
        time_dtype = state.real.dtype if state.is_complex() else state.dtype
        self.problem = ODEProblem(
            func=func,
            layout=layout,
            state_shape=state.shape,
            state_dtype=state.dtype,
            time_dtype=time_dtype,
            device=state.device,
            reversed=self.reversed,
            method=None,  # set below: grid constructors may call func
            callbacks=_callbacks(func),
        )
        t_solver_tensor = torch.tensor(self.t_solver, dtype=t.dtype, device=t.device)
        self.problem.method = build_method(
            method,
            options,
            rtol,
            atol,
            self.t_solver,
            state,
            grid_constructor_args=lambda: (self.problem.vector_field, state, t_solver_tensor),
            reversed_time=self.reversed,
        )
        self.problem.callbacks = self.problem.method.supported_callbacks(self.problem.callbacks)

    def unflatten(self, ys: torch.Tensor) -> Tensors:
        return ys if self.layout is None else self.layout.unflatten(ys)


# ------------------------------------------------------------------------ public API
def solve(
    func: Callable,
    y0: Tensors,
    t: torch.Tensor | Sequence[float],
    *,
    method: str | None = "dopri5",
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    gradient: str = "direct",
    options: dict[str, Any] | None = None,
    gradient_options: dict[str, Any] | None = None,
    params: Sequence[torch.Tensor] | None = None,
    dense: bool = False,
    batch: str = "joint",
) -> Solution:
    """Solve ``dy/dt = func(t, y)`` from ``y(t[0]) = y0`` and save at every ``t``.

    Args:
        func: the vector field, called as ``func(t, y)`` with ``t`` a 0-dim tensor.
        y0: initial state, a tensor of any shape or a tuple of tensors.
        t: strictly increasing or decreasing save times; ``t[0]`` is the start.
        method: a solver name (``neurode.method_names()``); default ``dopri5``.
        rtol, atol: tolerances of adaptive methods (floats, tensors broadcastable to
            the state, or one per tuple member).
        gradient: how gradients are computed: ``"direct"``, ``"backsolve"``,
            ``"checkpoint"``, ``"reversible"`` or ``"forward"``.
        options: solver options (as torchdiffeq's ``options``).
        gradient_options: options of the gradient method.
        params: tensors whose gradients are needed, for gradient methods that solve
            for them (default: what ``func`` holds — an ``nn.Module``'s parameters, and
            tensors requiring grad in its closure, the globals it names, a bound
            method's object or a ``functools.partial``; a tensor it depends on beyond
            those raises :class:`~neurode.errors.GradientUnavailableError` at its first
            evaluation).
        dense: keep the dense output so that ``Solution.evaluate`` works.
        batch: ``"joint"`` (the batch is one system, as in torchdiffeq) or
            ``"per_sample"`` (each row of ``y0`` is its own problem with its own
            steps; ``t`` may then be ``(B, T)``; see :mod:`neurode.integrate.per_sample`).

    Returns:
        a :class:`~neurode.integrate.solution.Solution`.
    """
    available = gradients.names()
    if gradient not in available:
        raise UnknownMethodError(
            f"unknown gradient method {gradient!r}; choose one of: {', '.join(available)}"
        )
    if batch == "per_sample":
        return solve_per_sample(
            func,
            y0,
            t,
            method=method,
            rtol=rtol,
            atol=atol,
            gradient=gradient,
            options=options,
            gradient_options=gradient_options,
            dense=dense,
        )
    if batch != "joint":
        raise UnknownOptionError(f"batch must be one of {', '.join(BATCH_MODES)}, got {batch!r}")
    prepared = _Prepared(func, y0, t, rtol, atol, method, options)
    if params is None:
        # What func visibly holds: a module's parameters, tensors in its closure, ...
        params = captured_tensors(func) if gradient != "direct" else ()
    result = gradients.get(gradient)(
        prepared.problem,
        prepared.state,
        prepared.t,
        prepared.t_solver,
        params=tuple(params),
        options=dict(gradient_options or {}),
        record_segments=dense,
    )
    stats = result.stats
    stats.setdefault("nfe", prepared.problem.nfe)
    solution = Solution(
        ys=prepared.unflatten(result.ys),
        ts=prepared.t,
        stats=stats,
        _segments=result.segments,
        _layout=prepared.layout,
        _reversed=prepared.reversed,
    )
    return solution


def odeint(
    func: Callable,
    y0: Tensors,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    event_fn: Callable | None = None,
) -> Any:
    """Drop-in for ``torchdiffeq.odeint``: the states at ``t``, shaped ``(len(t), *y0.shape)``.

    With ``event_fn`` it returns ``(event_t, solution)`` where ``solution`` holds the
    states at ``t[0]`` and at the event, as torchdiffeq does.
    """
    if event_fn is not None:
        return _odeint_until_event(func, y0, t, rtol, atol, method, options, event_fn)
    return solve(func, y0, t, method=method, rtol=rtol, atol=atol, options=options).ys


def _odeint_until_event(
    func, y0, t, rtol, atol, method, options, event_fn, *, adjoint_kwargs=None, params=None
):
    """``(event_t, solution)`` as torchdiffeq's ``odeint(..., event_fn=...)`` returns them.

    ``solution`` holds ``y(t0)`` and the state at the event, differentiable with respect
    to ``y0``, ``t0`` and the parameters as if the event time were fixed (the event
    time's own dependence is added by :func:`odeint_event`). With ``adjoint_kwargs``
    that state is differentiated by the backsolve adjoint over ``[t0, t_event]``.
    """
    prepared = _Prepared(func, y0, t, rtol, atol, method, options)
    if prepared.t.numel() != 2:
        raise InvalidTimesError(
            f"with event_fn, t must hold two times (the start, and one that gives the "
            f"direction), as in torchdiffeq; got {prepared.t.numel()}"
        )
    problem = prepared.problem
    spec = problem.method
    if spec.kind == "custom":
        raise UnknownMethodError(f"events are not available with method {spec.name!r}")
    if spec.kind == "fixed" and spec.fixed.step_size is None:
        raise InvalidOptionError(
            f"events with the fixed-grid method {spec.name!r} need options={{'step_size': h}}: "
            "the grid has no end to be built from"
        )
    layout = prepared.layout

    def solver_event_fn(s: float, y: torch.Tensor) -> torch.Tensor:
        state = y if layout is None else layout.unflatten(y)
        return event_fn(problem.time_tensor(s), state)

    start, t0 = prepared.state, prepared.t[0]
    if adjoint_kwargs is None:
        if t0.requires_grad and torch.is_grad_enabled():
            # dy(t_e)/dt0 = -Φ(t_e, t0) f(t0, y0): a zero shift of y0 that carries it.
            start = start - (t0 - t0.detach()) * problem.call_user(t0.to(problem.time_dtype), start)
        trajectory = problem.integrate(start, prepared.t_solver[:1], event_fn=solver_event_fn)
        event_state = trajectory.event_state
    else:
        with torch.no_grad():
            trajectory = problem.integrate(
                start.detach(), prepared.t_solver[:1], event_fn=solver_event_fn
            )
        end = problem.time_tensor(trajectory.event_time).to(prepared.t.dtype)
        span = torch.stack([t0, end])
        solution = solve(
            func,
            y0,
            span,
            method=method,
            rtol=rtol,
            atol=atol,
            options=options,
            gradient="backsolve",
            gradient_options=adjoint_kwargs,
            params=params,
        )
        last = solution.ys[-1] if layout is None else tuple(m[-1] for m in solution.ys)
        event_state = last if layout is None else layout.flatten(last)
    event_t = problem.time_tensor(trajectory.event_time).to(prepared.t.dtype)
    if adjoint_kwargs is not None:
        event_t = attach_without_gradient(event_t, event_state)
    ys = torch.stack([prepared.state, event_state])
    return event_t, prepared.unflatten(ys)


def odeint_dense(
    func: Callable,
    y0: Tensors,
    t0: torch.Tensor | float,
    t1: torch.Tensor | float,
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
) -> Callable[[torch.Tensor], Any]:
    """Drop-in for ``torchdiffeq.odeint_dense``: the dense solution on ``[t0, t1]``.

    Returns ``dense_output_fn(t)``, the solver's own interpolant evaluated at any ``t``
    (a 0-dim tensor gives one state, a 1-D tensor a stack of them). Unlike
    torchdiffeq's it works with every method and with tuple states.
    """
    start = torch.as_tensor(t0)
    if not start.is_floating_point():
        start = start.to(torch.get_default_dtype())
    end = torch.as_tensor(t1, dtype=start.dtype, device=start.device)
    span = torch.stack([start.reshape(()), end.reshape(())])
    solution = solve(
        func, y0, span, method=method, rtol=rtol, atol=atol, options=options, dense=True
    )
    return solution.evaluate


def odeint_adjoint(
    func: Callable,
    y0: Tensors,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor = 1e-7,
    atol: float | torch.Tensor = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    event_fn: Callable | None = None,
    adjoint_rtol: float | torch.Tensor | None = None,
    adjoint_atol: float | torch.Tensor | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict[str, Any] | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
) -> Any:
    """Drop-in for ``torchdiffeq.odeint_adjoint``: gradients by the backsolve adjoint."""
    if adjoint_params is None and not isinstance(func, torch.nn.Module):
        raise StructureMismatchError(
            "func must be an nn.Module when adjoint_params is not given, so that its "
            "parameters can be found; or pass adjoint_params=(...)"
        )
    gradient_options = {
        "adjoint_rtol": rtol if adjoint_rtol is None else adjoint_rtol,
        "adjoint_atol": atol if adjoint_atol is None else adjoint_atol,
        "adjoint_method": method if adjoint_method is None else adjoint_method,
        "adjoint_options": adjoint_options,
    }
    if event_fn is not None:
        return _odeint_until_event(
            func,
            y0,
            t,
            rtol,
            atol,
            method,
            options,
            event_fn,
            adjoint_kwargs=gradient_options,
            params=adjoint_params,
        )
    return solve(
        func,
        y0,
        t,
        method=method,
        rtol=rtol,
        atol=atol,
        options=options,
        gradient="backsolve",
        gradient_options=gradient_options,
        params=adjoint_params,
    ).ys


def odeint_event(
    func: Callable,
    y0: Tensors,
    t0: torch.Tensor,
    *,
    event_fn: Callable,
    reverse_time: bool = False,
    odeint_interface: Callable = odeint,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """Solve until ``event_fn(t, y)`` changes sign; the event time is differentiable.

    Returns ``(event_t, solution)``, ``solution`` holding the states at ``t0`` and at
    the event. The gradient of ``event_t`` follows from the implicit function
    theorem: with ``g(t_e, y(t_e)) = 0``,
    ``dt_e = -(∂g/∂y · dy) / (∂g/∂t + ∂g/∂y · f)``.
    """
    from .gradients.event_time import differentiable_event

    return differentiable_event(
        func,
        y0,
        t0,
        event_fn=event_fn,
        reverse_time=reverse_time,
        odeint_interface=odeint_interface,
        **kwargs,
    )


__all__ = [
    "method_names",
    "odeint",
    "odeint_adjoint",
    "odeint_dense",
    "odeint_event",
    "solve",
]
