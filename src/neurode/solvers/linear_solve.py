r"""The linear systems of implicit steps: factored iteration matrices and GMRES.

Every implicit step solves systems with an *iteration matrix*: ``I − hγJ`` for a
diagonally implicit or Rosenbrock step (one per step, shared by all stages),
``I − h (A ⊗ J)`` for a fully implicit one (the ``sN × sN`` stage system, stage
major: block ``(i, j)`` is ``δ_ij I − h a_ij J``). Each is an object with one
method, ``solve(rhs)``, so a step does not care how it is done:

- :class:`DenseIterationMatrix` and :class:`BlockIterationMatrix` factor the
  matrix once by LU (``torch.linalg.lu_factor_ex``) and then solve by
  ``lu_solve``, batched over rows in per-row mode (a small double-precision
  ``I − hγJ`` is inverted once instead, and solved by matrix–vector products);
- :class:`KrylovIterationMatrix` never forms ``J``: it runs restarted
  :func:`gmres` on products ``J v`` from forward-mode differentiation, for
  states too large for a dense Jacobian.

In joint mode a right-hand side has the shape of the state (or ``(s, *shape)``
for the block system) and ``h``, ``hγ`` are floats; in per-row mode the state
is ``(B, ...)`` (``(B, s, ...)`` for the block system) and ``h``, ``hγ`` are
``(B,)`` tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from .jacobian import VectorField, dense_from_blocks, is_row_blocks, jacobian_vector_product


class IterationMatrix(Protocol):
    """A linear operator ``M`` (``I − hγJ`` or ``I − h A⊗J``) that can solve ``M x = rhs``."""

    def solve(self, rhs: torch.Tensor) -> torch.Tensor: ...


def _row_factors(values: float | torch.Tensor, like: torch.Tensor, trailing: int) -> torch.Tensor:
    """``values`` as a tensor broadcastable against ``like``'s leading (row) dimension."""
    tensor = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return tensor.reshape(tensor.shape + (1,) * trailing)


_INVERSE_MAX_SIZE = 16
"""Up to this size (in double precision, without autograd) the iteration matrix is
inverted once and every solve is a matrix–vector product: for small systems the
per-call cost of ``lu_solve`` (about 10 µs on a CPU) dominates the arithmetic. On
Robertson, HIRES and van der Pol the solutions, step counts and errors equal those
with LU solves (rodas5p and kvaerno5, rtol 1e-4 to 1e-10); wall time drops 15–40 %.
In float32 the inverse's larger rounding showed (errors up to 10 times those of LU
solves at rtol 1e-5), so single precision keeps the LU solves."""


def _lu_solve(lu: torch.Tensor, pivots: torch.Tensor, rhs: torch.Tensor, per_row: bool):
    """``M⁻¹ rhs`` from ``M``'s LU factors, shaped like ``rhs`` (rows in dimension 0 per row)."""
    columns = rhs.reshape(rhs.shape[0], -1, 1) if per_row else rhs.reshape(-1, 1)
    if columns.dtype != lu.dtype:
        columns = columns.to(lu.dtype)
    solution = torch.linalg.lu_solve(lu, pivots, columns).view(tuple(rhs.shape))
    return solution if solution.dtype == rhs.dtype else solution.to(rhs.dtype)


