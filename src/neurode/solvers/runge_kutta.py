"""One generic explicit Runge–Kutta step, serving every tableau.

The step is a pure function of tensors: given ``f0 = f(t, y0)`` it evaluates the
remaining stages, combines them into ``y1`` and (for embedded pairs) the error
estimate, and returns the stages for the dense output.

Every combination ``y0 + h Σ_j w_j k_j`` is one BLAS call on the stages laid
out as the rows of an ``(i, N)`` matrix: ``addmv`` for a stage input, ``y1`` and
the error estimate, ``addmm`` for all save points inside a step at once. That
is one tensor operation per stage instead of up to ``s`` chained additions,
which is what the loop's own cost is made of on small states, and fewer passes
over memory on large ones. Where that matrix comes from is the only difference
between the two ways of stepping, and the results agree bit for bit:

- :func:`runge_kutta_step` stacks the stages afresh for each combination. Every
  operation is out of place, so it is safe under autograd and inside
  ``torch.func`` transforms.
- :class:`RungeKuttaStepper` with ``fused=True`` copies each stage into a row of
  one matrix kept for the whole solve. The in-place writes are why it serves
  only solves without autograd (:func:`can_fuse`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .tableau import ButcherTableau

StageFunction = Callable[[float, torch.Tensor, int], torch.Tensor]
"""``f(t, y, perturb)``: the vector field; ``perturb=-1`` asks for the limit from the left."""


def linear_combination(base: torch.Tensor | None, terms, coefficients) -> torch.Tensor:
    """``base + Σ_j coefficients[j] * terms[j]``, skipping zero coefficients.

    ``base=None`` means zero. The result never aliases ``base`` or a term, so the
    in-place accumulation is safe under autograd.
    """
    result = None
    for coefficient, term in zip(coefficients, terms):
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


@dataclass
class RungeKuttaStep:
    """Result of one attempted step from ``t`` to ``t + h``."""

    y1: torch.Tensor
    f1: torch.Tensor | None
    """``f(t + h, y1)`` when the tableau is FSAL, else None."""
    error_estimate: torch.Tensor | None
    stages: list[torch.Tensor]


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


def runge_kutta_step(
    tableau: ButcherTableau,
    func: StageFunction,
    t: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    step_size: float,
    *,
    t1: float | None = None,
    perturb_end: bool = False,
    with_error: bool = True,
) -> RungeKuttaStep:
    r"""Advance ``y0`` by one step of size ``h = step_size``.

    ``k_1 = f0``, ``k_i = f(t + c_i h, y0 + h Σ_{j<i} a_ij k_j)``,
    ``y1 = y0 + h Σ b_i k_i``, error estimate ``h Σ (b_i - b̂_i) k_i``.
    Stages with ``c_i = 1`` are evaluated at exactly ``t1`` (default ``t + h``),
    from the left when ``perturb_end`` (a discontinuity may sit at ``t1``).
    """
    h = step_size
    t_end = t + h if t1 is None else t1
    end_perturb = -1 if perturb_end else 0
    coefficients = _coefficient_tensors(tableau, y0.dtype, y0.device)
    flat0 = y0.reshape(-1)
    stages = [f0]
    y_stage = y0
    for i in range(1, tableau.stages):
        columns = _as_columns(stages, y0.dtype)
        y_stage = torch.addmv(flat0, columns, coefficients.a[i], alpha=h).view_as(y0)
        c_i = tableau.c[i]
        t_stage, perturb = (t_end, end_perturb) if c_i == 1.0 else (t + c_i * h, 0)
        stages.append(func(t_stage, y_stage, perturb))
    columns = _as_columns(stages, y0.dtype)
    return _finish_step(
        coefficients, tableau.fsal, flat0, y0, y_stage, columns, stages, h, with_error
    )


def _as_columns(stages: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The stages as the columns of an ``(N, i)`` matrix, the layout the fused path keeps."""
    stacked = torch.stack(stages)
    if stacked.dtype != dtype:
        stacked = stacked.to(dtype)
    return stacked.view(len(stages), -1).t()


