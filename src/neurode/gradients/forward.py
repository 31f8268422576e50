r"""Forward sensitivities: the Jacobians of the solution, integrated alongside it.

With ``S(t) = ∂y(t)/∂(y0, θ)`` (``n × m``, ``m = n + p`` columns for the state
and the ``p`` parameter entries) the sensitivity equation is

    S' = ∂f/∂y · S + [0 | ∂f/∂θ],     S(t0) = [I | 0].

It is solved in the same Runge–Kutta steps as ``y``, with the step sizes chosen
from the error of ``y`` alone. Runge–Kutta methods commute with
differentiation, so ``S`` is then exactly the derivative of the discrete solve:
the gradients equal ``gradient="direct"``'s to rounding, without storing the
trajectory and without a backward solve.

The products ``∂f/∂y · S + ∂f/∂θ`` come from one of two strategies
(``gradient_options={"jacobian": ...}``):

- ``"forward"``: forward-mode AD, one Jacobian–vector product per column of
  ``S`` (``torch.func.jvp`` vectorised with ``torch.func.vmap``; the parameters
  are swapped in with ``torch.func.functional_call``, so ``func`` must be an
  ``nn.Module`` owning them). Cost per evaluation: ``m`` products.
- ``"reverse"``: the ``n`` rows of ``[∂f/∂y | ∂f/∂θ]`` by vector–Jacobian
  products (batched), then a matrix product. Cost per evaluation: ``n``
  products whatever the number of parameters; works for any ``func``.
- ``"auto"`` (default): ``"forward"`` when it needs fewer products (``m < n``:
  ``y0`` not differentiated, fewer parameters than state entries) and ``func``
  is a module owning the parameters, else ``"reverse"``.

``"vectorize": False`` loops over columns (or rows) instead of batching them,
for functions that ``vmap`` cannot trace.

When to use it. The number of evaluations is the plain solve's and there is no
backward pass; memory holds ``n (1 + m)`` numbers per stage and never grows with
the number of steps. But each evaluation costs ``min(m, n)`` extra products, so
in wall time it pays when the state is tiny. Measured on a CPU (float64, one
thread, dopri5 at rtol 1e-8, 21 save times; solve + backward, relative to
``"direct"``): a pendulum with 2 parameters (n = 2) — ``"reverse"`` 3.8×,
``"forward"`` 4.6×, backsolve 2.7×, reversible 3.3×, checkpoint 1.5×; an MLP
2–16–2 (82 parameters) — ``"reverse"`` 3.4×, ``"forward"`` 4.8×, backsolve 12×,
reversible 5.8×, checkpoint 1.3×. So for gradients of a scalar loss reverse
mode through the steps is faster when its memory is affordable; forward
sensitivities cost about what the constant-memory adjoints cost on small
states, need no backward solve, and give every Jacobian at once:
:func:`sensitivities` took 1/6 (pendulum) to 1/9 (MLP) of the time of one
reverse pass per output entry (a batched reverse pass over the stored graph,
``is_grads_batched=True``, is faster still when memory allows).
For large states (``n`` in the hundreds) use reverse mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from ..errors import NeurodeInputError, StiffGradientError
from ..integrate.augmented_jacobian import AugmentedJacobian, BlockStructure
from ..integrate.dense_output import Segment
from ..integrate.error_norm import rms_norm
from ..integrate.loop import Trajectory
from ..integrate.problem import ODEProblem
from . import GradientResult, check_options, register
from ._time_gradients import with_time_gradients
from .captured import guard_first_evaluation
from .stiff_guard import refuse_gradients_past_stiffness

_OPTIONS = frozenset({"jacobian", "vectorize", "jacobians"})
_STRATEGIES = ("auto", "forward", "reverse")


class _AugmentedField:
    """``(y, S) ↦ (f, ∂f/∂y · S + [0 | ∂f/∂θ])`` on the flat vector ``[y, vec(S)]``."""

    def __init__(
        self,
        problem: ODEProblem,
        params: tuple[torch.Tensor, ...],
        with_y0: bool,
        strategy: str,
        vectorize: bool,
        param_names: list[str] | None,
    ):
        self.problem = problem
        self.original_params = params
        self.params = tuple(p.detach() for p in params)
        self.shape = problem.state_shape
        self.n = int(torch.Size(self.shape).numel())
        self.n_y0 = self.n if with_y0 else 0
        self.param_sizes = [p.numel() for p in params]
        self.m = self.n_y0 + sum(self.param_sizes)
        self.strategy = strategy
        self.vectorize = vectorize
        self.param_names = param_names
        if param_names is not None:
            self._holder = _ModuleHolder(problem.func, problem.vector_field)
        if strategy == "forward":
            self._param_tangents = self._one_hot_param_tangents()

    @property
    def jacobian_blocks(self) -> AugmentedJacobian:
        """For implicit methods: ``J`` on ``y`` and on every column of ``S``."""
        blocks = ((1, 1.0, False),) + (((self.m, 1.0, False),) if self.m else ())
        return AugmentedJacobian(
            lambda t, y, perturb=0: self.problem.vector_field(t, y, perturb),
            self.shape,
            BlockStructure(self.n, blocks),
        )

    # ------------------------------------------------------------------ layout
    def initial_state(self, y0: torch.Tensor) -> torch.Tensor:
        s0 = torch.zeros(self.n, self.m, dtype=y0.dtype, device=y0.device)
        if self.n_y0:
            s0[:, : self.n_y0] = torch.eye(self.n, dtype=y0.dtype, device=y0.device)
        return torch.cat([y0.detach().reshape(-1), s0.reshape(-1)])

    def split(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return u[: self.n].view(self.shape), u[self.n :].view(self.n, self.m)

    def _one_hot_param_tangents(self) -> list[torch.Tensor]:
        """For each parameter, its tangent in each of the ``m`` columns: ``(m, *p.shape)``."""
        tangents = []
        offset = self.n_y0
        for p, size in zip(self.params, self.param_sizes):
            tangent = torch.zeros(self.m, size, dtype=p.dtype, device=p.device)
            tangent[offset : offset + size] = torch.eye(size, dtype=p.dtype, device=p.device)
            tangents.append(tangent.view(self.m, *p.shape))
            offset += size
        return tangents

    def _field_with(self, t: float, y: torch.Tensor, perturb: int, params) -> torch.Tensor:
        """The vector field with ``params`` in place of the module's own parameters."""
        substituted = {f"module.{name}": p for name, p in zip(self.param_names, params)}
        return torch.func.functional_call(self._holder, substituted, (t, y, perturb))

    # ------------------------------------------------------------------ field
    def __call__(self, t: float, u: torch.Tensor, perturb: int = 0) -> torch.Tensor:
        y, s = self.split(u)
        if self.m == 0:
            return torch.cat([self.problem.vector_field(t, y, perturb).reshape(-1), u[self.n :]])
        if self.strategy == "forward":
            f, js = self._forward_products(t, y, s, perturb)
        else:
            f, js = self._reverse_products(t, y, s, perturb)
        return torch.cat([f.reshape(-1), js.reshape(-1)])

    def _forward_products(self, t, y, s, perturb):
        def column_product(dy, *dps):
            return torch.func.jvp(
                lambda y_, *ps: self._field_with(t, y_, perturb, ps),
                (y, *self.params),
                (dy, *dps),
            )

        columns = s.t().reshape(self.m, *self.shape)
        if self.vectorize:
            f, products = torch.func.vmap(column_product, out_dims=(None, 0))(
                columns, *self._param_tangents
            )
        else:
            results = [
                column_product(columns[j], *(tangent[j] for tangent in self._param_tangents))
                for j in range(self.m)
            ]
            f = results[0][0]
            products = torch.stack([product for _, product in results])
        return f, products.reshape(self.m, self.n).t()

    def _reverse_products(self, t, y, s, perturb):
        with torch.enable_grad():
            y_leaf = y.detach().requires_grad_(True)
            if self.param_names is not None:
                params = tuple(p.detach().requires_grad_(True) for p in self.params)
                f = self._field_with(t, y_leaf, perturb, params)
            else:
                params = self.original_params
                f = self.problem.vector_field(t, y_leaf, perturb)
            inputs = (y_leaf, *params)
            if f.requires_grad:
                rows = self._jacobian_rows(f, inputs)
            else:
                rows = [
                    torch.zeros(self.n, x.numel(), dtype=f.dtype, device=f.device) for x in inputs
                ]
        js = rows[0] @ s
        offset = self.n_y0
        for jac_p, size in zip(rows[1:], self.param_sizes):
            js[:, offset : offset + size] += jac_p.to(js.dtype)
            offset += size
        return f.detach(), js

    def _jacobian_rows(self, f: torch.Tensor, inputs) -> list[torch.Tensor]:
        """``∂f/∂x`` for each input ``x`` as an ``(n, x.numel())`` matrix, one row per output."""
        flat = f.reshape(-1)
        eye = torch.eye(self.n, dtype=f.dtype, device=f.device)
        if self.vectorize:
            grads = torch.autograd.grad(
                flat, inputs, eye, is_grads_batched=True, allow_unused=True, materialize_grads=True
            )
            return [g.reshape(self.n, -1) for g in grads]
        rows = [[] for _ in inputs]
        for i in range(self.n):
            grads = torch.autograd.grad(
                flat, inputs, eye[i], retain_graph=True, allow_unused=True, materialize_grads=True
            )
            for collected, g in zip(rows, grads):
                collected.append(g.reshape(-1))
        return [torch.stack(collected) for collected in rows]


