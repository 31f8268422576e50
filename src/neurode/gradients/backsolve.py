"""The backsolve adjoint: gradients by solving the adjoint equations backwards in time.

Memory is constant in the number of steps: the forward solve keeps only the
saved states. For a loss ``L`` of the states ``y(t_i)`` the adjoint
``a(t) = dL/dy(t)`` satisfies, in the user's time (Chen et al. 2018, App. B),

    dz/dt   =  f(t, z)                  (the state, re-integrated backwards)
    da/dt   = -a^T ∂f/∂z(t, z)
    da_θ/dt = -a^T ∂f/∂θ(t, z)          a_θ(t_N) = 0,  a_θ(t_0) = dL/dθ
    da_t/dt = -a^T ∂f/∂t(t, z)          a_t(t_0) = dL/dt_0

integrated from ``t_N`` to ``t_0`` one save interval at a time; at each save
time ``a`` jumps by ``dL/dy(t_i)``, ``z`` is reset to the forward solution, and
``a_t`` drops by ``dL/dt_i = <dL/dy(t_i), f(t_i, y(t_i))>``. The three
vector-Jacobian products come from one ``torch.autograd.grad`` call per
evaluation.

The backward solve re-integrates ``z`` in the direction in which a
contracting system expands, so on stiff or strongly damped problems its
errors grow exponentially and so do the gradient's; ``gradient="checkpoint"``
is the stable alternative.

Options (``gradient_options``, as ``torchdiffeq.odeint_adjoint``):

- ``adjoint_rtol``, ``adjoint_atol``: tolerances of the backward solve
  (default: the forward ones);
- ``adjoint_method``: its solver (default: the forward one);
- ``adjoint_options``: its solver options (default: the forward ones, and for
  a fixed-step forward solve its grid, reversed). ``adjoint_options["norm"]``
  is ``"seminorm"`` to leave the integral channels ``a_θ`` and ``a_t`` out of
  the error estimate (Kidger, Chen & Lyons 2021): they never feed back into the
  dynamics, so their error does not need to limit the step size; or a callable
  taking ``(a_t, z, a, *a_θ)`` (``z`` and ``a`` split into members for tuple
  states) and returning a scalar. The default is the largest RMS norm of the
  channels ``z``, ``a``, each ``a_θ`` and ``a_t``.
- ``drift_limit``: how far (in the forward tolerances, RMS) the state integrated
  backwards may stray from the forward solution at the save times and at 16
  forward states kept along the way (adaptive forward solves); default 1e3.
  Beyond it, or when it takes
  over 20 times the forward solve's steps over the span it has covered (it is
  crawling), backward raises
  :class:`~neurode.errors.AdjointDivergedError` instead of returning a wrong
  gradient (``float("inf")`` turns both checks off).

The adjoint callbacks ``func.callback_step_adjoint``,
``func.callback_accept_step_adjoint`` and ``func.callback_reject_step_adjoint``
are called as ``(t, (a_t, z, a, *a_θ), dt)`` with ``t`` the user's time.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import (
    AdjointDivergedError,
    InvalidOptionError,
    InvalidToleranceError,
    UnknownOptionError,
)
from ..integrate.augmented_jacobian import AugmentedJacobian, BlockStructure
from ..integrate.loop import Callbacks
from ..integrate.methods import build_method
from ..integrate.problem import AdaptiveOptions, MethodSpec, ODEProblem
from ..integrate.tolerances import check_tolerance
from . import GradientResult, check_options, register
from ._adjoint_common import (
    apply_custom_backward,
    record_backward_stats,
    save_time_gradients,
    trainable,
)
from ._step_recorder import StepRecorder, chain_callbacks

_OPTIONS = frozenset(
    {"adjoint_rtol", "adjoint_atol", "adjoint_method", "adjoint_options", "drift_limit"}
)
_CHECK_STATES = 16
"""Forward states kept (spread over the solve) to check the backward reconstruction against."""
_DRIFT_LIMIT = 1e3
"""Beyond this many tolerances from the forward solution the reconstruction has diverged
(healthy solves measure 0.01–150, growing with the span; see ``drift_limit``)."""
_STEP_BUDGET_FACTOR = 20
_STEP_BUDGET_MARGIN = 200
"""The backward solve may take 20 times the forward solve's steps over the span it has
covered, plus 200, before it is declared diverging (a healthy one takes one to two times
as many)."""
_DEFAULT_RTOL, _DEFAULT_ATOL = 1e-7, 1e-9


def solve_backsolve(
    problem: ODEProblem,
    y0: torch.Tensor,
    t: torch.Tensor,
    t_solver: list[float],
    *,
    params: tuple[torch.Tensor, ...] = (),
    options: dict[str, Any] | None = None,
    record_segments: bool = False,
) -> GradientResult:
    params = trainable(params)
    backsolve = _Backsolve(problem, y0, t, t_solver, params, options or {}, record_segments)
    ys = apply_custom_backward(backsolve, y0, t, params)
    return GradientResult(ys=ys, stats=backsolve.stats, segments=backsolve.segments)


# ------------------------------------------------------------------- augmented state
class _AugmentedLayout:
    """The backward state as one flat vector ``[z, a, a_θ_1, ..., a_θ_K, a_t]``."""

    def __init__(self, state_shape: torch.Size, params: Sequence[torch.Tensor]):
        self.state_shape = state_shape
        self.n = math.prod(state_shape)
        self.param_shapes = [p.shape for p in params]
        self.param_numels = [p.numel() for p in params]
        self.param_dtypes = [p.dtype for p in params]
        self.size = 2 * self.n + sum(self.param_numels) + 1

    def initial(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        x = z.new_zeros(self.size)
        x[: self.n] = z.reshape(-1)
        x[self.n : 2 * self.n] = a.reshape(-1)
        return x

    def z(self, x: torch.Tensor) -> torch.Tensor:
        return x[: self.n].view(self.state_shape)

    def a(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.n : 2 * self.n].view(self.state_shape)

    def param_gradients(self, x: torch.Tensor) -> list[torch.Tensor]:
        pieces = torch.split(x[2 * self.n : -1], self.param_numels)
        return [
            piece.view(shape).to(dtype)
            for piece, shape, dtype in zip(pieces, self.param_shapes, self.param_dtypes)
        ]

    def unpack(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(a_t, z, a, *a_θ)`` as torchdiffeq's adjoint callbacks and norms see it."""
        return (x[-1], self.z(x), self.a(x), *self.param_gradients(x))


