"""One generic explicit Runge–Kutta step, serving every tableau.

Given ``f0 = f(t, y0)`` the step evaluates the remaining stages, combines them
into ``y1`` and (for embedded pairs) the error estimate, and keeps the stages
for the dense output:

    k_1 = f0,   k_i = f(t + c_i h, y0 + h Σ_{j<i} a_ij k_j),
    y1 = y0 + h Σ_i b_i k_i,   e = h Σ_i (b_i − b̂_i) k_i,
    y(t + θh) = y0 + h Σ_i b_i(θ) k_i          (the tableau's own interpolant).

Every combination ``y0 + h Σ_j w_j k_j`` is one BLAS call on the stages laid
out as the columns of an ``(N, i)`` matrix: ``addmv`` for a stage input, ``y1``
and the error estimate, ``addmm`` for all save points inside a step. That is one
tensor operation per stage instead of up to ``s`` chained additions, which is
what the loop's own cost is made of on small states.

:class:`RungeKuttaStepper` is the one stage routine. Where its stage matrix
comes from is the only difference between its two modes, and the results agree
bit for bit:

- ``fused=False`` stacks the stages afresh for each combination. Every
  operation is out of place, so it is safe under autograd and inside
  ``torch.func`` transforms.
- ``fused=True`` copies each stage into a row of one matrix kept for the whole
  solve. The in-place writes are why it serves only solves without autograd
  (:func:`can_fuse`).

The step size ``h`` is a float (one step for the whole state) or, for
per-sample batching, a ``(B,)`` tensor: row ``b`` of the state (its first
dimension) then takes its own step ``h[b]`` from its own time ``t[b]``, with
``y0 + h_b Σ_j w_j k_j`` formed as one matrix-vector product and one
``addcmul``. Everything else is shared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .interpolation import hermite_interpolate, row_scale
from .tableau import ButcherTableau

StageFunction = Callable[[float | torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``f(t, y, perturb)``: the vector field; ``perturb=-1`` asks for the limit from the left.

``t`` is a float, or a ``(B,)`` tensor of per-row times when the step size is per row."""

StepSize = float | torch.Tensor


def linear_combination(base: torch.Tensor | None, terms, coefficients) -> torch.Tensor:
    """``base + Σ_j coefficients[j] * terms[j]``, skipping zero coefficients.

    ``base=None`` means zero. A coefficient may be a 0-dim tensor (a weight that is
    differentiated). The result never aliases ``base`` or a term, so the in-place
    accumulation is safe under autograd.
    """
    result = None
    for coefficient, term in zip(coefficients, terms):
        if isinstance(coefficient, torch.Tensor):
            addition = term * coefficient.to(term.dtype)
            if result is None:
                result = addition if base is None else base + addition
            else:
                result = result + addition
            continue
        if coefficient == 0.0:
            continue
        if result is None:
            result = (
                term * coefficient if base is None else torch.add(base, term, alpha=coefficient)
            )
        else:
            result.add_(term, alpha=coefficient)
    if result is None:
        return torch.zeros_like(terms[0]) if base is None else base.clone()
    return result


class RungeKuttaStep:
    """Result of one attempted step from ``t`` to ``t + h``.

    ``f1`` is ``f(t + h, y1)`` when the tableau is FSAL, else None; ``increment``
    is ``h Σ b_i k_i`` itself when asked for (``y1`` is then None).
    """

    __slots__ = ("y1", "f1", "error_estimate", "stages", "increment")

    def __init__(
        self,
        y1: torch.Tensor | None,
        f1: torch.Tensor | None,
        error_estimate: torch.Tensor | None,
        stages: list[torch.Tensor],
        increment: torch.Tensor | None = None,
    ):
        self.y1, self.f1, self.error_estimate = y1, f1, error_estimate
        self.stages, self.increment = stages, increment


@dataclass(frozen=True)
class _CoefficientTensors:
    a: list[torch.Tensor]
    """``a[i]``: the ``i`` weights of stage ``i`` on the stages before it."""
    b: torch.Tensor
    b_error: torch.Tensor | None
    dense: torch.Tensor | None
    """``dense[j, i]``: the coefficient of ``θ^(j+1)`` in ``b_i(θ)``."""