class _ModuleHolder(torch.nn.Module):
    """Holds the user's module so that ``functional_call`` can swap its parameters
    while the call still goes through the problem's checks and orientation."""

    def __init__(self, module: torch.nn.Module, call: Callable):
        super().__init__()
        self.module = module
        self._call = call

    def forward(self, t: float, y: torch.Tensor, perturb: int) -> torch.Tensor:
        return self._call(t, y, perturb)


def _parse_options(options: dict[str, Any]) -> tuple[str, bool, dict | None]:
    check_options("forward", options, _OPTIONS)
    strategy = options.get("jacobian", "auto")
    if strategy not in _STRATEGIES:
        raise NeurodeInputError(
            f"jacobian must be one of {', '.join(_STRATEGIES)}, got {strategy!r}"
        )
    vectorize = options.get("vectorize", True)
    if not isinstance(vectorize, bool):
        raise NeurodeInputError(f"vectorize must be True or False, got {vectorize!r}")
    sink = options.get("jacobians")
    if sink is not None and not isinstance(sink, dict):
        raise NeurodeInputError("jacobians must be a dict to receive the sensitivities")
    return strategy, vectorize, sink


def _parameter_names(func: Any, params: Sequence[torch.Tensor]) -> list[str] | None:
    """The names of ``params`` inside ``func`` (an ``nn.Module``), or None if any is not its own."""
    if not isinstance(func, torch.nn.Module):
        return None
    by_id = {}
    for name, tensor in (
        *func.named_parameters(remove_duplicate=False),
        *func.named_buffers(remove_duplicate=False),
    ):
        by_id.setdefault(id(tensor), name)
    names = [by_id.get(id(p)) for p in params]
    return None if any(name is None for name in names) else names