class _AugmentedDynamics:
    """``dx/dτ`` of the backward state in backward solver time ``τ``.

    The forward solver time is ``s = σ t`` (σ = -1 when ``t`` decreases); the
    backward solve runs in ``τ = -s``, so the user's time is ``t = ρ τ`` with
    ``ρ = -σ`` and ``dx/dτ = ρ · dx/dt``.
    """

    def __init__(
        self,
        problem: ODEProblem,
        layout: _AugmentedLayout,
        params: tuple[torch.Tensor, ...],
        time_grad: bool,
    ):
        self.problem = problem
        self.layout = layout
        self.params = params
        self.time_grad = time_grad
        self.rho = 1.0 if problem.reversed else -1.0
        self.dtype = problem.state_dtype
        self.cast = any(p.dtype != self.dtype for p in params)
        self.n, self.shape = layout.n, layout.state_shape
        # What an unused input (or the time, when its gradient is not needed) contributes.
        sizes = [layout.n, *layout.param_numels, 1]
        self.zeros = [torch.zeros(k, dtype=self.dtype, device=problem.device) for k in sizes]

    @property
    def jacobian_blocks(self) -> AugmentedJacobian:
        """For implicit methods: ``∂(dz/dτ)/∂z = ρJ`` on ``z``, its negative transpose on ``a``."""
        return AugmentedJacobian(
            lambda tau, z, perturb=0: (
                self.rho * self.problem.call_user(self.user_time(tau, perturb), z)
            ),
            self.shape,
            BlockStructure(self.n, ((1, 1.0, False), (1, -1.0, True))),
        )

    def user_time(self, tau: float, perturb: int = 0) -> torch.Tensor:
        t = self.problem.time_tensor(-tau)
        if perturb:
            t = torch.nextafter(t, t + self.rho * perturb)
        return t

    def __call__(self, tau: float, x: torch.Tensor, perturb: int = 0) -> torch.Tensor:
        # Every tensor operation here costs microseconds of dispatch on small states,
        # so the glue is kept to the fewest operations.
        n, shape = self.n, self.shape
        t = self.user_time(tau, perturb)
        a = x[n : 2 * n].view(shape)
        # dx/dτ = ρ [f, -a^T ∂f/∂z, -a^T ∂f/∂θ, -a^T ∂f/∂t]: one vjp with cotangent -ρ a.
        cotangent = a if self.rho < 0 else -a
        with torch.enable_grad():
            # x never requires grad here (the backward pass runs without a graph), so a
            # view of it can be the leaf the vjp differentiates with respect to.
            z = x[:n].reshape(shape).requires_grad_(True)
            if self.time_grad:
                t.requires_grad_(True)
                inputs = (z, *self.params, t)
            else:
                inputs = (z, *self.params)
            f = self.problem.call_user(t, z)
            if f.requires_grad:
                vjps = torch.autograd.grad(f, inputs, cotangent, allow_unused=True)
            else:
                vjps = (None,) * len(inputs)
        if self.cast:
            vjps = [None if v is None else v.to(self.dtype) for v in vjps]
        pieces = [_flat(-f if self.rho < 0 else f)]
        for v, zero in zip(vjps, self.zeros):
            pieces.append(zero if v is None else _flat(v))
        if not self.time_grad:
            pieces.append(self.zeros[-1])
        return torch.cat(pieces)


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dim() == 1 else tensor.reshape(-1)