class DenseIterationMatrix:
    """``I − hγJ`` factored by LU (inverted up to ``_INVERSE_MAX_SIZE``), joint ``(N, N)``
    or per row ``(B, d, d)``.

    ``singular`` (a bool tensor, ``()`` or ``(B,)``) marks factorisations that
    hit an exact zero pivot; solving with them gives non-finite values, which a
    Newton iteration reports as not converged.
    """

    def __init__(self, jacobian: torch.Tensor, h_gamma: float | torch.Tensor, *, per_row: bool):
        # Joint-mode row blocks (B, d, d) are solved like rows, with one hγ for all.
        self.row_blocks = is_row_blocks(jacobian, per_row)
        self.per_row = per_row
        self.h_gamma = h_gamma
        n = jacobian.shape[-1]
        identity = torch.eye(n, dtype=jacobian.dtype, device=jacobian.device)
        if per_row:
            matrix = identity - _row_factors(h_gamma, jacobian, 2) * jacobian
        elif isinstance(h_gamma, torch.Tensor):
            matrix = identity - h_gamma * jacobian
        else:
            matrix = torch.add(identity, jacobian, alpha=-h_gamma)
        self._inverse = None
        double = matrix.dtype in (torch.float64, torch.complex128)
        if n <= _INVERSE_MAX_SIZE and double and not matrix.requires_grad:
            self._inverse, info = torch.linalg.inv_ex(matrix)
            if bool(info.any()):
                # Solves with a singular matrix must not look like numbers.
                singular = (info != 0).reshape(info.shape + (1, 1))
                self._inverse = torch.where(singular, float("nan"), self._inverse)
        else:
            self._lu, self._pivots, info = torch.linalg.lu_factor_ex(matrix)
        self._info = info

    @property
    def singular(self) -> torch.Tensor:
        singular = self._info != 0
        return singular.any() if self.row_blocks else singular

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        if self.row_blocks:
            rows = self._info.shape[0]
            return self._solve(rhs.reshape(rows, -1), True).view(tuple(rhs.shape))
        return self._solve(rhs, self.per_row)

    def _solve(self, rhs: torch.Tensor, rows: bool) -> torch.Tensor:
        inverse = self._inverse
        if inverse is None:
            return _lu_solve(self._lu, self._pivots, rhs, rows)
        if rhs.dtype != inverse.dtype:
            return self._solve(rhs.to(inverse.dtype), rows).to(rhs.dtype)
        if rows:
            return torch.bmm(inverse, rhs.reshape(rhs.shape[0], -1, 1)).view(tuple(rhs.shape))
        if rhs.ndim == 1:
            return torch.mv(inverse, rhs)
        return torch.mv(inverse, rhs.reshape(-1)).view(tuple(rhs.shape))


class BlockIterationMatrix:
    """The LU factors of ``I − h (A ⊗ J)`` for the stage system of a fully implicit method."""

    def __init__(
        self, jacobian: torch.Tensor, h: float | torch.Tensor, a: torch.Tensor, *, per_row: bool
    ):
        self.per_row = per_row
        self.h = h
        if is_row_blocks(jacobian, per_row):
            jacobian = dense_from_blocks(jacobian)
        s, n = a.shape[0], jacobian.shape[-1]
        a = a.to(jacobian.dtype)
        if per_row:
            rows = jacobian.shape[0]
            kron = torch.einsum("ij,bpq->bipjq", a, jacobian).reshape(rows, s * n, s * n)
            factor = _row_factors(h, jacobian, 2)
        else:
            kron = torch.kron(a, jacobian)
            factor = h
        identity = torch.eye(s * n, dtype=jacobian.dtype, device=jacobian.device)
        self._lu, self._pivots, info = torch.linalg.lu_factor_ex(identity - factor * kron)
        self.singular = info != 0

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        return _lu_solve(self._lu, self._pivots, rhs, self.per_row)


# --------------------------------------------------------------------------- GMRES
@dataclass
class GMRESResult:
    """Solutions ``x`` of shape ``(S, n)`` and, per system, whether the tolerance was met."""

    x: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor
    """Arnoldi steps taken by each system, over all restarts."""
    residual_norm: torch.Tensor
    """The GMRES estimate of ``‖b − A x‖``, exact up to rounding."""


