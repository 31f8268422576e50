r"""A health check of the gradient methods on one problem.

:func:`check_gradients` differentiates a scalar loss of the solution with
respect to ``y0`` and the parameters with every gradient method asked for, and
compares each gradient ``g`` with

- a reference ``g_ref``: direct backpropagation through a solve with the same
  method and options at tolerances a thousand times tighter (for a fixed-step
  method, the same grid — the exact gradient of that discrete solve);
  reported as ``‖g − g_ref‖ / ‖g_ref‖``;
- central finite differences of the loss (solved as the reference) along a few
  random unit directions ``d`` of ``(y0, θ)``:
  ``fd = (L(x + εd) − L(x − εd)) / 2ε``, reported as
  ``max_d |⟨g, d⟩ − fd| / ‖g_ref‖``. Its floor is about
  ``ε² · |L'''| + rtol_ref / ε``: 1e-10 to 1e-7 in float64 with the defaults.

It also reports each method's forward and backward function evaluations. A
method whose error against the reference exceeds ``drift_threshold`` triggers a
:class:`GradientDriftWarning` — typically the backsolve adjoint on a strongly
damped or stiff problem, where re-integrating the state backwards amplifies
its errors.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import gradients
from .api import solve
from .errors import NeurodeInputError, SolverError

DEFAULT_METHODS = ("direct", "backsolve", "checkpoint", "reversible", "forward")
_REFERENCE_FACTOR = 1e-3

_ADVICE = {
    "backsolve": "re-integrating the state backwards is unstable here; use "
    "gradient='checkpoint' (or 'direct'), or tighten adjoint_rtol/adjoint_atol",
    "reversible": "leave gradient_options['coupling'] automatic, or use "
    "gradient='checkpoint' (see neurode.gradients.reversible)",
}


class GradientDriftWarning(UserWarning):
    """A gradient method's result is far from the reference gradient."""


@dataclass
class MethodReport:
    """How one gradient method did."""

    name: str
    error_vs_reference: float | None = None
    """``‖g − g_ref‖ / ‖g_ref‖``; None if the method did not run."""
    error_vs_finite_differences: float | None = None
    """``max_d |⟨g, d⟩ − fd_d| / ‖g_ref‖`` over the random directions."""
    nfe_forward: int | None = None
    nfe_backward: int | None = None
    note: str = ""

    diverged: bool = False
    """The method stopped with a :class:`~neurode.errors.SolverError` (its own check found
    that it could not give a correct gradient here)."""

    @property
    def ran(self) -> bool:
        return self.error_vs_reference is not None