def _finish_step(
    coefficients: _CoefficientTensors,
    fsal: bool,
    flat0: torch.Tensor,
    y0: torch.Tensor,
    last_stage_input: torch.Tensor,
    columns: torch.Tensor,
    stages: list[torch.Tensor],
    h: float,
    with_error: bool,
) -> RungeKuttaStep:
    """``y1`` (the last stage's input when first-same-as-last) and the error estimate."""
    if fsal:
        y1, f1 = last_stage_input, stages[-1]
    else:
        y1 = torch.addmv(flat0, columns, coefficients.b, alpha=h).view_as(y0)
        f1 = None
    error_estimate = None
    if with_error and coefficients.b_error is not None:
        # beta=0: the first argument only supplies the shape and is not read.
        error = torch.addmv(flat0, columns, coefficients.b_error, beta=0, alpha=h)
        error_estimate = error.view_as(y0)
    return RungeKuttaStep(y1=y1, f1=f1, error_estimate=error_estimate, stages=stages)


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


def hermite_interpolate(
    y0: torch.Tensor,
    y1: torch.Tensor,
    f0: torch.Tensor,
    f1: torch.Tensor,
    step_size: float,
    theta: float,
) -> torch.Tensor:
    """Cubic Hermite interpolation on ``[t, t + h]`` at ``t + θ h`` (third-order accurate)."""
    h = step_size
    t2, t3 = theta * theta, theta * theta * theta
    h00 = 2 * t3 - 3 * t2 + 1
    h10 = t3 - 2 * t2 + theta
    h01 = -2 * t3 + 3 * t2
    h11 = t3 - t2
    return linear_combination(None, (y0, f0, y1, f1), (h00, h * h10, h01, h * h11))


def dense_evaluate(
    tableau: ButcherTableau,
    y0: torch.Tensor,
    y1: torch.Tensor,
    stages: list[torch.Tensor],
    f1: torch.Tensor | None,
    step_size: float,
    theta: float,
) -> torch.Tensor:
    """The solution at ``t + θ h`` inside an accepted step.

    Uses the tableau's own interpolant when it has one,
    ``y0 + h Σ b_i(θ) k_i``; otherwise cubic Hermite through
    ``(y0, k_1)`` and ``(y1, f1)``.
    """
    if theta == 0.0:
        return y0
    if theta == 1.0:
        return y1
    weights = dense_weights(tableau, theta)
    if weights is not None:
        return linear_combination(y0, stages, [step_size * w for w in weights])
    if f1 is None:
        raise ValueError("Hermite dense output needs f(t1, y1)")
    return hermite_interpolate(y0, y1, stages[0], f1, step_size, theta)


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


