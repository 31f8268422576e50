r"""One generic Rosenbrock step (linearly implicit), driven by the tableau.

With the iteration matrix ``M = I − hγJ`` (factored once per step) and the
tableau in ``u``-form (:mod:`neurode.solvers.rosenbrock_tableau`), stage ``i`` is
one linear solve,

.. math::

    u_i = M^{-1}\Big(hγ\, f\big(t + α_i h,\; y_0 + Σ_{j<i} a_{ij} u_j\big)
          + γ Σ_{j<i} c_{ij} u_j + hγ\,γ_i h\, f_t\Big),

(the published equation multiplied by ``hγ``, which keeps ``1/h`` out of it), then
``y_1 = y_0 + Σ m_i u_i`` and the error estimate ``Σ (m_i − m̂_i) u_i``. No
Newton iteration: the order conditions assume the exact ``J = ∂f/∂y(t, y_0)``
and ``f_t = ∂f/∂t(t, y_0)`` (:func:`time_derivative`), so the Jacobian is
recomputed at every step start (``JacobianCache(reuse=False)``). The first
stage uses ``f_0 = f(t, y_0)`` as given.

Dense output: ``(1 − θ) y_0 + θ y_1 + θ(1 − θ) Σ_j θ^j K_j`` with
``K_j = Σ_i H_ji u_i`` is, in the stage increments,
``y_0 + Σ_i w_i(θ) u_i`` with ``w_i(θ) = θ m_i + Σ_j (θ^{j+1} − θ^{j+2}) H_ji``,
which :func:`dense_rows` writes as polynomial coefficients.
"""

from __future__ import annotations

from functools import cache

import torch

from ._stage_rows import as_state, is_per_row, mask_rows, row_values, rows_finite
from .implicit_step import ImplicitStep
from .jacobian import VectorField
from .linear_solve import IterationMatrix
from .rosenbrock_tableau import RosenbrockTableau
from .runge_kutta import linear_combination


@cache
def dense_rows(tableau: RosenbrockTableau) -> tuple[tuple[float, ...], ...] | None:
    """Coefficients of ``θ, θ², …`` in each stage's dense weight ``w_i(θ)`` (module notes)."""
    if tableau.dense is None:
        return None
    q = len(tableau.dense)
    rows = []
    for i in range(tableau.stages):
        h = [row[i] for row in tableau.dense]
        coefficients = [tableau.m[i] + h[0]]
        coefficients += [h[p - 1] - h[p - 2] for p in range(2, q + 1)]
        coefficients.append(-h[q - 1])
        rows.append(tuple(coefficients))
    return tuple(rows)


def time_derivative(
    func: VectorField,
    t: float | torch.Tensor,
    y: torch.Tensor,
    f0: torch.Tensor,
    *,
    h: float | torch.Tensor,
) -> torch.Tensor:
    """``∂f/∂t`` at ``(t, y)``, for the non-autonomous term of a Rosenbrock step.

    Per row (``t`` a tensor) it is exact, by forward-mode differentiation in
    ``t``. In joint mode ``t`` is a float that ``func`` may use as one, so it is a
    forward difference ``(f(t + δ, y) − f_0)/δ`` in the direction of the step,
    ``δ = √ε max(1, |t|)``: one extra evaluation, relative accuracy about ``√ε``.
    For an autonomous ``func`` the loop can pass ``None`` to the step instead.
    """
    if isinstance(t, torch.Tensor):
        field = lambda time: as_state(func(time, y), y)
        return torch.func.jvp(field, (t,), (torch.ones_like(t),))[1].detach()
    eps = torch.finfo(y.dtype).eps
    delta = eps**0.5 * max(1.0, abs(t))
    if h < 0:
        delta = -delta
    return (as_state(func(t + delta, y), y) - f0) / delta


def rosenbrock_step(
    tableau: RosenbrockTableau,
    func: VectorField,
    t: float | torch.Tensor,
    y0: torch.Tensor,
    f0: torch.Tensor,
    h: float | torch.Tensor,
    matrix: IterationMatrix,
    *,
    f_t: torch.Tensor | None = None,
) -> ImplicitStep:
    """Advance ``y0`` from ``t`` by ``h``; ``matrix`` is ``I − hγJ``, ``J`` exact at ``(t, y0)``.

    ``f_t`` is ``∂f/∂t(t, y0)`` (None: ``func`` does not depend on ``t``).
    Per-row mode when ``t`` and ``h`` are ``(B,)`` tensors.
    """
    per_row = is_per_row(h)
    h_rows = row_values(h, y0)
    gamma = tableau.gamma
    h_gamma = h_rows * gamma
    u: list[torch.Tensor] = []
    evaluations = 0
    for i in range(tableau.stages):
        if i == 0:
            if tableau.alpha[0] != 0.0:
                raise ValueError(f"{tableau.name}: the first stage must sit at α = 0")
            value = f0
        else:
            stage_input = linear_combination(y0, u, tableau.a[i])
            value = as_state(func(t + tableau.alpha[i] * h, stage_input), y0)
            evaluations += 1
        rhs = h_gamma * value
        if i > 0:
            rhs = rhs + linear_combination(None, u, [gamma * x for x in tableau.c_matrix[i]])
        if f_t is not None and tableau.gamma_sums[i] != 0.0:
            rhs = rhs + (h_gamma * h_rows * tableau.gamma_sums[i]) * f_t
        u.append(matrix.solve(rhs))
    y1 = linear_combination(y0, u, tableau.m)
    error = None if tableau.m_error is None else linear_combination(None, u, tableau.m_error)
    converged = rows_finite(y1, per_row)
    if error is not None:
        converged = converged & rows_finite(error, per_row)
    if not bool(converged.all()):
        y1 = mask_rows(y1, converged)
        error = None if error is None else mask_rows(error, converged)
    return ImplicitStep(
        y1=y1,
        error_estimate=error,
        f1=None,
        stages=u,
        converged=converged,
        function_evaluations=evaluations,
        newton=None,
        y0=y0,
        stage_scale=1.0,
        dense=dense_rows(tableau),
        finite=converged,
    )