@dataclass
class GradientReport:
    """The result of :func:`check_gradients`; ``str(report)`` is a table."""

    methods: list[MethodReport]
    reference: MethodReport
    eps: float
    n_directions: int
    reference_rtol: float
    reference_atol: float
    drift_threshold: float
    settings: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> MethodReport:
        for report in self.methods:
            if report.name == name:
                return report
        raise KeyError(name)

    @property
    def drifting(self) -> list[str]:
        """Methods whose error against the reference exceeds the threshold, or that diverged."""
        return [
            r.name
            for r in self.methods
            if (r.ran and not r.error_vs_reference <= self.drift_threshold) or r.diverged
        ]

    def __str__(self) -> str:
        header = ("method", "vs reference", "vs finite diff", "nfe fwd", "nfe bwd", "note")
        rows = [header]
        for report in [self.reference, *self.methods]:
            rows.append(
                (
                    report.name,
                    _number(report.error_vs_reference),
                    _number(report.error_vs_finite_differences),
                    _count(report.nfe_forward),
                    _count(report.nfe_backward),
                    report.note,
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        lines = [
            f"gradient check ({self.settings.get('method')}, rtol={self.settings.get('rtol'):g}, "
            f"atol={self.settings.get('atol'):g}): reference = direct at rtol="
            f"{self.reference_rtol:g}, atol={self.reference_atol:g}; {self.n_directions} "
            f"random directions, eps={self.eps:.2g}; relative errors"
        ]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths)]
            lines.append("  ".join(cells) + ("  " + row[-1] if row[-1] else "").rstrip())
        return "\n".join(line.rstrip() for line in lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


# --------------------------------------------------------------------------- checks
def _check_arguments(func, methods, loss, n_directions, eps, seed, rtol, atol, threshold):
    if not callable(func):
        raise NeurodeInputError("func must be callable as func(t, y)")
    if isinstance(methods, str) or not isinstance(methods, Sequence):
        raise NeurodeInputError(
            f"methods must be a sequence of gradient method names, got {methods!r}"
        )
    if not methods or not all(isinstance(m, str) for m in methods):
        raise NeurodeInputError("methods must be a non-empty sequence of strings")
    if loss is not None and not callable(loss):
        raise NeurodeInputError("loss must be callable as loss(ys) -> scalar tensor")
    if isinstance(n_directions, bool) or not isinstance(n_directions, int) or n_directions < 0:
        raise NeurodeInputError(f"n_directions must be a non-negative int, got {n_directions!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise NeurodeInputError(f"seed must be an int, got {seed!r}")
    for name, value in (("eps", eps), ("drift_threshold", threshold)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NeurodeInputError(f"{name} must be a positive number, got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise NeurodeInputError(f"{name} must be positive and finite, got {value}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NeurodeInputError(f"{name} must be a number, got {value!r}")
        if not (math.isfinite(value) and value >= 0):
            raise NeurodeInputError(f"{name} must be finite and non-negative, got {value}")


def _state_members(y0: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(y0, torch.Tensor):
        return (y0,)
    if isinstance(y0, (tuple, list)) and y0 and all(isinstance(y, torch.Tensor) for y in y0):
        return tuple(y0)
    raise NeurodeInputError("y0 must be a tensor or a non-empty tuple of tensors")


def _default_loss(ys: Any, seed: int) -> Callable[[Any], torch.Tensor]:
    """``L = Σ_i ⟨w_i, y(t_i)⟩`` with fixed random weights: no accidental cancellation."""
    members = ys if isinstance(ys, tuple) else (ys,)
    generator = torch.Generator().manual_seed(seed + 1)
    weights = [
        torch.randn(m.shape, generator=generator, dtype=torch.float64).to(m.dtype) for m in members
    ]

    def loss(values: Any) -> torch.Tensor:
        values = values if isinstance(values, tuple) else (values,)
        return sum((w.to(v.device) * v).sum() for w, v in zip(weights, values))

    return loss


# ------------------------------------------------------------------------ the check
def check_gradients(
    func: Callable,
    y0: torch.Tensor | tuple[torch.Tensor, ...],
    t: torch.Tensor | Sequence[float],
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    loss: Callable[[Any], torch.Tensor] | None = None,
    method: str | None = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: dict[str, Any] | None = None,
    gradient_options: dict[str, dict[str, Any]] | None = None,
    params: Sequence[torch.Tensor] | None = None,
    n_directions: int = 3,
    eps: float | None = None,
    seed: int = 0,
    reference_rtol: float | None = None,
    reference_atol: float | None = None,
    drift_threshold: float | None = None,
) -> GradientReport:
    """Compare the gradient methods with a tight reference and with finite differences.

    Args:
        func, y0, t, method, rtol, atol, options: the problem, as for :func:`neurode.solve`.
        methods: gradient methods to check; names not registered are skipped with a note.
        loss: ``loss(ys) -> scalar`` of the saved states (default: a fixed random
            linear functional ``Σ_i ⟨w_i, y(t_i)⟩``).
        gradient_options: per method name, its ``gradient_options``.
        params: the parameters to differentiate (default: ``func``'s parameters that
            require grad, if it is an ``nn.Module``).
        n_directions: random directions for the finite differences (0 skips them).
        eps: finite-difference step (default ``machine_eps ** (1/3)``).
        seed: seeds the directions and the default loss.
        reference_rtol, reference_atol: tolerances of the reference (default: a
            thousandth of ``rtol``/``atol``, not below 100 machine epsilons).
        drift_threshold: relative error against the reference above which a
            :class:`GradientDriftWarning` is emitted (default ``max(1e3 · rtol, 1e-6)``).

    Returns:
        a :class:`GradientReport`.
    """
    _check_arguments(func, methods, loss, n_directions, eps, seed, rtol, atol, drift_threshold)
    members = _state_members(y0)
    if gradient_options is not None and not isinstance(gradient_options, dict):
        raise NeurodeInputError("gradient_options must map method names to option dicts")
    gradient_options = dict(gradient_options or {})
    if params is None:
        params = (
            [p for p in func.parameters() if p.requires_grad]
            if isinstance(func, torch.nn.Module)
            else []
        )
    params = list(params)
    if not all(isinstance(p, torch.Tensor) and p.is_floating_point() for p in params):
        raise NeurodeInputError("params must be floating-point tensors")
    dtype = members[0].dtype
    machine_eps = torch.finfo(dtype).eps
    eps = float(eps) if eps is not None else machine_eps ** (1 / 3)
    floor = 100 * machine_eps
    reference_rtol = (
        max(rtol * _REFERENCE_FACTOR, floor) if reference_rtol is None else reference_rtol
    )
    reference_atol = atol * _REFERENCE_FACTOR if reference_atol is None else reference_atol
    threshold = max(1e3 * rtol, 1e-6) if drift_threshold is None else float(drift_threshold)
    is_tuple = not isinstance(y0, torch.Tensor)

    def run(gradient: str, tolerances: tuple[float, float], inputs, grad: bool, opts=None):
        state = tuple(inputs) if is_tuple else inputs[0]
        return solve(
            func,
            state,
            t,
            method=method,
            rtol=tolerances[0],
            atol=tolerances[1],
            options=options,
            gradient=gradient,
            gradient_options=opts,
            params=params if grad else None,
        )

    reference_tolerances = (reference_rtol, reference_atol)
    leaves = [m.detach().clone() for m in members]
    with torch.no_grad():
        probe = run("direct", reference_tolerances, leaves, grad=False)
    loss_fn = loss if loss is not None else _default_loss(probe.ys, seed)

    def gradient_of(gradient: str, tolerances, opts=None):
        inputs = [m.detach().clone().requires_grad_(True) for m in members]
        solution = run(gradient, tolerances, inputs, grad=True, opts=opts)
        value = loss_fn(solution.ys)
        _check_loss(value)
        grads = torch.autograd.grad(value, [*inputs, *params], allow_unused=True)
        flat = torch.cat(
            [
                (torch.zeros_like(x) if g is None else g).reshape(-1).to("cpu", torch.float64)
                for x, g in zip([*inputs, *params], grads)
            ]
        )
        return flat, solution.stats

    reference_grad, reference_stats = gradient_of("direct", reference_tolerances)
    reference_norm = float(reference_grad.norm()) or 1.0
    directions = _directions(members, params, n_directions, seed)
    fd_values = [
        _central_difference(run, loss_fn, members, params, d, eps, reference_tolerances)
        for d in directions
    ]

    def fd_error(g: torch.Tensor) -> float | None:
        if not directions:
            return None
        return max(abs(float(g @ d) - fd) for d, fd in zip(directions, fd_values)) / reference_norm

    reference = MethodReport(
        name="reference",
        error_vs_reference=0.0,
        error_vs_finite_differences=fd_error(reference_grad),
        nfe_forward=int(reference_stats.get("nfe", 0)),
        nfe_backward=int(reference_stats.get("nfe_backward", 0)),
        note="direct",
    )
    available = set(gradients.names())
    reports = []
    for name in methods:
        if name not in available:
            reports.append(MethodReport(name=name, note="skipped: not registered"))
            continue
        try:
            g, stats = gradient_of(name, (rtol, atol), gradient_options.get(name))
        except SolverError as error:
            note = f"diverged: {type(error).__name__}: {error}"[:300]
            reports.append(MethodReport(name=name, note=note, diverged=True))
            continue
        except (NeurodeInputError, RuntimeError) as error:
            reports.append(
                MethodReport(name=name, note=f"failed: {type(error).__name__}: {error}"[:200])
            )
            continue
        reports.append(
            MethodReport(
                name=name,
                error_vs_reference=float((g - reference_grad).norm()) / reference_norm,
                error_vs_finite_differences=fd_error(g),
                nfe_forward=int(stats.get("nfe", 0)),
                nfe_backward=int(stats.get("nfe_backward", 0)),
            )
        )
    report = GradientReport(
        methods=reports,
        reference=reference,
        eps=eps,
        n_directions=len(directions),
        reference_rtol=reference_rtol,
        reference_atol=reference_atol,
        drift_threshold=threshold,
        settings={"method": method or "dopri5", "rtol": rtol, "atol": atol},
    )
    for name in report.drifting:
        error = report[name].error_vs_reference
        advice = _ADVICE.get(name, "check its options and the solver tolerances")
        what = (
            "stopped: it found it could not give a correct gradient here"
            if error is None
            else f"is off the reference gradient by {error:.2e} (relative), above {threshold:.1e}"
        )
        warnings.warn(f"gradient={name!r} {what}: {advice}", GradientDriftWarning, stacklevel=2)
    return report


def _check_loss(value: Any) -> None:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise NeurodeInputError("loss(ys) must return a scalar tensor")


def _directions(members, params, count: int, seed: int) -> list[torch.Tensor]:
    """Random unit vectors over the flattened ``(y0, θ)``, in float64."""
    size = sum(m.numel() for m in members) + sum(p.numel() for p in params)
    generator = torch.Generator().manual_seed(seed)
    directions = []
    for _ in range(count):
        d = torch.randn(size, generator=generator, dtype=torch.float64)
        directions.append(d / d.norm())
    return directions


def _central_difference(run, loss_fn, members, params, direction, eps, tolerances) -> float:
    """``(L(x + εd) − L(x − εd)) / 2ε``, the parameters restored exactly afterwards."""
    originals = [p.detach().clone() for p in params]
    values = []
    try:
        for sign in (1.0, -1.0):
            pieces = torch.split(direction, [x.numel() for x in (*members, *params)])
            shifted = [
                (m.detach() + sign * eps * piece.view(m.shape).to(m)).clone()
                for m, piece in zip(members, pieces)
            ]
            with torch.no_grad():
                for p, original, piece in zip(params, originals, pieces[len(members) :]):
                    p.copy_(original + sign * eps * piece.view(p.shape).to(p))
                solution = run("direct", tolerances, shifted, grad=False)
                values.append(float(loss_fn(solution.ys)))
    finally:
        with torch.no_grad():
            for p, original in zip(params, originals):
                p.copy_(original)
    return (values[0] - values[1]) / (2 * eps)


__all__ = ["GradientDriftWarning", "GradientReport", "MethodReport", "check_gradients"]