def gmres(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    x0: torch.Tensor | None = None,
    rtol: float = 1e-6,
    atol: float = 0.0,
    restart: int = 20,
    max_restarts: int = 10,
) -> GMRESResult:
    r"""Restarted GMRES for ``S`` independent systems ``A_s x_s = b_s`` at once.

    ``b`` has shape ``(S, n)`` and ``matvec(V)`` applies each system's operator to
    its own row of ``V``. Each cycle builds an orthonormal Krylov basis by
    Arnoldi with classical Gram–Schmidt applied twice (stable, and one batched
    product per pass instead of a loop over the basis), reduces the Hessenberg
    matrix with Givens rotations, and stops a system once
    ``‖b_s − A_s x_s‖ ≤ max(rtol ‖b_s‖, atol)``. A system that stops early keeps
    the iterate of its own stopping step, so the result for one system does not
    depend on the others. At most ``restart`` Arnoldi steps per cycle and
    ``max_restarts + 1`` cycles.
    """
    if b.ndim != 2:
        raise ValueError(f"gmres expects b of shape (systems, n); got {tuple(b.shape)}")
    systems, n = b.shape
    m = max(1, min(restart, n))
    tiny = torch.finfo(b.dtype).tiny
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    target = torch.clamp(rtol * torch.linalg.vector_norm(b, dim=1), min=atol)
    iterations = torch.zeros(systems, dtype=torch.long, device=b.device)
    converged = torch.zeros(systems, dtype=torch.bool, device=b.device)
    residual = b - matvec(x) if x0 is not None else b.clone()
    residual_norm = torch.linalg.vector_norm(residual, dim=1)
    converged = residual_norm <= target

    for _ in range(max_restarts + 1):
        if bool(converged.all()):
            break
        basis = torch.zeros(systems, m + 1, n, dtype=b.dtype, device=b.device)
        hessenberg = torch.zeros(systems, m + 1, m, dtype=b.dtype, device=b.device)
        cosines = torch.zeros(systems, m, dtype=b.dtype, device=b.device)
        sines = torch.zeros(systems, m, dtype=b.dtype, device=b.device)
        g = torch.zeros(systems, m + 1, dtype=b.dtype, device=b.device)
        g[:, 0] = residual_norm
        basis[:, 0] = residual / residual_norm.clamp_min(tiny)[:, None]
        # Steps of this cycle used by each system; a converged one uses none.
        used = torch.zeros(systems, dtype=torch.long, device=b.device)
        running = ~converged
        for j in range(m):
            w = matvec(basis[:, j])
            h = torch.zeros(systems, j + 2, dtype=b.dtype, device=b.device)
            for _ in range(2):
                projection = torch.einsum("skn,sn->sk", basis[:, : j + 1], w)
                w = w - torch.einsum("sk,skn->sn", projection, basis[:, : j + 1])
                h[:, : j + 1] += projection
            h[:, j + 1] = torch.linalg.vector_norm(w, dim=1)
            basis[:, j + 1] = torch.where(
                h[:, j + 1, None] > tiny, w / h[:, j + 1, None].clamp_min(tiny), 0.0
            )
            for i in range(j):
                upper = cosines[:, i] * h[:, i] + sines[:, i] * h[:, i + 1]
                h[:, i + 1] = -sines[:, i] * h[:, i] + cosines[:, i] * h[:, i + 1]
                h[:, i] = upper
            radius = torch.hypot(h[:, j], h[:, j + 1])
            safe = radius.clamp_min(tiny)
            cosines[:, j] = torch.where(radius > tiny, h[:, j] / safe, 1.0)
            sines[:, j] = torch.where(radius > tiny, h[:, j + 1] / safe, 0.0)
            h[:, j] = radius
            h[:, j + 1] = 0.0
            hessenberg[:, : j + 2, j] = h
            g[:, j + 1] = -sines[:, j] * g[:, j]
            g[:, j] = cosines[:, j] * g[:, j]
            used = torch.where(running, used + 1, used)
            iterations = torch.where(running, iterations + 1, iterations)
            estimate = g[:, j + 1].abs()
            residual_norm = torch.where(running, estimate, residual_norm)
            newly = running & (estimate <= target)
            converged = converged | newly
            running = running & ~newly
            if not bool(running.any()):
                break
        x = x + _least_squares_update(basis, hessenberg, g, used)
        if bool(converged.all()):
            break
        residual = b - matvec(x)
        residual_norm = torch.linalg.vector_norm(residual, dim=1)
        converged = converged | (residual_norm <= target)
    return GMRESResult(x, converged, iterations, residual_norm)