def _choose_strategy(
    strategy: str, problem: ODEProblem, params: Sequence[torch.Tensor], n: int, m: int
) -> tuple[str, list[str] | None]:
    names = _parameter_names(problem.func, params)
    if strategy == "forward" and names is None:
        raise NeurodeInputError(
            "jacobian='forward' swaps the parameters into func with torch.func.functional_call, "
            "so func must be an nn.Module owning every parameter; use jacobian='reverse'"
        )
    if strategy == "auto":
        strategy = "forward" if names is not None and m < n else "reverse"
    return strategy, names


def _adaptive_options_on_state(spec, n: int, total: int, like: torch.Tensor):
    """The method's adaptive options, measuring the error of ``y`` only."""
    options = spec.adaptive
    base_norm = options.norm or rms_norm

    def state_norm(scaled: torch.Tensor) -> torch.Tensor:
        return base_norm(scaled[:n].view(like.shape))

    def extend(tol):
        if isinstance(tol, torch.Tensor) and tol.numel() > 1:
            head = tol.to(like.dtype).expand(like.shape).reshape(-1)
            return torch.cat([head, torch.ones(total - n, dtype=like.dtype, device=like.device)])
        return tol

    return replace(
        spec,
        adaptive=replace(
            options, norm=state_norm, rtol=extend(options.rtol), atol=extend(options.atol)
        ),
    )