# ----------------------------------------------------------------------- error norms
class _ChannelRMSNorm:
    """``max_c RMS(x_c)`` over the channels of the flat backward state ``[z, a, a_θ, a_t]``.

    One channel per member of ``z`` and of ``a`` (or the forward solve's own norm of
    each, ``state_norm``), one per parameter, and ``a_t``. With ``integrals=False``
    the parameters' channels are left out (the seminorm; ``a_t`` stays, as in
    torchdiffeq). Called with the flat state, or (as torchdiffeq's adjoint norms are)
    with the tuple ``(a_t, z, a, *a_θ)``.
    """

    def __init__(
        self,
        layout: _AugmentedLayout,
        member_numels: Sequence[int],
        state_norm: Callable | None,
        integrals: bool,
        like: torch.Tensor,
    ):
        self.layout = layout
        self.n = layout.n
        self.members = list(member_numels)
        self.state_norm = state_norm
        self.integrals = integrals
        sizes: list[int] = [] if state_norm is not None else [*member_numels, *member_numels]
        self.offset = 0 if state_norm is None else 2 * layout.n
        params = [k for k in layout.param_numels]
        sizes += params + [1]
        keep = [True] * (len(sizes) - len(params) - 1) + [integrals and k > 0 for k in params]
        keep.append(True)
        self.index = torch.repeat_interleave(
            torch.arange(len(sizes), device=like.device),
            torch.tensor(sizes, dtype=torch.long, device=like.device),
        )
        self.counts = torch.tensor([max(k, 1) for k in sizes], dtype=like.dtype, device=like.device)
        self.keep = torch.tensor(keep, device=like.device)

    def __call__(self, x) -> torch.Tensor:
        if isinstance(x, tuple):
            return self._of_tuple(x)
        channel = x[self.offset :]
        sums = torch.zeros_like(self.counts).index_add_(0, self.index, channel * channel)
        value = sums.div_(self.counts).masked_fill_(~self.keep, 0.0).max().sqrt()
        if self.state_norm is not None:
            n = self.n
            state_value = torch.maximum(self.state_norm(x[:n]), self.state_norm(x[n : 2 * n]))
            value = torch.maximum(value, state_value)
        return value

    def _of_tuple(self, values: tuple) -> torch.Tensor:
        a_t, z, a, *a_params = values
        pieces = [a_t.abs()]
        for state in (z, a):
            if self.state_norm is not None:
                pieces.append(self.state_norm(state.reshape(-1)))
            else:
                for member in torch.split(state.reshape(-1), self.members):
                    pieces.append(member.pow(2).mean().sqrt())
        if self.integrals:
            pieces += [p.pow(2).mean().sqrt() for p in a_params if p.numel()]
        return torch.stack([p.reshape(()).to(a_t.dtype) for p in pieces]).max()