_COEFFICIENT_CACHE: dict[tuple[int, torch.dtype, torch.device], tuple] = {}


def _coefficient_tensors(
    tableau: ButcherTableau, dtype: torch.dtype, device: torch.device
) -> _CoefficientTensors:
    """The tableau as tensors, made once per tableau, dtype and device."""
    key = (id(tableau), dtype, device)
    cached = _COEFFICIENT_CACHE.get(key)
    if cached is not None and cached[0] is tableau:
        return cached[1]

    def as_tensor(values) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    dense = None
    if tableau.dense is not None:
        degree = max(len(row) for row in tableau.dense)
        padded = [list(row) + [0.0] * (degree - len(row)) for row in tableau.dense]
        dense = as_tensor(padded).t().contiguous()
    tensors = _CoefficientTensors(
        a=[as_tensor(row) for row in tableau.a],
        b=as_tensor(tableau.b),
        b_error=None if tableau.b_error is None else as_tensor(tableau.b_error),
        dense=dense,
    )
    _COEFFICIENT_CACHE[key] = (tableau, tensors)
    return tensors


def dense_weights(tableau: ButcherTableau, theta: float) -> list[float] | None:
    """``b_i(θ)`` of the tableau's own continuous extension, or None if it has none."""
    if tableau.dense is None:
        return None
    weights = []
    for row in tableau.dense:
        power, value = theta, 0.0
        for coefficient in row:
            value += coefficient * power
            power *= theta
        weights.append(value)
    return weights


_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.complex64: np.complex64,
    torch.complex128: np.complex128,
}


def _small_tensor(values: list, like: torch.Tensor) -> torch.Tensor:
    """A fresh tensor of Python numbers, dtype and device of ``like``.

    On the CPU it is built by numpy and shared with torch, a third of what
    ``torch.tensor`` costs on a short list (it runs once per step with save points).
    """
    numpy_dtype = _NUMPY_DTYPES.get(like.dtype)
    if numpy_dtype is None or like.device.type != "cpu":
        return torch.tensor(values, dtype=like.dtype, device=like.device)
    return torch.from_numpy(np.array(values, dtype=numpy_dtype))


def _idle_key(tableau: ButcherTableau, y0: torch.Tensor) -> tuple:
    return (id(tableau), y0.shape, y0.dtype, y0.device)


def _plain(tensor: torch.Tensor) -> bool:
    """An ordinary strided tensor: no autograd history, no functorch wrapper, no tangent."""
    return (
        type(tensor) is torch.Tensor
        and tensor.layout == torch.strided
        and not tensor.requires_grad
        and (tensor.is_floating_point() or tensor.is_complex())
        and not torch._C._functorch.is_functorch_wrapped_tensor(tensor)
        and torch.autograd.forward_ad.unpack_dual(tensor).tangent is None
    )


def can_fuse(y0: torch.Tensor, f0: torch.Tensor) -> bool:
    """Whether the in-place stage matrix of :class:`RungeKuttaStepper` is safe here.

    It is when nothing records gradients: autograd is off and the state and the
    first evaluation of ``f`` are plain tensors.
    """
    return not torch.is_grad_enabled() and _plain(y0) and _plain(f0)


_IDLE_STEPPERS: dict[tuple, RungeKuttaStepper] = {}
"""Fused steppers of finished solves, one per tableau, shape, dtype and device."""
_IDLE_BYTES_MAX = 64 * 2**20


def _stages_needed(tableau: ButcherTableau, with_error: bool) -> int:
    """Stages up to the last one with a weight in ``b`` (or the error weights)."""
    needed = 1
    for i in range(tableau.stages):
        if tableau.b[i] != 0.0 or (
            with_error and tableau.b_error is not None and tableau.b_error[i] != 0.0
        ):
            needed = i + 1
    return needed