def _least_squares_update(
    basis: torch.Tensor, hessenberg: torch.Tensor, g: torch.Tensor, used: torch.Tensor
) -> torch.Tensor:
    """``V_k y`` with ``R_k y = g_k`` for each system's own ``k = used``.

    Rows and columns past a system's ``k`` become the identity with a zero
    right-hand side, so one batched triangular solve serves every ``k``.
    """
    k = int(used.max())
    if k == 0:
        return torch.zeros_like(basis[:, 0])
    r = hessenberg[:, :k, :k]
    rhs = g[:, :k]
    index = torch.arange(k, device=used.device)
    inside = index[None, :] < used[:, None]
    keep = inside[:, :, None] & inside[:, None, :]
    eye = torch.eye(k, dtype=r.dtype, device=r.device).expand_as(r)
    r = torch.where(keep, r, eye)
    rhs = torch.where(inside, rhs, 0.0)
    y = torch.linalg.solve_triangular(r, rhs[:, :, None], upper=True)[:, :, 0]
    return torch.einsum("sk,skn->sn", y, basis[:, :k])


# --------------------------------------------------------------------------- Newton–Krylov
@dataclass(frozen=True)
class KrylovSettings:
    """GMRES settings for matrix-free stage solves.

    ``rtol`` is relative to the right-hand side: an inexact Newton iteration
    converges linearly at about that rate on top of its own, so ``1e-3`` costs
    little accuracy; the Newton stopping test still decides convergence.
    """

    rtol: float = 1e-3
    restart: int = 20
    max_restarts: int = 2


class KrylovIterationMatrix:
    """``I − hγJ`` (or ``I − h A⊗J`` when ``a`` is given) applied matrix-free, solved by GMRES.

    ``J`` is the Jacobian at the linearisation point ``(t, y)``; each product
    ``J v`` is one forward-mode evaluation of ``func`` (per stage of the block
    system). ``matvecs`` counts them, ``failures`` counts solves that missed the
    GMRES tolerance (the Newton test then decides whether the stage converged).
    """

    def __init__(
        self,
        func: VectorField,
        t: float | torch.Tensor,
        y: torch.Tensor,
        h_gamma: float | torch.Tensor,
        *,
        per_row: bool,
        a: torch.Tensor | None = None,
        settings: KrylovSettings = KrylovSettings(),
    ):
        self.func, self.t, self.y = func, t, y.detach()
        self.h_gamma = h_gamma
        self.per_row = per_row
        self.a = None if a is None else a.to(y.dtype)
        self.settings = settings
        self.matvecs = 0
        self.failures = 0

    def _apply_jacobian(self, v: torch.Tensor) -> torch.Tensor:
        self.matvecs += 1
        return jacobian_vector_product(self.func, self.t, self.y, v)

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        y_shape = self.y.shape
        systems = rhs.shape[0] if self.per_row else 1
        stages = 1 if self.a is None else self.a.shape[0]
        factor = _row_factors(self.h_gamma, self.y, 1) if self.per_row else self.h_gamma

        def matvec(v: torch.Tensor) -> torch.Tensor:
            # v: (S, stages * n) -> per stage in the state's shape.
            per_stage = v.reshape(systems, stages, -1)
            products = [
                self._apply_jacobian(per_stage[:, i].reshape(y_shape)).reshape(systems, -1)
                for i in range(stages)
            ]
            jv = torch.stack(products, dim=1)  # (S, stages, n)
            if self.a is not None:
                jv = torch.einsum("ij,sjn->sin", self.a, jv)
            return v - factor * jv.reshape(systems, -1)

        b = rhs.reshape(systems, -1)
        result = gmres(
            matvec,
            b,
            rtol=self.settings.rtol,
            restart=self.settings.restart,
            max_restarts=self.settings.max_restarts,
        )
        self.failures += int((~result.converged).sum())
        return result.x.reshape(rhs.shape)