def _project_segments(segments: list[Segment] | None, field: _AugmentedField):
    if segments is None:
        return None

    def part(x):
        return None if x is None else x[: field.n].view(field.shape)

    return [
        Segment(
            s.t0,
            s.t1,
            part(s.y0),
            part(s.y1),
            [part(k) for k in s.stages],
            part(s.f1),
            s.tableau,
            s.interpolation,
        )
        for s in segments
    ]


def integrate_sensitivities(
    problem: ODEProblem,
    y0: torch.Tensor,
    t_solver: list[float],
    params: tuple[torch.Tensor, ...],
    *,
    with_y0: bool = True,
    jacobian: str = "auto",
    vectorize: bool = True,
    record_segments: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, list[Segment] | None, dict[str, int], float | None]:
    """Solve for ``y`` and ``S = ∂y/∂(y0, θ)`` at the save times.

    Returns ``ys`` of shape ``(T, *state_shape)``, ``S`` of shape ``(T, n, m)`` (columns:
    the ``n`` state entries if ``with_y0``, then each parameter's entries, flattened),
    the dense output of ``y``, the loop's statistics, and the time where an explicit
    method was found held at its stability limit (None if it was not).
    """
    n = int(torch.Size(problem.state_shape).numel())
    m = (n if with_y0 else 0) + sum(p.numel() for p in params)
    strategy, names = _choose_strategy(jacobian, problem, params, n, m)
    if strategy == "reverse" and names is None and not all(p.requires_grad for p in params):
        raise NeurodeInputError(
            "the parameters of a func that is not an nn.Module can only be differentiated "
            "if they require grad"
        )
    if strategy == "reverse" and torch.is_grad_enabled():
        guard_first_evaluation(problem, params, "forward")
    field = _AugmentedField(problem, params, with_y0, strategy, vectorize, names)
    spec = problem.method
    if spec.kind == "adaptive":
        spec = _adaptive_options_on_state(spec, n, n * (1 + m), y0)
    with torch.no_grad():
        trajectory: Trajectory = problem.integrate(
            field.initial_state(y0),
            t_solver,
            func=field,
            method=spec,
            record_segments=record_segments,
        )
    ys, sens = zip(*(field.split(u) for u in trajectory.ys))
    return (
        torch.stack(ys),
        torch.stack(sens),
        _project_segments(trajectory.segments, field),
        dict(trajectory.stats),
        trajectory.stiff_at,
    )