class RungeKuttaStepper:
    """The steps of one tableau on one state, with the per-solve preparation done once.

    ``fused=False`` is :func:`runge_kutta_step`. ``fused=True`` (see the module
    notes; only where :func:`can_fuse` holds) keeps the stages of the latest step
    as rows of one matrix: :meth:`dense_states` must then be called for a step
    before the next one starts. Either way the returned stages are the tensors
    ``f`` returned, never overwritten later, so they can back a dense-output
    segment.

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
        self._coefficients = _coefficient_tensors(tableau, y0.dtype, y0.device)
        if not fused:
            return
        s = tableau.stages
        self._matrix = torch.empty(s, y0.numel(), dtype=y0.dtype, device=y0.device)
        rows = self._matrix.view(s, *y0.shape).unbind(0)
        by_column = self._matrix.t()
        # Stage i: its weights on stages 0..i-1, those stages as columns (the layout
        # runge_kutta_step stacks them in), its row, c_i.
        self._stages = [
            (self._coefficients.a[i], by_column[:, :i], rows[i], tableau.c[i]) for i in range(1, s)
        ]
        self._all_stages = by_column
        self._first_row = rows[0]
        self._loaded_f0: torch.Tensor | None = None
        self._key = _idle_key(tableau, y0)

    def step(
        self,
        func: StageFunction,
        t: float,
        y0: torch.Tensor,
        f0: torch.Tensor,
        step_size: float,
        *,
        t1: float | None = None,
        perturb_end: bool = False,
        with_error: bool = True,
    ) -> RungeKuttaStep:
        """One step as :func:`runge_kutta_step` takes it."""
        if not self.fused:
            return runge_kutta_step(
                self.tableau,
                func,
                t,
                y0,
                f0,
                step_size,
                t1=t1,
                perturb_end=perturb_end,
                with_error=with_error,
            )
        h = step_size
        t_end = t + h if t1 is None else t1
        end_perturb = -1 if perturb_end else 0
        if f0 is not self._loaded_f0:
            self._first_row.copy_(f0)
            self._loaded_f0 = f0
        flat0 = y0.reshape(-1)
        stages = [f0]
        y_stage = y0
        for a_i, columns, row, c_i in self._stages:
            y_stage = torch.addmv(flat0, columns, a_i, alpha=h).view_as(y0)
            t_stage, perturb = (t_end, end_perturb) if c_i == 1.0 else (t + c_i * h, 0)
            k = func(t_stage, y_stage, perturb)
            row.copy_(k)
            stages.append(k)
        return _finish_step(
            self._coefficients,
            self.tableau.fsal,
            flat0,
            y0,
            y_stage,
            self._all_stages,
            stages,
            h,
            with_error,
        )

    def dense_states(
        self,
        step: RungeKuttaStep,
        y0: torch.Tensor,
        f1: torch.Tensor | None,
        step_size: float,
        thetas: Sequence[float],
        out: torch.Tensor | None = None,
    ) -> list[torch.Tensor] | None:
        """The solution at ``t + θ h`` for each ``θ`` in ``thetas``, inside the latest step.

        Returned as a list, or written into the rows of ``out`` (shape
        ``(len(thetas), *y0.shape)``) if given.

        With the tableau's own interpolant all of them come from one product
        ``y0 + h W K`` with ``W[m, i] = b_i(θ_m) = Σ_j θ_m^(j+1) dense[j, i]``;
        without one, cubic Hermite through ``(y0, k_1)`` and ``(y1, f1)``.
        """
        h, dense = step_size, self._coefficients.dense
        if dense is None:
            if f1 is None:
                raise ValueError("Hermite dense output needs f(t1, y1)")
            states = [hermite_interpolate(y0, step.y1, step.stages[0], f1, h, th) for th in thetas]
            if out is None:
                return states
            torch.stack(states, out=out)
            return None
        if len(thetas) == 1:
            # The common case of steps shorter than the save spacing: one matrix-vector
            # product, weights b_i(θ) from the polynomials directly.
            weights = _small_tensor(dense_weights(self.tableau, thetas[0]), dense)
            columns = self._all_stages if self.fused else _as_columns(step.stages, y0.dtype)
            if out is None:
                return [torch.addmv(y0.reshape(-1), columns, weights, alpha=h).view_as(y0)]
            torch.addmv(y0.reshape(-1), columns, weights, alpha=h, out=out.view(-1))
            return None
        degree = dense.shape[0]
        powers = [[theta**j for j in range(1, degree + 1)] for theta in thetas]
        weights = _small_tensor(powers, dense).mm(dense)
        stages = self._matrix if self.fused else _as_columns(step.stages, y0.dtype).t()
        if out is None:
            states = torch.addmm(y0.reshape(1, -1), weights, stages, alpha=h)
            return list(states.view(len(thetas), *self.shape).unbind(0))
        torch.addmm(y0.reshape(1, -1), weights, stages, alpha=h, out=out.view(len(thetas), -1))
        return None
