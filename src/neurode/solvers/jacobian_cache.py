r"""The Jacobian and its factorisation, kept across stages and steps.

A dense Jacobian costs ``d`` products with ``f`` and an LU factorisation
``O(d³)``; an implicit solver lives on reusing both. The policy is Hairer &
Wanner's (*Solving ODEs II*, §IV.8, as in RADAU5):

- ``J`` is computed at the start point ``(t_n, y_n)`` of a step when none is
  held or the held one is *stale*, and is then *current* for that point;
- it serves every stage of the step and, as long as Newton converges fast,
  the following steps too (then it is no longer current, but still good);
- the LU factors of the iteration matrix are rebuilt whenever ``h`` (so ``hγ``)
  changes or ``J`` is recomputed, and reused otherwise;
- after an accepted step whose Newton iterations contracted slower than
  ``recompute_rate`` (the largest ``θ``; HW use 10⁻³), ``J`` becomes stale;
- after a failed Newton iteration the step is retried with ``h/2``, and ``J`` is
  recomputed first unless it is already current (then only ``h`` can help);
- after a step rejected by the error test ``J`` stays: the start point is the
  same, only the factors are rebuilt for the new ``h``.

A Rosenbrock method needs the exact Jacobian at every step start
(``reuse=False``). For matrix-free solves (``krylov`` settings) nothing is
factored: the "Jacobian" is a linearisation point for products ``J v``, which
costs nothing to move, so it is always the current step's start.

The loop drives it with three calls besides asking for matrices:
:meth:`JacobianCache.step_accepted`, :meth:`JacobianCache.step_rejected`,
:meth:`JacobianCache.newton_failed`. In per-row mode each takes a ``(B,)`` mask
of the rows concerned; ``J`` is then recomputed for all rows whenever any row
needs it (one vmapped evaluation costs the same for all rows as for some, and
``func`` may hold per-row parameters that forbid evaluating a subset).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .jacobian import (
    JACOBIAN_METHODS,
    VectorField,
    dense_jacobian,
    joint_jacobian,
    user_jacobian,
)
from .linear_solve import (
    BlockIterationMatrix,
    DenseIterationMatrix,
    IterationMatrix,
    KrylovIterationMatrix,
    KrylovSettings,
)
from .structured_matrix import (
    BlockStructure,
    StructuredBlockIterationMatrix,
    StructuredIterationMatrix,
)

DEFAULT_RECOMPUTE_RATE = 1e-3


class JacobianCache:
    """Holds ``J``, when and where it was computed, and the factored iteration matrix.

    ``func(t, y)`` is the vector field; ``per_row`` selects the layout (see
    :mod:`neurode.solvers.jacobian`); ``jacobian(t, y)``, if given, replaces
    automatic differentiation; ``method`` is ``"reverse"`` or ``"forward"``;
    ``krylov`` switches to matrix-free GMRES solves. With ``structure`` (a
    :class:`~neurode.solvers.structured_matrix.BlockStructure`) the state is an
    augmented one: ``func`` is then the vector field of its base state (the
    first ``n`` entries, flattened), and the iteration matrices are built from
    that state's Jacobian block by block (joint mode, factored solves only).
    Counters for statistics: ``jacobian_evaluations``, ``factorizations``,
    ``jvp_evaluations``.
    """

    def __init__(
        self,
        func: VectorField,
        *,
        per_row: bool = False,
        jacobian: Callable[..., torch.Tensor] | None = None,
        method: str = "reverse",
        krylov: KrylovSettings | None = None,
        reuse: bool = True,
        recompute_rate: float = DEFAULT_RECOMPUTE_RATE,
        structure: BlockStructure | None = None,
    ):
        if structure is not None and (per_row or krylov is not None):
            raise ValueError("a block structure needs joint mode and factored solves")
        if jacobian is not None and krylov is not None:
            raise ValueError("a user Jacobian and matrix-free (Krylov) solves exclude each other")
        if method not in JACOBIAN_METHODS:
            raise ValueError(
                f"unknown Jacobian method {method!r}; expected one of {JACOBIAN_METHODS}"
            )
        if not recompute_rate >= 0.0:
            raise ValueError(f"recompute_rate must be non-negative, got {recompute_rate}")
        self.func = func
        self.per_row = per_row
        self.user_jacobian = jacobian
        self.method = method
        self.krylov = krylov
        self.reuse = reuse and krylov is None
        self.recompute_rate = recompute_rate
        self.structure = structure
        self.jacobian: torch.Tensor | None = None
        """The held Jacobian, ``(N, N)`` or ``(B, d, d)`` (per row, or joint row blocks);
        None before the first or for Krylov."""
        self._row_blocks: bool | None = None
        """Joint mode, autodiff: whether the rows were found independent (None: not yet asked)."""
        self.computed_at: float | torch.Tensor | None = None
        """The time(s) ``t`` at which the held Jacobian (or linearisation point) was taken."""
        self._point: tuple[float | torch.Tensor, torch.Tensor] | None = None
        self._stale: bool | torch.Tensor = True
        self._current: bool | torch.Tensor = False
        self._matrix: IterationMatrix | None = None
        self._matrix_key: tuple | None = None
        self._finished_jvps = 0
        self.jacobian_evaluations = 0
        self.factorizations = 0

    # ----------------------------------------------------------------- state
    @property
    def current(self) -> bool | torch.Tensor:
        """Whether the held ``J`` was taken at the present start point (per row: a mask)."""
        return self._current

    @property
    def jvp_evaluations(self) -> int:
        held = self._matrix.matvecs if isinstance(self._matrix, KrylovIterationMatrix) else 0
        return self._finished_jvps + held

    def _any(self, flags: bool | torch.Tensor) -> bool:
        return bool(flags.any()) if isinstance(flags, torch.Tensor) else bool(flags)

    def _refresh(self, t: float | torch.Tensor, y: torch.Tensor) -> None:
        """Take ``J`` (or the linearisation point) at ``(t, y)`` if it is stale."""
        if self._point is not None and not self._any(self._stale):
            return
        y = y.detach()
        if self.structure is not None:
            y = self.structure.base_state(y)
        if self.krylov is None:
            if self.user_jacobian is not None:
                self.jacobian = user_jacobian(self.user_jacobian, t, y, per_row=self.per_row)
            else:
                self.jacobian = self._automatic_jacobian(t, y)
            self.jacobian_evaluations += 1
        self._point = (t, y)
        self.computed_at = t
        rows = (y.shape[0],) if self.per_row else ()
        if self.per_row:
            self._stale = torch.zeros(rows, dtype=torch.bool, device=y.device)
            self._current = torch.ones(rows, dtype=torch.bool, device=y.device)
        else:
            self._stale, self._current = False, True
        self._drop_matrix()

    def _automatic_jacobian(self, t, y: torch.Tensor) -> torch.Tensor:
        """``J`` by autodiff; in joint mode as row blocks when the rows are independent
        (decided at the first Jacobian of the solve, :func:`row_block_jacobian`)."""
        if self.per_row or self.structure is not None:
            return dense_jacobian(self.func, t, y, per_row=self.per_row, method=self.method)
        jacobian, self._row_blocks = joint_jacobian(
            self.func, t, y, method=self.method, row_blocks=self._row_blocks
        )
        return jacobian

    def jacobian_at(self, t: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Take ``J`` at ``(t, y)`` now and return it (None for matrix-free solves)."""
        self._point = None  # forces _refresh to take it
        self._refresh(t, y)
        return self.jacobian

    def _drop_matrix(self) -> None:
        if isinstance(self._matrix, KrylovIterationMatrix):
            self._finished_jvps += self._matrix.matvecs
        self._matrix = self._matrix_key = None

    # ----------------------------------------------------------------- matrices
    def iteration_matrix(
        self, t: float | torch.Tensor, y: torch.Tensor, h_gamma: float | torch.Tensor
    ) -> IterationMatrix:
        """``I − hγJ`` at the step start ``(t, y)``, factored (or reused if ``hγ`` is unchanged)."""
        return self._get(t, y, ("diagonal", _key(h_gamma)), h_gamma, None)

    def block_iteration_matrix(
        self, t: float | torch.Tensor, y: torch.Tensor, h: float | torch.Tensor, a: torch.Tensor
    ) -> IterationMatrix:
        """``I − h (A ⊗ J)`` for a fully implicit step with coefficient matrix ``a``."""
        return self._get(t, y, ("block", _key(h), _key(a)), h, a)

    def _get(self, t, y, key, factor, a) -> IterationMatrix:
        self._refresh(t, y)
        if self._matrix is not None and _same(self._matrix_key, key):
            return self._matrix
        if self.krylov is not None:
            point_t, point_y = self._point
            matrix = KrylovIterationMatrix(
                self.func, point_t, point_y, factor, per_row=self.per_row, a=a, settings=self.krylov
            )
        elif self.structure is not None:
            if a is None:
                matrix = StructuredIterationMatrix(self.jacobian, factor, self.structure)
            else:
                matrix = StructuredBlockIterationMatrix(self.jacobian, factor, a, self.structure)
            self.factorizations += matrix.factorizations
        else:
            self.factorizations += 1
            if a is None:
                matrix = DenseIterationMatrix(self.jacobian, factor, per_row=self.per_row)
            else:
                matrix = BlockIterationMatrix(self.jacobian, factor, a, per_row=self.per_row)
        self._drop_matrix()
        self._matrix, self._matrix_key = matrix, key
        return matrix

    # ----------------------------------------------------------------- policy
    def step_accepted(
        self, rate: torch.Tensor | float | None = None, rows: torch.Tensor | None = None
    ) -> None:
        """The step was accepted (per row: the ``rows`` mask); ``rate`` is its largest Newton ``θ``.

        ``J`` now belongs to the previous point. It stays for the next step unless
        reuse is off (Rosenbrock, Krylov) or Newton contracted slower than
        ``recompute_rate``.
        """
        if self._point is None:
            return
        if self.per_row:
            rows = _all_rows(rows, self._current)
            slow = _rows_mask(rate, rows) > self.recompute_rate
            self._current = self._current & ~rows
            stale = rows if not self.reuse else rows & slow
            self._stale = self._stale | stale
            return
        self._current = False
        slow = rate is not None and float(rate) > self.recompute_rate
        if not self.reuse or slow:
            self._stale = True

    def step_rejected(self, rows: torch.Tensor | None = None) -> None:
        """The error test rejected the step: ``J`` is still at the start point; only ``h`` changes.

        Nothing to do; the factors are rebuilt when the next matrix is asked for
        with a different ``hγ``. Kept so the loop states every outcome.
        """

    def newton_failed(self, rows: torch.Tensor | None = None) -> None:
        """Newton did not converge (per row: the ``rows`` mask); the loop retries with ``h/2``.

        A ``J`` that is not current is recomputed at the retry; a current one is kept.
        """
        if self._point is None:
            return
        if self.per_row:
            rows = _all_rows(rows, self._current)
            self._stale = self._stale | (rows & ~self._current)
        elif not self._current:
            self._stale = True


def _key(value) -> object:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return float(value)


def _same(old: tuple | None, new: tuple) -> bool:
    if old is None or len(old) != len(new):
        return False
    for a, b in zip(old, new):
        if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
            if not (
                isinstance(a, torch.Tensor)
                and isinstance(b, torch.Tensor)
                and a.shape == b.shape
                and torch.equal(a, b.to(a.device))
            ):
                return False
        elif a != b:
            return False
    return True


def _all_rows(rows: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if rows is None:
        return torch.ones_like(like)
    return rows.to(device=like.device, dtype=torch.bool)


def _rows_mask(rate, rows: torch.Tensor) -> torch.Tensor:
    if rate is None:
        return torch.zeros(rows.shape, dtype=torch.float64, device=rows.device)
    return torch.as_tensor(rate).to(device=rows.device, dtype=torch.float64).expand(rows.shape)