class _ForwardSensitivitySolve(torch.autograd.Function):
    """``(y0, *params) ↦ ys``; backward contracts the stored sensitivities with ``grad_ys``."""

    @staticmethod
    def forward(ctx, runner: dict, y0: torch.Tensor, *params: torch.Tensor):
        ys, sens, segments, stats, stiff_at = integrate_sensitivities(
            runner["problem"],
            y0.detach(),
            runner["t_solver"],
            params,
            with_y0=runner["with_y0"],
            jacobian=runner["jacobian"],
            vectorize=runner["vectorize"],
            record_segments=runner["record_segments"],
        )
        runner["segments"], runner["stats"], runner["stiff_at"] = segments, stats, stiff_at
        ctx.runner = runner
        ctx.param_shapes = [p.shape for p in params]
        ctx.save_for_backward(sens)
        return ys

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor):
        (sens,) = ctx.saved_tensors
        runner = ctx.runner
        total = torch.einsum("tnm,tn->m", sens, grad_ys.reshape(sens.shape[0], -1).to(sens.dtype))
        n_y0 = sens.shape[1] if runner["with_y0"] else 0
        grad_y0 = total[:n_y0].view(grad_ys.shape[1:]) if runner["with_y0"] else None
        grads, offset = [], n_y0
        for shape in ctx.param_shapes:
            size = int(torch.Size(shape).numel())
            grads.append(total[offset : offset + size].view(shape))
            offset += size
        runner["stats_out"].setdefault("nfe_backward", 0)
        return (None, grad_y0, *grads)


def solve_forward(
    problem: ODEProblem,
    y0: torch.Tensor,
    t: torch.Tensor,
    t_solver: list[float],
    *,
    params: tuple[torch.Tensor, ...] = (),
    options: dict[str, Any] | None = None,
    record_segments: bool = False,
) -> GradientResult:
    jacobian, vectorize, sink = _parse_options(dict(options or {}))
    if sink is not None:
        return _solve_into(
            sink, problem, y0, t_solver, params, jacobian, vectorize, record_segments
        )
    trainable = tuple(p for p in params if p.requires_grad)
    stats: dict[str, Any] = {}
    produced: dict[str, Any] = {}

    def run(start: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (start.requires_grad or trainable):
            runner = {
                "problem": problem,
                "t_solver": t_solver,
                "with_y0": start.requires_grad,
                "jacobian": jacobian,
                "vectorize": vectorize,
                "record_segments": record_segments,
                "stats_out": stats,
            }
            ys = _ForwardSensitivitySolve.apply(runner, start, *trainable)
            stats.update(runner["stats"])
            produced["segments"] = runner["segments"]
            produced["stiff_at"] = runner["stiff_at"]
            return ys
        if torch.is_grad_enabled():
            guard_first_evaluation(problem, trainable, "forward")
        with torch.no_grad():
            trajectory = problem.integrate(start, t_solver, record_segments=record_segments)
        stats.update(trajectory.stats)
        produced["segments"] = trajectory.segments
        return torch.stack(trajectory.ys)

    ys = with_time_gradients(problem, y0, t, run)
    segments = produced["segments"]
    stats["nfe"] = problem.nfe
    # S is the derivative of the discrete steps, the same as direct backpropagation's.
    ys = refuse_gradients_past_stiffness(ys, t, produced.get("stiff_at"), problem.method.name)
    return GradientResult(ys=ys, stats=stats, segments=segments)


def _solve_into(sink, problem, y0, t_solver, params, jacobian, vectorize, record_segments):
    """Every Jacobian, for :func:`sensitivities`: ``sink["dy_dy0"]``, ``sink["dy_dparams"]``."""
    ys, sens, segments, stats, stiff_at = integrate_sensitivities(
        problem,
        y0.detach(),
        t_solver,
        tuple(params),
        with_y0=True,
        jacobian=jacobian,
        vectorize=vectorize,
        record_segments=record_segments,
    )
    if stiff_at is not None:
        raise StiffGradientError(
            f"{problem.method.name} was held at its stability limit from t={stiff_at:.6g} on: "
            "its sensitivities there are those of steps with frozen sizes, not the "
            "solution's. Use method='auto', 'rodas5p' or 'kvaerno5'.",
            t=stiff_at,
        )
    n = sens.shape[1]
    sink["dy_dy0"] = sens[:, :, :n]
    blocks, offset = [], n
    for p in params:
        blocks.append(sens[:, :, offset : offset + p.numel()].reshape(*sens.shape[:2], *p.shape))
        offset += p.numel()
    sink["dy_dparams"] = tuple(blocks)
    stats["nfe"] = problem.nfe
    return GradientResult(ys=ys, stats=stats, segments=segments)


register("forward", solve_forward)
