r"""Rosenbrock (linearly implicit) tableaus as data.

An ``s``-stage Rosenbrock method (Hairer & Wanner, *Solving ODEs II*, §IV.7)
replaces the nonlinear stage equations of an implicit Runge–Kutta method by
linear ones with the Jacobian ``J = ∂f/∂y(t_n, y_n)``:

.. math::

    (I − hγJ)\,k_i = h f\big(t_n + α_i h,\; y_n + Σ_{j<i} α_{ij} k_j\big)
                     + hJ Σ_{j<i} γ_{ij} k_j + γ_i h^2 f_t,
    \qquad y_{n+1} = y_n + Σ_i b_i k_i,

with ``α_i = Σ_j α_ij``, ``γ_i = Σ_{j≤i} γ_ij`` (``γ_ii = γ``) and
``f_t = ∂f/∂t(t_n, y_n)``: one LU factorisation of ``I − hγJ`` per step, no
Newton iteration. The coefficients are stored, as published and as every code
uses them, in the transformed variables ``u_i = Σ_{j≤i} γ_ij k_j`` that avoid
products with ``J`` (HW IV.7, (7.23)):

.. math::

    \Big(\frac{1}{hγ} I − J\Big) u_i
        = f\big(t_n + α_i h,\; y_n + Σ_{j<i} a_{ij} u_j\big)
          + Σ_{j<i} \frac{c_{ij}}{h} u_j + γ_i h f_t,
    \qquad y_{n+1} = y_n + Σ_i m_i u_i,

where, with ``Γ = (γ_ij)``, ``(a_ij) = (α_ij) Γ⁻¹``, ``(c_ij) = diag(1/γ) − Γ⁻¹``
and ``(m_i) = (b_i) Γ⁻¹``. Here ``a`` and ``c_matrix`` are strictly lower
triangular, ``alpha`` holds the nodes ``α_i``, ``gamma_sums`` the ``γ_i``,
``m_error`` the weights ``m − m̂`` of the error estimate ``y_{n+1} − ŷ_{n+1}``.

Dense output, when given, follows the form of Hairer & Wanner's RODAS and of
Steinebach's methods: with ``K_j = Σ_i dense[j][i] u_i``,

.. math::

    y(t_n + θh) = (1 − θ)\,y_n + θ\,y_{n+1} + θ(1 − θ) Σ_j θ^j K_j .
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RosenbrockTableau:
    """Coefficients of a Rosenbrock method in the ``u``-variables (see the module notes)."""

    name: str
    order: int
    gamma: float
    alpha: tuple[float, ...]
    gamma_sums: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    c_matrix: tuple[tuple[float, ...], ...]
    m: tuple[float, ...]
    m_error: tuple[float, ...] | None = None
    embedded_order: int | None = None
    dense: tuple[tuple[float, ...], ...] | None = None
    a_stable: bool = False
    l_stable: bool = False

    def __post_init__(self) -> None:
        s = len(self.alpha)
        for label, rows in (("a", self.a), ("c_matrix", self.c_matrix)):
            if len(rows) != s or any(len(row) != i for i, row in enumerate(rows)):
                raise ValueError(f"{self.name}: `{label}` must be strictly lower triangular")
        if len(self.gamma_sums) != s or len(self.m) != s:
            raise ValueError(f"{self.name}: `gamma_sums` and `m` need {s} entries")
        if (self.m_error is None) != (self.embedded_order is None):
            raise ValueError(f"{self.name}: `m_error` and `embedded_order` come together")
        if self.m_error is not None and len(self.m_error) != s:
            raise ValueError(f"{self.name}: `m_error` needs {s} entries")
        if self.dense is not None and any(len(row) != s for row in self.dense):
            raise ValueError(f"{self.name}: every row of `dense` needs {s} entries")
        if self.l_stable and not self.a_stable:
            raise ValueError(f"{self.name}: L-stability includes A-stability")

    @property
    def stages(self) -> int:
        return len(self.alpha)

    @property
    def adaptive(self) -> bool:
        return self.m_error is not None

    @property
    def error_exponent_order(self) -> int:
        """``q + 1`` with ``q = min(order, embedded_order)``: the error scales as ``h^(q+1)``."""
        q = self.order if self.embedded_order is None else min(self.order, self.embedded_order)
        return q + 1
