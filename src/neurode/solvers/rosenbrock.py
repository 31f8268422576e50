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

from dataclasses import dataclass
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


@dataclass(frozen=True)
class _TableauMatrices:
    """A tableau's coefficients as tensors: every stage combination is one product.

    Rows of ``a`` and ``gamma_c`` (``γ c_ij``) are full length ``s`` with zeros
    from the diagonal on, so a stage combination multiplies all ``s`` rows of the
    stage buffer, whose rows not yet computed are zero.
    """

    a: tuple[torch.Tensor, ...]
    gamma_c: tuple[torch.Tensor, ...]
    m: torch.Tensor
    m_error: torch.Tensor | None
    dense: tuple[tuple[float, ...], ...] | None


_MATRICES: dict[tuple, tuple[RosenbrockTableau, _TableauMatrices]] = {}


def _tableau_matrices(
    tableau: RosenbrockTableau, dtype: torch.dtype, device: torch.device
) -> _TableauMatrices:
    # Keyed by identity: hashing a tableau (all its coefficients) on every step costs µs.
    key = (id(tableau), dtype, device)
    held = _MATRICES.get(key)
    if held is not None and held[0] is tableau:
        return held[1]
    s = tableau.stages

    def rows(lower, scale=1.0):
        full = [[scale * x for x in row] + [0.0] * (s - len(row)) for row in lower]
        return tuple(torch.tensor(full, dtype=dtype, device=device).unbind(0))

    def vector(values):
        return None if values is None else torch.tensor(values, dtype=dtype, device=device)

    matrices = _TableauMatrices(
        a=rows(tableau.a),
        gamma_c=rows(tableau.c_matrix, tableau.gamma),
        m=vector(tableau.m),
        m_error=vector(tableau.m_error),
        dense=dense_rows(tableau),
    )
    _MATRICES[key] = (tableau, matrices)
    return matrices


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

    Without autograd recording the stage increments live in one zero-initialised
    ``(s, n)`` buffer and every stage combination is one matrix–vector product
    with a full-length tableau row (:func:`_buffered_stages`); with recording
    (writing into a buffer would invalidate what the products saved) they are a
    list combined term by term (:func:`_recorded_stages`). Same arithmetic.
    """
    if tableau.alpha[0] != 0.0:
        raise ValueError(f"{tableau.name}: the first stage must sit at α = 0")
    per_row = is_per_row(h)
    recording = torch.is_grad_enabled() and (
        y0.requires_grad
        or f0.requires_grad
        or (isinstance(h, torch.Tensor) and h.requires_grad)
        or (f_t is not None and f_t.requires_grad)
    )
    stages = _recorded_stages if recording else _buffered_stages
    y1, error, u, converged = stages(tableau, func, t, y0, f0, h, matrix, f_t, per_row)
    dense = _tableau_matrices(tableau, y0.dtype, y0.device).dense
    if not bool(converged.all()):
        y1 = mask_rows(y1, converged)
        error = None if error is None else mask_rows(error, converged)
    return ImplicitStep(
        y1=y1,
        error_estimate=error,
        f1=None,
        stages=u,
        converged=converged,
        function_evaluations=tableau.stages - 1,
        newton=None,
        y0=y0,
        stage_scale=1.0,
        dense=dense,
        finite=converged,
    )


def _buffered_stages(tableau, func, t, y0, f0, h, matrix, f_t, per_row):
    """``(y1, error, [u_i], finite)`` with the stages in one buffer (no autograd)."""
    s = tableau.stages
    # A tuple: view(torch.Size) costs about 2 µs more per call than view(tuple).
    shape = tuple(y0.shape)
    coefficients = _tableau_matrices(tableau, y0.dtype, y0.device)
    buffer = torch.zeros((s, y0.numel()), dtype=y0.dtype, device=y0.device)
    columns = buffer.T
    h_rows = row_values(h, y0)
    h_gamma = h_rows * tableau.gamma
    joint = not isinstance(h_gamma, torch.Tensor)
    # Flat rows in joint mode, rows shaped like the state per row (its solves keep the shape).
    stage_rows = buffer.unbind(0) if joint else buffer.view((s, *shape)).unbind(0)
    y0_flat = y0.reshape(-1)
    time_term = None
    if f_t is not None:
        time_term = h_gamma * h_rows * f_t
        time_term = time_term.reshape(-1) if joint else time_term
    for i in range(s):
        if i == 0:
            value = f0
        else:
            stage_input = torch.addmv(y0_flat, columns, coefficients.a[i]).view(shape)
            value = as_state(func(t + tableau.alpha[i] * h, stage_input), y0)
        # rhs = hγ f_i + γ Σ_j c_ij u_j (+ hγ γ_i h f_t)
        if joint:
            rhs = torch.addmv(value.reshape(-1), columns, coefficients.gamma_c[i], beta=h_gamma)
        else:
            rhs = torch.addcmul(
                torch.mv(columns, coefficients.gamma_c[i]).view(shape), h_gamma, value
            )
        if time_term is not None and tableau.gamma_sums[i] != 0.0:
            rhs.add_(time_term, alpha=tableau.gamma_sums[i])
        stage_rows[i].copy_(matrix.solve(rhs))
    y1 = torch.addmv(y0_flat, columns, coefficients.m).view(shape)
    error = None
    if coefficients.m_error is not None:
        error = torch.mv(columns, coefficients.m_error).view(shape)
    # A non-finite stage that matters reaches y1 or the error estimate (inf − inf is NaN).
    finite = torch.isfinite(y1 if error is None else y1 + error)
    finite = finite.view(shape[0], -1).all(dim=1) if per_row else finite.all()
    stages = list(stage_rows) if not joint else list(buffer.view((s, *shape)).unbind(0))
    return y1, error, stages, finite


def _recorded_stages(tableau, func, t, y0, f0, h, matrix, f_t, per_row):
    """``(y1, error, [u_i], finite)`` term by term, differentiable as it stands."""
    h_rows = row_values(h, y0)
    gamma = tableau.gamma
    h_gamma = h_rows * gamma
    u: list[torch.Tensor] = []
    for i in range(tableau.stages):
        if i == 0:
            value = f0
        else:
            stage_input = linear_combination(y0, u, tableau.a[i])
            value = as_state(func(t + tableau.alpha[i] * h, stage_input), y0)
        rhs = h_gamma * value
        if i > 0:
            rhs = rhs + linear_combination(None, u, [gamma * x for x in tableau.c_matrix[i]])
        if f_t is not None and tableau.gamma_sums[i] != 0.0:
            rhs = rhs + (h_gamma * h_rows * tableau.gamma_sums[i]) * f_t
        u.append(matrix.solve(rhs))
    y1 = linear_combination(y0, u, tableau.m)
    error = None if tableau.m_error is None else linear_combination(None, u, tableau.m_error)
    finite = rows_finite(y1, per_row)
    if error is not None:
        finite = finite & rows_finite(error, per_row)
    return y1, error, u, finite
