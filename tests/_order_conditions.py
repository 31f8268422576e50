"""Rooted trees and elementary weights: order conditions of implicit RK and Rosenbrock methods.

Runge–Kutta (any ``A``, full or triangular): a method with weights ``b`` has
order ``p`` when ``Σ_i b_i Φ_i(τ) = 1/γ(τ)`` for every rooted tree ``τ`` with
``|τ| ≤ p``, where ``Φ(•) = 𝟙`` and ``Φ([τ_1 … τ_m]) = Π_k (A Φ(τ_k))``
(componentwise), ``γ(•) = 1`` and ``γ(τ) = |τ| Π_k γ(τ_k)`` (HW I §II.2).

Rosenbrock (HW II §IV.7, Table 7.1): every derivative of ``f``
is taken at ``y_n``, so a vertex with a single child comes from the linear
terms, to which both the stage input (``α_ij``) and the Jacobian terms
(``γ_ij``) contribute: ``Φ([τ_1]) = B Φ(τ_1)`` with ``B = (β_ij)``,
``β_ij = α_ij + γ_ij`` *including* the diagonal ``β_ii = γ``; a vertex with two
or more children comes from the higher derivatives, evaluated at the stage
input only: ``Φ([τ_1 … τ_m]) = Π_k (α Φ(τ_k))``. The conditions are again
``Σ_i b_i Φ_i(τ) = 1/γ(τ)``; moving the diagonal ``γ`` to the right-hand side
gives HW's Table 7.1 (for example ``Σ b_j β'_jk = 1/2 − γ`` for the tree with
two nodes, ``β'`` without the diagonal), which the tests check separately.

A continuous extension ``b(θ)`` has order ``q`` at θ when
``Σ_i b_i(θ) Φ_i(τ) = θ^{|τ|}/γ(τ)`` for ``|τ| ≤ q``.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

Tree = tuple["Tree", ...]
"""A rooted tree as the sorted tuple of its root's subtrees; ``()`` is the single node."""


@cache
def trees_of_order(n: int) -> tuple[Tree, ...]:
    """All rooted trees with ``n`` nodes, each exactly once (subtrees in non-increasing order)."""
    if n == 1:
        return ((),)
    found: list[Tree] = []

    def attach(remaining: int, largest: tuple[int, Tree] | None, chosen: list[Tree]) -> None:
        if remaining == 0:
            found.append(tuple(sorted(chosen)))
            return
        for size in range(1, remaining + 1):
            for subtree in trees_of_order(size):
                key = (size, subtree)
                if largest is None or key <= largest:
                    attach(remaining - size, key, [*chosen, subtree])

    attach(n - 1, None, [])
    return tuple(found)


def trees_up_to(order: int) -> list[Tree]:
    return [tree for n in range(1, order + 1) for tree in trees_of_order(n)]


@cache
def size(tree: Tree) -> int:
    return 1 + sum(size(subtree) for subtree in tree)


@cache
def density(tree: Tree) -> int:
    """γ(τ) = |τ| Π_k γ(τ_k)."""
    return size(tree) * math.prod(density(subtree) for subtree in tree)


class RungeKuttaWeights:
    """Φ(τ) for a Runge–Kutta coefficient matrix ``A`` (any shape of nonzeros)."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = np.asarray(a, dtype=np.float64)
        self._cache: dict[Tree, np.ndarray] = {}

    def __call__(self, tree: Tree) -> np.ndarray:
        if tree not in self._cache:
            phi = np.ones(self.a.shape[0])
            for subtree in tree:
                phi = phi * (self.a @ self(subtree))
            self._cache[tree] = phi
        return self._cache[tree]


class RosenbrockWeights:
    """Φ(τ) for a Rosenbrock method: ``B = α + Γ`` at single-child vertices, ``α`` elsewhere."""

    def __init__(self, alpha: np.ndarray, gamma: np.ndarray) -> None:
        self.alpha = np.asarray(alpha, dtype=np.float64)
        self.beta = self.alpha + np.asarray(gamma, dtype=np.float64)
        self._cache: dict[Tree, np.ndarray] = {}

    def __call__(self, tree: Tree) -> np.ndarray:
        if tree not in self._cache:
            if len(tree) == 1:
                phi = self.beta @ self(tree[0])
            else:
                phi = np.ones(self.alpha.shape[0])
                for subtree in tree:
                    phi = phi * (self.alpha @ self(subtree))
            self._cache[tree] = phi
        return self._cache[tree]


def residuals(phi, weights, order: int, theta: float = 1.0) -> np.ndarray:
    """``Σ_i w_i Φ_i(τ) − θ^{|τ|}/γ(τ)`` for every tree with exactly ``order`` nodes."""
    w = np.asarray(weights, dtype=np.float64)
    return np.array(
        [w @ phi(tree) - theta**order / density(tree) for tree in trees_of_order(order)]
    )


def max_residual_up_to(phi, weights, order: int, theta: float = 1.0) -> float:
    return max(np.abs(residuals(phi, weights, n, theta)).max() for n in range(1, order + 1))
