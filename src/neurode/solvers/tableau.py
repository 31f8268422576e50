"""Butcher tableaus as data.

An explicit Runge–Kutta method with ``s`` stages advances ``y_n`` by a step ``h``:

    k_i     = f(t_n + c_i h, y_n + h Σ_{j<i} a_ij k_j)
    y_{n+1} = y_n + h Σ_i b_i k_i
    e_{n+1} = h Σ_i (b_i - b̂_i) k_i          (error estimate, adaptive pairs only)

Dense output between ``t_n`` and ``t_{n+1} = t_n + h`` is a polynomial in θ ∈ [0, 1]:

    y(t_n + θ h) = y_n + h Σ_i b_i(θ) k_i,     b_i(θ) = Σ_j dense[i][j] θ^{j+1}

so ``b_i(1) = b_i``. A tableau without its own ``dense`` coefficients gets cubic
Hermite interpolation from ``k_1 = f(t_n, y_n)`` and ``f(t_{n+1}, y_{n+1})``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ButcherTableau:
    """Coefficients of an explicit Runge–Kutta method (and its embedded pair)."""

    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_error: tuple[float, ...] | None = None
    embedded_order: int | None = None
    fsal: bool = False
    dense: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError(f"{self.name}: `a` must be strictly lower triangular with {s} rows")
        if len(self.b) != s:
            raise ValueError(f"{self.name}: `b` needs {s} entries")
        if self.b_error is not None and len(self.b_error) != s:
            raise ValueError(f"{self.name}: `b_error` needs {s} entries")
        if self.dense is not None and len(self.dense) != s:
            raise ValueError(f"{self.name}: `dense` needs {s} rows")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.b_error is not None

    @property
    def error_exponent_order(self) -> int:
        """``q + 1`` with ``q = min(order, embedded_order)``: the error scales as ``h^(q+1)``."""
        q = self.order if self.embedded_order is None else min(self.order, self.embedded_order)
        return q + 1