def _user_norm(norm: Callable, problem: ODEProblem) -> Callable:
    """The user's adjoint norm as a norm of ``(a_t, z, a, *a_θ)``, members split for tuples."""
    members = problem.layout
    if members is None:
        return norm
    return lambda values: norm(
        (values[0], *members.unflatten(values[1]), *members.unflatten(values[2]), *values[3:])
    )


# ------------------------------------------------------------------- option checking
def _check_tolerance(name: str, value: Any, problem: ODEProblem, like: torch.Tensor):
    """A non-negative float, or a tensor broadcastable to the state (or one per member).

    Stricter than the solve's own check: a number, a tensor (used detached) or,
    for tuple states, one value per member; nothing else converts.
    """
    per_member = isinstance(value, (tuple, list)) and problem.layout is not None
    if isinstance(value, bool) or not (per_member or isinstance(value, (int, float, torch.Tensor))):
        raise InvalidToleranceError(f"{name} must be a number or a tensor, got {value!r}")
    if isinstance(value, torch.Tensor):
        value = value.detach()
    return check_tolerance(name, value, like, layout=problem.layout)


def _as_state_tensor(value, like: torch.Tensor, floor: float = 0.0):
    if isinstance(value, torch.Tensor):
        return value.detach().to(dtype=like.dtype, device=like.device).clamp(min=floor)
    return max(float(value), floor)


def _augmented_tolerance(value, layout: _AugmentedLayout):
    """The state tolerance on ``z`` and ``a``; its strictest entry on the integral channels."""
    if isinstance(value, float):
        return value
    per_state = torch.broadcast_to(value, layout.state_shape).reshape(-1)
    rest = per_state.min().expand(layout.size - 2 * layout.n)
    return torch.cat([per_state, per_state, rest])


