"""Implicit Runge–Kutta tableaus as data.

An implicit Runge–Kutta method with ``s`` stages and a full ``s × s`` matrix ``A``
advances ``y_n`` by a step ``h`` through the stage equations

    Y_i     = y_n + h Σ_j a_ij f(t_n + c_i h, Y_j),          i = 1 … s
    k_i     = f(t_n + c_i h, Y_i)
    y_{n+1} = y_n + h Σ_i b_i k_i
    e_{n+1} = h Σ_i (b_i − b̂_i) k_i          (error estimate, adaptive pairs only)

``A`` lower triangular makes the method *diagonally implicit* (DIRK): the stages
are solved one after another, each a system of the size of ``y``. All diagonal
entries equal to one ``γ`` make it *singly* diagonally implicit (SDIRK), so one
factorisation of ``I − hγJ`` serves every stage; ``a_11 = 0`` as well makes the
first stage explicit (ESDIRK: ``k_1 = f(t_n, y_n)``). A method is *stiffly
accurate* when ``b`` is the last row of ``A`` (so ``y_{n+1} = Y_s``); with a
nonsingular ``A`` that gives ``R(∞) = 1 − bᵀA⁻¹𝟙 = 0``, and for an ESDIRK
(singular ``A``) ``R(∞) = 0`` is one polynomial condition on ``γ``.

Stability is a property of the stability function
``R(z) = 1 + z bᵀ (I − zA)⁻¹ 𝟙`` (the step applied to ``y' = λy`` with ``z = hλ``):
*A-stable* when ``|R(z)| ≤ 1`` on the closed left half-plane, *L-stable* when in
addition ``R(∞) = 0``, so a stiff mode is damped in one step however large ``hλ``.
These are declared on each tableau and verified by the tests.

Dense output is a polynomial in ``θ ∈ [0, 1]`` exactly as for the explicit
tableaus: ``y(t_n + θh) = y_n + h Σ_i b_i(θ) k_i`` with
``b_i(θ) = Σ_j dense[i][j] θ^{j+1}``. Collocation methods (Gauss, Radau IIA,
Lobatto IIIA) carry their collocation polynomial; stiffly accurate methods with
an explicit first stage carry the cubic Hermite interpolant through
``(y_n, f_n)`` and ``(y_{n+1}, f_{n+1})``, which is such a polynomial because
``k_1 = f_n`` and ``k_s = f(t_{n+1}, y_{n+1})`` (:func:`hermite_dense`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImplicitTableau:
    """Coefficients of an implicit Runge–Kutta method (and its embedded pair).

    ``a`` is the full ``s × s`` matrix, row by row. ``b_error`` holds ``b − b̂``
    for an embedded pair of order ``embedded_order``. ``a_stable`` and
    ``l_stable`` are declared properties of the stability function, checked by
    the tests.
    """

    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_error: tuple[float, ...] | None = None
    embedded_order: int | None = None
    dense: tuple[tuple[float, ...], ...] | None = None
    a_stable: bool = False
    l_stable: bool = False

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or any(len(row) != s for row in self.a):
            raise ValueError(f"{self.name}: `a` must be a full {s} x {s} matrix")
        if len(self.b) != s:
            raise ValueError(f"{self.name}: `b` needs {s} entries")
        if (self.b_error is None) != (self.embedded_order is None):
            raise ValueError(f"{self.name}: `b_error` and `embedded_order` come together")
        if self.b_error is not None and len(self.b_error) != s:
            raise ValueError(f"{self.name}: `b_error` needs {s} entries")
        if self.dense is not None and len(self.dense) != s:
            raise ValueError(f"{self.name}: `dense` needs {s} rows")
        if self.l_stable and not self.a_stable:
            raise ValueError(f"{self.name}: L-stability includes A-stability")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.b_error is not None

    @property
    def diagonally_implicit(self) -> bool:
        """``a_ij = 0`` for ``j > i``: the stages can be solved one at a time."""
        return all(x == 0.0 for i, row in enumerate(self.a) for x in row[i + 1 :])

    @property
    def explicit_first_stage(self) -> bool:
        """``a_11 = 0`` in a diagonally implicit method: ``k_1 = f(t_n, y_n)`` (ESDIRK)."""
        return self.diagonally_implicit and all(x == 0.0 for x in self.a[0])

    @property
    def gamma(self) -> float | None:
        """The one nonzero diagonal entry of a singly diagonally implicit method, else None."""
        if not self.diagonally_implicit:
            return None
        diagonal = {self.a[i][i] for i in range(self.stages)} - {0.0}
        if len(diagonal) != 1:
            return None
        if any(self.a[i][i] == 0.0 for i in range(1, self.stages)):
            return None  # only the first stage may be explicit
        return diagonal.pop()

    @property
    def stiffly_accurate(self) -> bool:
        """``b`` is the last row of ``A``: the new solution is the last stage value."""
        return tuple(self.a[-1]) == tuple(self.b)

    @property
    def error_exponent_order(self) -> int:
        """``q + 1`` with ``q = min(order, embedded_order)``: the error scales as ``h^(q+1)``."""
        q = self.order if self.embedded_order is None else min(self.order, self.embedded_order)
        return q + 1


def hermite_dense(b: tuple[float, ...]) -> tuple[tuple[float, ...], ...]:
    r"""Cubic Hermite interpolation written as stage weights ``b_i(θ)``.

    For a stiffly accurate method whose first stage is ``k_1 = f(t_n, y_n)`` and
    whose last stage sits at ``c_s = 1`` (so ``k_s = f(t_{n+1}, y_{n+1})``), the
    Hermite cubic through ``(y_n, k_1)`` and ``(y_{n+1}, k_s)``,

    .. math::

        y(θ) = y_n + h\,[(3θ^2 − 2θ^3)\,Σ_i b_i k_i + (θ − 2θ^2 + θ^3)\,k_1
               + (θ^3 − θ^2)\,k_s],

    has ``b_i(θ) = (3θ² − 2θ³) b_i + (θ − 2θ² + θ³) δ_{i1} + (θ³ − θ²) δ_{is}``:
    third-order accurate for every θ and C¹ across steps. Rows hold the
    coefficients of ``θ, θ², θ³``.
    """
    s = len(b)
    rows = []
    for i, b_i in enumerate(b):
        linear = 1.0 if i == 0 else 0.0
        square = 3.0 * b_i - (2.0 if i == 0 else 0.0) - (1.0 if i == s - 1 else 0.0)
        cube = -2.0 * b_i + (1.0 if i == 0 else 0.0) + (1.0 if i == s - 1 else 0.0)
        rows.append((linear, square, cube))
    return tuple(rows)