class RungeKuttaStepper:
    """The steps of one tableau on one state, with the per-solve preparation done once.

    ``fused=True`` (see the module notes; only where :func:`can_fuse` holds)
    keeps the stages of the latest step as rows of one matrix:
    :meth:`dense_states` must then be called for a step before the next one
    starts. Either way the returned stages are the tensors ``f`` returned, never
    overwritten later, so they can back a dense-output segment.

    Get one with :meth:`acquire` and hand it back with :meth:`release` when the
    solve is done: the next solve of the same shape then skips building the
    stage matrix and its views (tens of µs, which matters for small states) and
    writing to fresh memory (page faults, which matter for large ones). The
    matrix is only ever read inside a step, so reusing it is safe; a solve in
    progress owns its stepper, so nested solves get their own.
    """

    @classmethod
    def acquire(
        cls, tableau: ButcherTableau, y0: torch.Tensor, *, fused: bool
    ) -> RungeKuttaStepper:
        if fused:
            idle = _IDLE_STEPPERS.pop(_idle_key(tableau, y0), None)
            if idle is not None and idle.tableau is tableau:
                return idle
        return cls(tableau, y0, fused=fused)

    def release(self) -> None:
        """Keep a fused stepper for the next solve (within a memory budget)."""
        if not self.fused:
            return
        self._loaded_f0 = None
        _IDLE_STEPPERS[self._key] = self
        held = sum(s._matrix.numel() * s._matrix.element_size() for s in _IDLE_STEPPERS.values())
        while held > _IDLE_BYTES_MAX and _IDLE_STEPPERS:
            oldest = next(iter(_IDLE_STEPPERS))
            evicted = _IDLE_STEPPERS.pop(oldest, None)
            if evicted is not None:
                held -= evicted._matrix.numel() * evicted._matrix.element_size()

    def __init__(self, tableau: ButcherTableau, y0: torch.Tensor, *, fused: bool):
        self.tableau = tableau
        self.fused = fused
        self.shape = y0.shape
        self._stage_count = tableau.stages
        self._coefficients = _coefficient_tensors(tableau, y0.dtype, y0.device)
        if not fused:
            return
        s = tableau.stages
        self._matrix = torch.empty(s, y0.numel(), dtype=y0.dtype, device=y0.device)
        self._rows = self._matrix.view(s, *y0.shape).unbind(0)
        # Stage i reads the stages before it as the first i columns of this view.
        self._by_column = self._matrix.t()
        self._prefixes = [self._by_column[:, :i] for i in range(s + 1)]
        self._loaded_f0: torch.Tensor | None = None
        self._key = _idle_key(tableau, y0)

    # ------------------------------------------------------------------- the step
    def step(
        self,
        func: StageFunction,
        t: float | torch.Tensor,
        y0: torch.Tensor,
        f0: torch.Tensor,
        step_size: StepSize,
        *,
        t1: float | torch.Tensor | None = None,
        perturb_end: bool = False,
        with_error: bool = True,
        increment: bool = False,
        all_stages: bool = False,
    ) -> RungeKuttaStep:
        r"""Advance ``y0`` by one step of size ``h = step_size`` (a float, or per row).

        Stages with ``c_i = 1`` are evaluated at exactly ``t1`` (default ``t + h``),
        from the left when ``perturb_end`` (a discontinuity may sit at ``t1``).
        ``increment=True`` returns ``h Σ b_i k_i`` instead of ``y1`` and evaluates
        only the stages it needs (the reversible method's base step), or every
        stage with ``all_stages`` (for the dense output).
        """
        tableau, coefficients = self.tableau, self._coefficients
        h = step_size
        h_rows = None
        if isinstance(h, torch.Tensor):  # per row, or one differentiable step size
            h_rows = row_scale(h, y0)
        t_end = t + h if t1 is None else t1
        end_perturb = -1 if perturb_end else 0
        count = stage_count = self._stage_count
        if increment and not all_stages:
            count = _stages_needed(tableau, with_error)
        flat0 = y0.reshape(-1)
        if self.fused and f0 is not self._loaded_f0:
            self._rows[0].copy_(f0)
            self._loaded_f0 = f0
        stages = [f0]
        y_stage = y0
        fused = self.fused
        prefixes = self._prefixes if fused else None
        a, c = coefficients.a, tableau.c
        dtype = coefficients.b.dtype
        for i in range(1, count):
            columns = prefixes[i] if fused else stage_columns(stages, dtype)
            if h_rows is None:
                y_stage = torch.addmv(flat0, columns, a[i], alpha=h).view_as(y0)
            else:
                y_stage = _combine(flat0, y0, columns, a[i], h, h_rows)
            c_i = c[i]
            k = func(t_end, y_stage, end_perturb) if c_i == 1.0 else func(t + c_i * h, y_stage, 0)
            if fused:
                self._rows[i].copy_(k)
            stages.append(k)
        columns = prefixes[count] if fused else stage_columns(stages, dtype)
        b, b_error = coefficients.b, coefficients.b_error
        if count < stage_count:
            b = b[:count]
            b_error = None if b_error is None else b_error[:count]
        error_estimate = None
        if with_error and b_error is not None:
            error_estimate = _combine(None, y0, columns, b_error, h, h_rows)
        if increment:
            value = _combine(None, y0, columns, b, h, h_rows)
            return RungeKuttaStep(None, None, error_estimate, stages, value)
        if tableau.fsal:
            return RungeKuttaStep(y_stage, stages[-1], error_estimate, stages)
        if h_rows is None:
            y1 = torch.addmv(flat0, columns, b, alpha=h).view_as(y0)
        else:
            y1 = _combine(flat0, y0, columns, b, h, h_rows)
        return RungeKuttaStep(y1, None, error_estimate, stages)

    # ----------------------------------------------------------------- dense output
    def dense_states(
        self,
        step: RungeKuttaStep,
        y0: torch.Tensor,
        f1: torch.Tensor | None,
        step_size: StepSize,
        thetas: Sequence[float] | torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> list[torch.Tensor] | torch.Tensor | None:
        """The solution at ``t + θ h`` inside the latest step (see :func:`dense_states`)."""
        columns = self._by_column if self.fused else None
        return dense_states(
            self.tableau, y0, step.y1, step.stages, f1, step_size, thetas, out, columns=columns
        )


def _combine(
    flat0: torch.Tensor | None,
    y0: torch.Tensor,
    columns: torch.Tensor,
    weights: torch.Tensor,
    h: StepSize,
    h_rows: torch.Tensor | None,
) -> torch.Tensor:
    """``y0 + h · columns @ weights`` shaped like ``y0`` (``flat0=None``: without ``y0``)."""
    if h_rows is None:
        if flat0 is None:
            # beta=0: the first argument only supplies the shape and is not read.
            return torch.addmv(y0.reshape(-1), columns, weights, beta=0, alpha=h).view_as(y0)
        return torch.addmv(flat0, columns, weights, alpha=h).view_as(y0)
    combined = torch.mv(columns, weights).view_as(y0)
    if flat0 is None:
        return combined * h_rows
    return torch.addcmul(y0, combined, h_rows)


def stage_columns(stages: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The stages as the columns of an ``(N, i)`` matrix, the layout the fused path keeps."""
    stacked = torch.stack(list(stages))
    if stacked.dtype != dtype:
        stacked = stacked.to(dtype)
    return stacked.view(len(stages), -1).t()


def runge_kutta_step(
    tableau: ButcherTableau,
    func: StageFunction,
    t: float | torch.Tensor,
    y0: torch.Tensor,
    f0: torch.Tensor,
    step_size: StepSize,
    **kwargs,
) -> RungeKuttaStep:
    """One step by a fresh, autograd-safe :class:`RungeKuttaStepper` (keywords as its ``step``)."""
    return RungeKuttaStepper(tableau, y0, fused=False).step(func, t, y0, f0, step_size, **kwargs)


def dense_states(
    tableau: ButcherTableau,
    y0: torch.Tensor,
    y1: torch.Tensor,
    stages: Sequence[torch.Tensor],
    f1: torch.Tensor | None,
    step_size: StepSize,
    thetas: Sequence[float] | torch.Tensor,
    out: torch.Tensor | None = None,
    *,
    columns: torch.Tensor | None = None,
) -> list[torch.Tensor] | torch.Tensor | None:
    """The solution at ``t + θ h`` inside an accepted step: the one dense-output evaluator.

    With the tableau's own interpolant, ``y0 + h W K`` with
    ``W[m, i] = b_i(θ_m) = Σ_j θ_m^(j+1) dense[j, i]`` (one matrix product for all
    of them); without one, cubic Hermite through ``(y0, k_1)`` and ``(y1, f1)``.

    ``thetas`` is a sequence of floats (a list of states is returned, or written
    into the rows of ``out``, shape ``(len(thetas), *y0.shape)``) or, with a per-row
    step size, a ``(B,)`` tensor: one state is returned, row ``b`` at ``θ_b``.
    ``columns`` is the stage matrix when the caller keeps one.
    """
    h = step_size
    coefficients = _coefficient_tensors(tableau, y0.dtype, y0.device)
    dense = coefficients.dense
    if isinstance(thetas, torch.Tensor):
        return _dense_rows(tableau, coefficients, y0, y1, stages, f1, h, thetas, columns)
    if dense is None:
        if f1 is None:
            raise ValueError("Hermite dense output needs f(t1, y1)")
        states = [hermite_interpolate(y0, y1, stages[0], f1, h, theta) for theta in thetas]
        if out is None:
            return states
        torch.stack(states, out=out)
        return None
    if columns is None:
        columns = stage_columns(stages, y0.dtype)
    flat0 = y0.reshape(-1)
    if len(thetas) == 1:
        # The common case of steps shorter than the save spacing: one matrix-vector
        # product, weights b_i(θ) from the polynomials directly.
        weights = _small_tensor(dense_weights(tableau, thetas[0]), dense)
        if out is None:
            return [torch.addmv(flat0, columns, weights, alpha=h).view_as(y0)]
        torch.addmv(flat0, columns, weights, alpha=h, out=out.view(-1))
        return None
    degree = dense.shape[0]
    powers = [[theta**j for j in range(1, degree + 1)] for theta in thetas]
    weights = _small_tensor(powers, dense).mm(dense)
    if out is None:
        states = torch.addmm(flat0.unsqueeze(0), weights, columns.t(), alpha=h)
        return list(states.view(len(thetas), *y0.shape).unbind(0))
    torch.addmm(flat0.unsqueeze(0), weights, columns.t(), alpha=h, out=out.view(len(thetas), -1))
    return None


def _dense_rows(
    tableau: ButcherTableau,
    coefficients: _CoefficientTensors,
    y0: torch.Tensor,
    y1: torch.Tensor,
    stages: Sequence[torch.Tensor],
    f1: torch.Tensor | None,
    h: torch.Tensor,
    theta: torch.Tensor,
    columns: torch.Tensor | None,
) -> torch.Tensor:
    """Row ``b`` of the state at ``t_b + θ_b h_b``."""
    if coefficients.dense is None:
        if f1 is None:
            raise ValueError("Hermite dense output needs f(t1, y1)")
        return hermite_interpolate(y0, y1, stages[0], f1, h, theta)
    dense = coefficients.dense
    degree = dense.shape[0]
    exponents = torch.arange(1, degree + 1, dtype=dense.dtype, device=dense.device)
    weights = theta.to(dense.dtype)[:, None] ** exponents @ dense  # (B, s)
    if columns is None:
        columns = stage_columns(stages, y0.dtype)
    batch = y0.shape[0]
    by_stage = columns.t().reshape(len(tableau.c), batch, -1)
    combined = torch.einsum("sbn,bs->bn", by_stage, weights).view_as(y0)
    return torch.addcmul(y0, combined, row_scale(h, y0))


__all__ = [
    "RungeKuttaStep",
    "RungeKuttaStepper",
    "StageFunction",
    "can_fuse",
    "dense_states",
    "dense_weights",
    "linear_combination",
    "runge_kutta_step",
    "stage_columns",
]