# -------------------------------------------------------------------- the method
class _Backsolve:
    """Forward solve without a graph; backward by the adjoint equations."""

    gradient_name = "backsolve"

    def __init__(
        self,
        problem: ODEProblem,
        y0: torch.Tensor,
        t: torch.Tensor,
        t_solver: list[float],
        params: tuple[torch.Tensor, ...],
        options: dict[str, Any],
        record_segments: bool,
    ):
        check_options("backsolve", options, _OPTIONS)
        self.problem = problem
        self.t = t
        self.t_solver = t_solver
        self.params = params
        self.record_segments = record_segments
        self.stats: dict[str, Any] = {}
        self.segments = None
        self.layout = _AugmentedLayout(problem.state_shape, params)
        self.time_grad = t.requires_grad
        self.dynamics = _AugmentedDynamics(problem, self.layout, params, self.time_grad)
        self._configure(options, y0)
        self.callbacks = self.spec.supported_callbacks(self._adjoint_callbacks(), "_adjoint")

    # .................................................................. configuration
    def _configure(self, options: dict[str, Any], y0: torch.Tensor) -> None:
        forward = self.problem.method
        drift_limit = options.get("drift_limit", _DRIFT_LIMIT)
        if isinstance(drift_limit, bool) or not isinstance(drift_limit, (int, float)):
            raise InvalidOptionError(f"drift_limit must be a number, got {drift_limit!r}")
        if not drift_limit > 0:
            raise InvalidOptionError(f"drift_limit must be positive, got {drift_limit}")
        self.drift_limit = float(drift_limit)
        forward_adaptive = forward.adaptive if forward.kind == "adaptive" else None
        rtol = options.get("adjoint_rtol")
        atol = options.get("adjoint_atol")
        if rtol is None:
            rtol = forward_adaptive.rtol if forward_adaptive else _DEFAULT_RTOL
        if atol is None:
            atol = forward_adaptive.atol if forward_adaptive else _DEFAULT_ATOL
        rtol = _check_tolerance("adjoint_rtol", rtol, self.problem, y0)
        atol = _check_tolerance("adjoint_atol", atol, self.problem, y0)
        # The reconstruction of the state is measured in the forward solve's tolerances.
        forward_rtol = forward_adaptive.rtol if forward_adaptive else rtol
        forward_atol = forward_adaptive.atol if forward_adaptive else atol
        # Tolerances below the dtype's resolution measure rounding, not drift: floor them.
        floor = 100 * torch.finfo(y0.real.dtype if y0.is_complex() else y0.dtype).eps
        self.state_rtol = _as_state_tensor(forward_rtol, y0, floor)
        self.state_atol = _as_state_tensor(forward_atol, y0)
        self.rtol = _augmented_tolerance(rtol, self.layout)
        self.atol = _augmented_tolerance(atol, self.layout)

        name = options.get("adjoint_method") or forward.name
        solver_options = options.get("adjoint_options")
        if solver_options is not None and not isinstance(solver_options, dict):
            raise UnknownOptionError(
                f"adjoint_options must be a dict, got {type(solver_options).__name__}"
            )
        self.inherit = solver_options is None
        solver_options = dict(solver_options or {})
        norm = solver_options.pop("norm", None)
        self.name = name
        self.solver_options = solver_options
        self.reversed_backward = not self.problem.reversed
        span = [-self.t_solver[-1], -self.t_solver[0]]
        # Built once over the whole span, so bad names and options fail before any work.
        validation_options = {k: v for k, v in solver_options.items() if k != "grid_constructor"}
        spec = build_method(
            name,
            validation_options,
            self.rtol,
            self.atol,
            span,
            y0,
            reversed_time=self.reversed_backward,
        )
        if spec.kind == "adaptive":
            if self.inherit and forward_adaptive is not None:
                spec.adaptive = _inherited_adaptive(forward_adaptive, self.rtol, self.atol)
            spec.adaptive.norm = self._norm(norm, y0)
        elif norm is not None and not (norm == "seminorm" or callable(norm)):
            raise UnknownOptionError(f"adjoint norm must be 'seminorm' or a callable, got {norm!r}")
        if spec.kind == "custom" and self.inherit and forward.name == name:
            # Integrators outside torch keep their options in their own closure:
            # reuse it, as torchdiffeq reuses `options`.
            spec = forward
        self.spec = spec
        self.forward_grid: list[float] | None = None
        if spec.kind == "fixed" and self.inherit and forward.kind == "fixed":
            spec.fixed.perturb, spec.fixed.interp = forward.fixed.perturb, forward.fixed.interp
            self.forward_grid = forward.fixed.points(self.t_solver[0], self.t_solver[-1])

    def _norm(self, norm: Any, like: torch.Tensor) -> Callable:
        """The backward solve's error norm, looked up in ``adjoint_options`` at every call.

        ``adjoint_options["norm"]`` is a norm of ``(a_t, z, a, *a_θ)`` as torchdiffeq
        keeps it (on the autograd node, where it can be replaced before ``backward``);
        the default and the seminorm also read the flat state directly.
        """
        problem = self.problem
        forward = problem.method
        # The forward solve's norm measures z and a, as torchdiffeq does; without one,
        # the channel RMS does (one channel per member of a tuple state).
        state_norm = forward.adaptive.norm if forward.kind == "adaptive" else None
        members = problem.layout.numels if problem.layout is not None else (self.layout.n,)
        if norm is None or norm == "seminorm":
            tuple_norm = _ChannelRMSNorm(self.layout, members, state_norm, norm is None, like)
        elif callable(norm):
            tuple_norm = _user_norm(norm, problem)
        else:
            raise UnknownOptionError(f"adjoint norm must be 'seminorm' or a callable, got {norm!r}")
        self.adjoint_options = {"norm": tuple_norm}
        unpack = self.layout.unpack

        def adjoint_norm(x: torch.Tensor) -> torch.Tensor:
            current = self.adjoint_options["norm"]
            if current is tuple_norm and isinstance(current, _ChannelRMSNorm):
                return current(x)
            return current(unpack(x))

        return adjoint_norm

    def _adjoint_callbacks(self) -> Callbacks:
        func = self.problem.func

        def wrap(name: str) -> Callable | None:
            callback = getattr(func, f"{name}_adjoint", None)
            if callback is None:
                return None
            return lambda tau, x, h: callback(
                self.dynamics.user_time(tau), self.layout.unpack(x), h
            )

        return Callbacks(
            step=wrap("callback_step"),
            accept_step=wrap("callback_accept_step"),
            reject_step=wrap("callback_reject_step"),
        )

    def _interval_method(self, tau0: float, tau1: float, x: torch.Tensor) -> MethodSpec:
        """The solver of the backward interval ``[tau0, tau1]``."""
        spec = self.spec
        if spec.kind != "fixed":
            return spec
        if self.forward_grid is not None:
            # The forward grid points strictly inside [s1, s0] = [-tau1, -tau0], reversed.
            grid = self.forward_grid
            lo, hi = bisect.bisect_right(grid, -tau1), bisect.bisect_left(grid, -tau0)
            inner = [-grid[k] for k in range(hi - 1, lo - 1, -1)]
            grid = [tau0, *inner, tau1]
            return dataclasses.replace(
                spec, fixed=dataclasses.replace(spec.fixed, grid=grid, step_size=None)
            )
        return build_method(
            self.name,
            self.solver_options,
            self.rtol,
            self.atol,
            [tau0, tau1],
            x,
            grid_constructor_args=lambda: (
                self.dynamics,
                x,
                torch.tensor([tau0, tau1], dtype=self.problem.time_dtype, device=x.device),
            ),
            reversed_time=self.reversed_backward,
        )

    # ........................................................................ solving
    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        problem = self.problem
        # A few states of the forward solve, to check the backward reconstruction against.
        self.recorder = StepRecorder(_CHECK_STATES, all_times=False)
        user = problem.callbacks
        callbacks = Callbacks(
            step=user.step,
            accept_step=chain_callbacks(user.accept_step, self.recorder),
            reject_step=user.reject_step,
        )
        trajectory = problem.integrate(
            y0, self.t_solver, record_segments=self.record_segments, callbacks=callbacks
        )
        self.stats.update(trajectory.stats)
        self.stats["nfe"] = problem.nfe
        self.segments = trajectory.segments
        return torch.stack(trajectory.ys)

    def backward_user_time(self, tau: float) -> float:
        """The user's time of backward solver time ``τ = -s``."""
        return self.problem.user_time(-tau)

    def _drift(self, z: torch.Tensor, reference: torch.Tensor) -> float:
        """RMS of ``(z − y) / (atol + rtol·‖y‖∞)``: the reconstruction's error in tolerances.

        Measured against the state's size as a whole: a component passing through zero
        is reconstructed to the precision of the others, not to ``atol``.
        """
        scale = self.state_atol + self.state_rtol * reference.abs().max()
        return float(((z.reshape(reference.shape) - reference) / scale).square().mean().sqrt())

    def _check_drift(self, z: torch.Tensor, reference: torch.Tensor, s: float) -> None:
        if self.problem.method.kind != "adaptive":
            return  # tolerances say nothing about a fixed grid's accuracy
        drift = self._drift(z, reference)
        self.stats["reconstruction_drift"] = max(self.stats.get("reconstruction_drift", 0.0), drift)
        if not drift <= self.drift_limit:
            time = self.problem.user_time(s)
            raise AdjointDivergedError(
                f"the backsolve adjoint re-integrated the state backwards to t={time:.6g} and "
                f"arrived {drift:.3g} tolerances away from the forward solution there, so its "
                "gradient would be wrong: the dynamics contract too strongly (or are chaotic) "
                "to be run backwards. Use gradient='checkpoint' (exact, memory ~ √steps) or "
                "'direct'.",
                t=time,
            )

    def _forward_steps_before(self, s: float) -> float:
        """About how many forward steps ended before solver time ``s`` (interpolated)."""
        recorder = self.recorder
        times = [*recorder.state_times, self.t_solver[-1]]
        counts = [*recorder.indices, recorder.steps]
        k = bisect.bisect_right(times, s)
        if k == 0:
            return 0.0
        if k == len(times):
            return float(counts[-1])
        t0, t1, c0, c1 = times[k - 1], times[k], counts[k - 1], counts[k]
        return c0 + (c1 - c0) * (s - t0) / (t1 - t0) if t1 > t0 else float(c0)

    def _budget_callback(self, user_step: Callable | None) -> Callable | None:
        """Counts the backward steps against the forward steps over the span covered so far.

        A healthy backward solve takes one to two times as many steps as the forward one;
        more than ``_STEP_BUDGET_FACTOR`` times (plus a margin) means it is crawling.
        """
        if self.drift_limit == math.inf or self.problem.method.kind != "adaptive":
            return user_step
        start = self._forward_steps_before(self.t_solver[-1])
        taken = [0]

        def check(tau: float, x: torch.Tensor, h: float) -> None:
            taken[0] += 1
            covered = start - self._forward_steps_before(-tau)
            if taken[0] > _STEP_BUDGET_FACTOR * covered + _STEP_BUDGET_MARGIN:
                time = self.backward_user_time(tau)
                raise AdjointDivergedError(
                    f"the backsolve adjoint took {taken[0]} steps to integrate backwards to "
                    f"t={time:.6g}, where the forward solve took about {covered:.0f}: "
                    "re-integrating the state backwards is diverging (the dynamics contract "
                    "too strongly, are stiff, or are chaotic), so its gradient would be wrong. "
                    "Use gradient='checkpoint' (exact, memory ~ √steps) or 'direct'.",
                    t=time,
                )
            if user_step is not None:
                user_step(tau, x, h)

        return check

    def backward(self, ys: torch.Tensor, grad_ys: torch.Tensor, needs_grad: Sequence[bool]):
        problem, layout, t_solver = self.problem, self.layout, self.t_solver
        nfe_before = problem.nfe
        steps = 0
        time_grads = save_time_gradients(problem, t_solver, ys, grad_ys) if self.time_grad else None
        x = layout.initial(ys[-1], grad_ys[-1])
        callbacks = dataclasses.replace(
            self.callbacks, step=self._budget_callback(self.callbacks.step)
        )
        checks = sorted(zip(self.recorder.state_times, self.recorder.states), key=lambda c: c[0])
        for i in range(len(t_solver) - 1, 0, -1):
            if time_grads is not None:
                x[-1] -= time_grads[i]
            tau0, tau1 = -t_solver[i], -t_solver[i - 1]
            inside = [c for c in checks if t_solver[i - 1] < c[0] < t_solver[i]][::-1]
            trajectory = problem.integrate(
                x,
                [tau0, *(-s for s, _ in inside), tau1],
                func=self.dynamics,
                method=self._interval_method(tau0, tau1, x),
                callbacks=callbacks,
                user_time=self.backward_user_time,
            )
            steps += trajectory.stats.get("steps", 0)
            for (s, state), reached in zip(inside, trajectory.ys[1:-1]):
                self._check_drift(reached[: layout.n], state, s)
            self._check_drift(trajectory.ys[-1][: layout.n], ys[i - 1], t_solver[i - 1])
            x = trajectory.ys[-1].clone()
            x[: layout.n] = ys[i - 1].reshape(-1)
            x[layout.n : 2 * layout.n] += grad_ys[i - 1].reshape(-1)
        record_backward_stats(
            self.stats, nfe_backward=problem.nfe - nfe_before, steps_backward=steps
        )

        grad_y0 = layout.a(x).clone() if needs_grad[0] else None
        grad_t = None
        if time_grads is not None and needs_grad[1]:
            time_grads[0] = x[-1]
            grad_t = torch.stack(time_grads).to(self.t.dtype)
        grad_params = layout.param_gradients(x)
        grad_params = [g if need else None for g, need in zip(grad_params, needs_grad[2:])]
        return grad_y0, grad_t, grad_params


def _inherited_adaptive(forward: AdaptiveOptions, rtol, atol) -> AdaptiveOptions:
    """The forward solve's step-size settings, with breakpoints in backward time."""
    return dataclasses.replace(
        forward,
        rtol=rtol,
        atol=atol,
        step_t=tuple(-s for s in forward.step_t),
        jump_t=tuple(-s for s in forward.jump_t),
    )


register("backsolve", solve_backsolve)
