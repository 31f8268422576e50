r"""Stiff test problems as torch vector fields, with analytic Jacobians and scipy references.

Each factory returns a :class:`StiffProblem`: ``func(t, y)`` and
``jacobian(t, y)`` for states of shape ``(d,)`` (one system) or ``(B, d)`` (a
batch of independent systems with per-row parameters; ``jacobian`` then gives
the per-row blocks, shape ``(B, d, d)``), the initial state and the usual time
span. :func:`reference_solution` integrates one with scipy's Radau at tight
tolerances (scipy is imported only there), row by row for a batch.

- :func:`robertson` — chemical kinetics (Robertson 1966; HW II §IV.1), three
  rate constants, eigenvalues from 0 to about −10⁴ along the solution;
  ``y₁ + y₂ + y₃`` is conserved.
- :func:`van_der_pol` — the van der Pol oscillator ``y'' = μ(1 − y²)y' − y``,
  stiff for large ``μ`` (relaxation oscillations of period about
  ``(3 − 2 ln 2) μ``).
- :func:`hires` — "High Irradiance RESponse", eight reactions of plant
  physiology (Schäfer 1975; the Bari test set of Mazzia & Magherini gives its
  reference values at ``t = 321.8122``).
- :func:`stiff_linear` — ``y' = M y`` with ``M = P diag(λ) P⁻¹`` for a fixed
  non-orthogonal ``P``, default eigenvalues −1, −10, −10⁴, and its exact
  solution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from neurode.data.errors import DatasetArgumentError

VectorField = Callable[[float | Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class StiffProblem:
    """A stiff initial value problem ``y' = func(t, y)``, ``y(t_span[0]) = y0``.

    ``rows`` is the batch size of a batched problem (``y0`` of shape ``(B, d)``)
    and None for one system (``y0`` of shape ``(d,)``); :meth:`row` extracts one
    system of a batch. ``exact(t)``, when known, is the exact solution.
    ``reference_atol`` is the absolute tolerance :func:`reference_solution` uses.
    """

    name: str
    func: VectorField
    jacobian: VectorField
    y0: Tensor
    t_span: tuple[float, float]
    reference_atol: float
    rows: int | None = None
    exact: Callable[[float], Tensor] | None = None
    _row_factory: Callable[[int], StiffProblem] | None = field(default=None, repr=False)

    def row(self, index: int) -> StiffProblem:
        """System ``index`` of a batched problem, as a problem of its own."""
        if self._row_factory is None:
            raise DatasetArgumentError(f"{self.name}: not a batched problem")
        if not 0 <= index < self.rows:
            raise DatasetArgumentError(f"{self.name}: row {index} outside 0..{self.rows - 1}")
        return self._row_factory(index)


def _float_dtype(dtype: torch.dtype) -> torch.dtype:
    if not dtype.is_floating_point:
        raise DatasetArgumentError(f"dtype must be a floating-point dtype, got {dtype}")
    return dtype


# --------------------------------------------------------------------------- Robertson
def robertson(
    rates: Sequence[float] | Tensor = (0.04, 3e7, 1e4),
    *,
    t_end: float = 4e5,
    dtype: torch.dtype = torch.float64,
) -> StiffProblem:
    r"""Robertson's chemical kinetics with rate constants ``(k₁, k₂, k₃)``.

    .. math::

        y_1' = −k_1 y_1 + k_3 y_2 y_3,\quad
        y_2' = k_1 y_1 − k_2 y_2^2 − k_3 y_2 y_3,\quad
        y_3' = k_2 y_2^2,

    from ``y = (1, 0, 0)``. ``rates`` of shape ``(3,)`` gives one system; of shape
    ``(B, 3)`` a batch of ``B`` systems, one rate set per row.
    """
    dtype = _float_dtype(dtype)
    k = torch.as_tensor(rates, dtype=dtype)
    if k.shape[-1:] != (3,) or k.ndim > 2:
        raise DatasetArgumentError(f"rates must have shape (3,) or (B, 3), got {tuple(k.shape)}")
    if not bool(torch.isfinite(k).all()) or bool((k <= 0).any()):
        raise DatasetArgumentError("rate constants must be positive and finite")
    _check_span(t_end)
    k1, k2, k3 = k.unbind(-1)

    def func(t, y: Tensor) -> Tensor:
        y1, y2, y3 = y.unbind(-1)
        return torch.stack(
            [-k1 * y1 + k3 * y2 * y3, k1 * y1 - k2 * y2 * y2 - k3 * y2 * y3, k2 * y2 * y2], dim=-1
        )

    def jacobian(t, y: Tensor) -> Tensor:
        y1, y2, y3 = y.unbind(-1)
        zero = torch.zeros_like(y1)
        rows = [
            [-k1 + zero, k3 * y3, k3 * y2],
            [k1 + zero, -2 * k2 * y2 - k3 * y3, -k3 * y2],
            [zero, 2 * k2 * y2, zero],
        ]
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    y0 = torch.zeros(k.shape, dtype=dtype)
    y0[..., 0] = 1.0
    batched = k.ndim == 2
    return StiffProblem(
        name="robertson",
        func=func,
        jacobian=jacobian,
        y0=y0,
        t_span=(0.0, float(t_end)),
        reference_atol=1e-14,
        rows=k.shape[0] if batched else None,
        _row_factory=(lambda i: robertson(k[i], t_end=t_end, dtype=dtype)) if batched else None,
    )


# --------------------------------------------------------------------------- van der Pol
def van_der_pol(
    mu: float | Sequence[float] | Tensor = 1000.0,
    *,
    t_end: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> StiffProblem:
    r"""The van der Pol oscillator ``y₁' = y₂``, ``y₂' = μ (1 − y₁²) y₂ − y₁`` from ``(2, 0)``.

    ``mu`` a number gives one system; a 1-D tensor of ``B`` values a batch. The
    default span is ``t_end = 3 μ`` of the largest ``μ`` (for ``μ ≥ 1``; 3000 for
    ``μ = 1000``): about 1.9 relaxation periods, a period being about ``(3 − 2 ln 2) μ``.
    """
    dtype = _float_dtype(dtype)
    m = torch.as_tensor(mu, dtype=dtype)
    if m.ndim > 1:
        raise DatasetArgumentError(f"mu must be a number or a 1-D tensor, got {tuple(m.shape)}")
    if not bool(torch.isfinite(m).all()) or bool((m <= 0).any()):
        raise DatasetArgumentError("mu must be positive and finite")
    if t_end is None:
        t_end = 3.0 * max(1.0, float(m.max()))
    _check_span(t_end)

    def func(t, y: Tensor) -> Tensor:
        y1, y2 = y.unbind(-1)
        return torch.stack([y2, m * (1 - y1 * y1) * y2 - y1], dim=-1)

    def jacobian(t, y: Tensor) -> Tensor:
        y1, y2 = y.unbind(-1)
        zero = torch.zeros_like(y1)
        rows = [[zero, zero + 1], [-2 * m * y1 * y2 - 1, m * (1 - y1 * y1)]]
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    y0 = torch.tensor([2.0, 0.0], dtype=dtype).expand(*m.shape, 2).clone()
    batched = m.ndim == 1
    return StiffProblem(
        name="van_der_pol",
        func=func,
        jacobian=jacobian,
        y0=y0,
        t_span=(0.0, float(t_end)),
        reference_atol=1e-12,
        rows=m.shape[0] if batched else None,
        _row_factory=(lambda i: van_der_pol(float(m[i]), t_end=t_end, dtype=dtype))
        if batched
        else None,
    )


# --------------------------------------------------------------------------- HIRES
HIRES_END = 321.8122
HIRES_REFERENCE = (
    0.7371312573325668e-3,
    0.1442485726316185e-3,
    0.5888729740967575e-4,
    0.1175651343283149e-2,
    0.2386356198831331e-2,
    0.6238968252742796e-2,
    0.2849998395185769e-2,
    0.2850001604814231e-2,
)
"""The solution at ``t = 321.8122`` (Mazzia & Magherini, Test Set for IVP Solvers, Bari)."""


def hires(*, dtype: torch.dtype = torch.float64) -> StiffProblem:
    """The HIRES problem: eight components, linear but for the reaction ``280 y₆ y₈``."""
    dtype = _float_dtype(dtype)
    linear = torch.zeros(8, 8, dtype=dtype)
    entries = {
        (0, 0): -1.71, (0, 1): 0.43, (0, 2): 8.32,
        (1, 0): 1.71, (1, 1): -8.75,
        (2, 2): -10.03, (2, 3): 0.43, (2, 4): 0.035,
        (3, 1): 8.32, (3, 2): 1.71, (3, 3): -1.12,
        (4, 4): -1.745, (4, 5): 0.43, (4, 6): 0.43,
        (5, 3): 0.69, (5, 4): 1.71, (5, 5): -0.43, (5, 6): 0.69,
        (6, 6): -1.81,
        (7, 6): 1.81,
    }  # fmt: skip
    for (i, j), value in entries.items():
        linear[i, j] = value
    source = torch.zeros(8, dtype=dtype)
    source[0] = 0.0007
    reaction = torch.tensor([0, 0, 0, 0, 0, -1, 1, -1], dtype=dtype)  # times 280 y6 y8

    def func(t, y: Tensor) -> Tensor:
        product = 280.0 * y[..., 5] * y[..., 7]
        return y @ linear.T + source + product[..., None] * reaction

    def jacobian(t, y: Tensor) -> Tensor:
        matrix = linear.expand(*y.shape[:-1], 8, 8).clone()
        matrix[..., :, 5] += 280.0 * y[..., 7, None] * reaction
        matrix[..., :, 7] += 280.0 * y[..., 5, None] * reaction
        return matrix

    y0 = torch.zeros(8, dtype=dtype)
    y0[0], y0[7] = 1.0, 0.0057
    return StiffProblem(
        name="hires",
        func=func,
        jacobian=jacobian,
        y0=y0,
        t_span=(0.0, HIRES_END),
        reference_atol=1e-14,
    )


# --------------------------------------------------------------------------- linear
def stiff_linear(
    eigenvalues: Sequence[float] = (-1.0, -10.0, -1e4),
    *,
    t_end: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> StiffProblem:
    r"""``y' = M y``, ``M = P diag(λ) P⁻¹``, ``P = [[1, 1, 0], [0, 1, 1], [1, 0, 1]]``, ``y0 = 𝟙``.

    Every eigenmode is present in ``y0`` (``P⁻¹ 𝟙 = 𝟙/2``), and the exact solution
    is ``P diag(e^{λt}) P⁻¹ y0``. With the default eigenvalues a method must
    damp the mode ``e^{−10⁴ t}`` at step sizes far beyond ``10⁻⁴``.
    """
    dtype = _float_dtype(dtype)
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    if lam.shape != (3,) or not bool(torch.isfinite(lam).all()):
        raise DatasetArgumentError("eigenvalues must be three finite numbers")
    _check_span(t_end)
    p = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]], dtype=torch.float64)
    p_inverse = 0.5 * torch.tensor(
        [[1.0, -1.0, 1.0], [1.0, 1.0, -1.0], [-1.0, 1.0, 1.0]], dtype=torch.float64
    )
    matrix = (p * lam) @ p_inverse
    matrix_state = matrix.to(dtype)
    y0 = torch.ones(3, dtype=dtype)
    modes = p_inverse @ y0.to(torch.float64)

    def func(t, y: Tensor) -> Tensor:
        return y @ matrix_state.T

    def jacobian(t, y: Tensor) -> Tensor:
        return matrix_state.expand(*y.shape[:-1], 3, 3).clone()

    def exact(t: float) -> Tensor:
        return (p @ (torch.exp(lam * t) * modes)).to(dtype)

    return StiffProblem(
        name="stiff_linear",
        func=func,
        jacobian=jacobian,
        y0=y0,
        t_span=(0.0, float(t_end)),
        reference_atol=1e-14,
        exact=exact,
    )


# --------------------------------------------------------------------------- references
def reference_solution(
    problem: StiffProblem,
    times: Sequence[float] | Tensor,
    *,
    rtol: float = 1e-12,
    atol: float | None = None,
) -> Tensor:
    """The solution at ``times`` by scipy's ``solve_ivp`` (Radau, analytic Jacobian).

    Returns a float64 tensor of shape ``(len(times), *problem.y0.shape)``; a batch
    is solved row by row. ``times`` must be increasing and start at or after
    ``t_span[0]``. Needs scipy (``pip install neurode[scipy]``).
    """
    try:
        from scipy.integrate import solve_ivp
    except ImportError as error:  # pragma: no cover - exercised only without scipy
        raise ImportError("reference_solution needs scipy: pip install neurode[scipy]") from error
    times = torch.as_tensor(times, dtype=torch.float64)
    if times.ndim != 1 or len(times) == 0:
        raise DatasetArgumentError("times must be a non-empty 1-D sequence")
    if bool((times[1:] <= times[:-1]).any()) or float(times[0]) < problem.t_span[0]:
        raise DatasetArgumentError("times must increase and start at or after t_span[0]")
    if problem.rows is not None:
        rows = [
            reference_solution(problem.row(i), times, rtol=rtol, atol=atol)
            for i in range(problem.rows)
        ]
        return torch.stack(rows, dim=1)
    atol = problem.reference_atol if atol is None else atol
    y0 = problem.y0.to(torch.float64)

    def rhs(t, y):
        state = torch.from_numpy(y).to(problem.y0.dtype)
        return problem.func(t, state).to(torch.float64).numpy()

    def jac(t, y):
        state = torch.from_numpy(y).to(problem.y0.dtype)
        return problem.jacobian(t, state).to(torch.float64).numpy()

    t_eval = times.numpy()
    result = solve_ivp(
        rhs,
        (problem.t_span[0], float(t_eval[-1])),
        y0.numpy(),
        method="Radau",
        t_eval=t_eval,
        rtol=rtol,
        atol=atol,
        jac=jac,
    )
    if not result.success:
        raise RuntimeError(f"{problem.name}: scipy Radau failed: {result.message}")
    return torch.from_numpy(result.y.T.copy())


def _check_span(t_end: float) -> None:
    if not math.isfinite(t_end) or t_end <= 0:
        raise DatasetArgumentError(f"t_end must be positive and finite, got {t_end}")
