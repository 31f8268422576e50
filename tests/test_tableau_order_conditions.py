"""Every registered Butcher tableau against Butcher's rooted-tree order conditions.

A Runge–Kutta method with weights ``b`` has order ``p`` exactly when, for every
rooted tree ``τ`` with ``|τ| ≤ p`` nodes,

    Σ_i b_i Φ_i(τ) = 1 / γ(τ),

where the stage weights are ``Φ(•) = 1`` (all stages) and, for a tree whose root
has subtrees ``τ_1 … τ_m``, ``Φ(τ) = Π_k (A Φ(τ_k))`` (componentwise product),
and the density is ``γ(•) = 1``, ``γ(τ) = |τ| Π_k γ(τ_k)``. A continuous
extension ``b_i(θ)`` has order ``q`` at θ when ``Σ_i b_i(θ) Φ_i(τ) = θ^{|τ|} / γ(τ)``
for ``|τ| ≤ q``.

Trees are generated here from scratch (no table of them is typed in) and the
generator is checked against the number of rooted trees and against the
identity ``Σ_{|τ|=n} n!/(σ(τ)γ(τ)) = (n−1)!`` (the count of increasing labellings).
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction
from functools import cache

import numpy as np
import pytest

from neurode.solvers.tableau import ButcherTableau
from neurode.solvers.tableaus import TABLEAUS

Tree = tuple["Tree", ...]
"""A rooted tree as the sorted tuple of its root's subtrees; ``()`` is the single node."""

# Every 1/γ(τ) is at most 1 and every tableau's coefficients are rounded to float64 once,
# so a satisfied condition leaves a residual of rounding size (≲ 2e-14 for the largest
# coefficients here); a violated one leaves at least 1e-6 for every method registered.
_SATISFIED = 1e-13
_VIOLATED = 1e-9

# Continuous order of each tableau's own dense output.
_DENSE_ORDER = {"dopri5": 4, "tsit5": 4, "dopri8": 5}

_THETAS = (0.1, 0.25, 0.5, 0.7, 0.93)

_ADAPTIVE = sorted(name for name, tableau in TABLEAUS.items() if tableau.adaptive)
_FSAL = sorted(name for name, tableau in TABLEAUS.items() if tableau.fsal)
_DENSE = sorted(name for name, tableau in TABLEAUS.items() if tableau.dense is not None)


@cache
def _trees_of_order(n: int) -> tuple[Tree, ...]:
    """All rooted trees with ``n`` nodes, each exactly once.

    A tree of order ``n`` is a root above a multiset of subtrees whose orders add up
    to ``n − 1``; listing the subtrees in non-increasing (order, tree) sequence
    generates each multiset once.
    """
    if n == 1:
        return ((),)
    found: list[Tree] = []

    def attach(remaining: int, largest: tuple[int, Tree] | None, chosen: list[Tree]) -> None:
        if remaining == 0:
            found.append(tuple(sorted(chosen)))
            return
        for size in range(1, remaining + 1):
            for subtree in _trees_of_order(size):
                key = (size, subtree)
                if largest is None or key <= largest:
                    attach(remaining - size, key, [*chosen, subtree])

    attach(n - 1, None, [])
    return tuple(found)


def _trees_up_to(order: int) -> list[Tree]:
    return [tree for n in range(1, order + 1) for tree in _trees_of_order(n)]


@cache
def _size(tree: Tree) -> int:
    return 1 + sum(_size(subtree) for subtree in tree)


@cache
def _density(tree: Tree) -> int:
    """γ(τ) = |τ| Π_k γ(τ_k)."""
    return _size(tree) * math.prod(_density(subtree) for subtree in tree)


@cache
def _symmetry(tree: Tree) -> int:
    """σ(τ) = Π over distinct subtrees of m! σ(subtree)^m, with m its multiplicity."""
    return math.prod(
        math.factorial(m) * _symmetry(subtree) ** m for subtree, m in Counter(tree).items()
    )


class _ElementaryWeights:
    """Φ(τ) for one coefficient matrix, memoised over subtrees."""

    def __init__(self, tableau: ButcherTableau) -> None:
        s = tableau.stages
        self.matrix = np.zeros((s, s))
        for i, row in enumerate(tableau.a):
            self.matrix[i, :i] = row
        self._cache: dict[Tree, np.ndarray] = {}

    def __call__(self, tree: Tree) -> np.ndarray:
        if tree not in self._cache:
            phi = np.ones(self.matrix.shape[0])
            for subtree in tree:
                phi = phi * (self.matrix @ self(subtree))
            self._cache[tree] = phi
        return self._cache[tree]


def _residuals(tableau: ButcherTableau, weights, order: int) -> np.ndarray:
    """``Σ_i w_i Φ_i(τ) − 1/γ(τ)`` for every tree with exactly ``order`` nodes."""
    phi = _ElementaryWeights(tableau)
    w = np.asarray(weights, dtype=np.float64)
    return np.array([w @ phi(tree) - 1.0 / _density(tree) for tree in _trees_of_order(order)])


def _max_residual_up_to(tableau: ButcherTableau, weights, order: int) -> float:
    return max(np.abs(_residuals(tableau, weights, n)).max() for n in range(1, order + 1))


def _embedded_weights(tableau: ButcherTableau) -> np.ndarray:
    return np.asarray(tableau.b) - np.asarray(tableau.b_error)


def _dense_weights(tableau: ButcherTableau, theta: float) -> np.ndarray:
    """``b_i(θ) = Σ_j dense[i][j] θ^{j+1}``."""
    degree = max(len(row) for row in tableau.dense)
    coefficients = np.zeros((tableau.stages, degree))
    for i, row in enumerate(tableau.dense):
        coefficients[i, : len(row)] = row
    return coefficients @ theta ** np.arange(1, degree + 1)


# --- the tree generator itself ---------------------------------------------------------


def test_number_of_rooted_trees_matches_cayley_counts():
    # Rooted unlabelled trees with n nodes (Cayley; OEIS A000081).
    counts = [len(_trees_of_order(n)) for n in range(1, 10)]
    assert counts == [1, 1, 2, 4, 9, 20, 48, 115, 286]
    assert len(_trees_up_to(8)) == 200


def test_generated_trees_are_distinct_and_have_the_requested_size():
    for n in range(1, 10):
        trees = _trees_of_order(n)
        assert len(set(trees)) == len(trees)
        assert all(_size(tree) == n for tree in trees)
        assert all(tuple(sorted(tree)) == tree for tree in trees)


def test_densities_and_symmetries_count_increasing_labellings():
    # Σ_{|τ|=n} n! / (σ(τ) γ(τ)) = (n−1)!: each term counts the labellings of τ by
    # 1..n that increase away from the root; together they are the (n−1)! recursive trees.
    for n in range(1, 10):
        total = sum(
            Fraction(math.factorial(n), _symmetry(tree) * _density(tree))
            for tree in _trees_of_order(n)
        )
        assert total == math.factorial(n - 1)


def _chain(n: int) -> Tree:
    """The tall tree: ``n`` nodes in a line."""
    tree: Tree = ()
    for _ in range(n - 1):
        tree = (tree,)
    return tree


def test_densities_and_symmetries_of_known_trees():
    bushy_fourth = ((), (), ())  # a root with three leaves
    assert _size(_chain(4)) == 4 and _density(_chain(4)) == math.factorial(4)
    assert _density(bushy_fourth) == 4 and _symmetry(bushy_fourth) == math.factorial(3)
    assert _density(((), _chain(2))) == 4 * 2  # a root with a leaf and a chain of two
    assert _symmetry(((), _chain(2))) == 1


def test_classical_rk4_has_order_four_and_not_five():
    # An independent sanity check of the residual machinery on textbook coefficients:
    # the one fifth-order condition Σ b_i c_i⁴ = 1/5 gives 5/24 for classical RK4.
    tableau = TABLEAUS["rk4_classic"]
    assert _max_residual_up_to(tableau, tableau.b, 4) == pytest.approx(0.0, abs=1e-15)
    bushy_fifth = ((), (), (), ())
    residual = _residuals(tableau, tableau.b, 5)[_trees_of_order(5).index(bushy_fifth)]
    assert residual == pytest.approx(5 / 24 - 1 / 5, abs=1e-15)


# --- every tableau in the registry ----------------------------------------------------


@pytest.mark.parametrize("name", sorted(TABLEAUS))
def test_weights_satisfy_every_order_condition_up_to_declared_order(name):
    tableau = TABLEAUS[name]
    assert _max_residual_up_to(tableau, tableau.b, tableau.order) < _SATISFIED


@pytest.mark.parametrize("name", sorted(TABLEAUS))
def test_declared_order_is_exact(name):
    tableau = TABLEAUS[name]
    residuals = _residuals(tableau, tableau.b, tableau.order + 1)
    assert np.abs(residuals).max() > _VIOLATED


@pytest.mark.parametrize("name", _ADAPTIVE)
def test_embedded_weights_satisfy_order_conditions_up_to_embedded_order(name):
    tableau = TABLEAUS[name]
    b_hat = _embedded_weights(tableau)
    assert _max_residual_up_to(tableau, b_hat, tableau.embedded_order) < _SATISFIED


@pytest.mark.parametrize("name", _ADAPTIVE)
def test_embedded_order_is_exact(name):
    # An embedded solution of higher order than declared would make the error
    # estimate vanish to that order and the step-size control too optimistic.
    tableau = TABLEAUS[name]
    residuals = _residuals(tableau, _embedded_weights(tableau), tableau.embedded_order + 1)
    assert np.abs(residuals).max() > _VIOLATED


@pytest.mark.parametrize("name", sorted(TABLEAUS))
def test_rows_of_a_sum_to_c(name):
    # The order conditions above are those of the autonomous system, which use
    # A·1 as the abscissae; stages are evaluated at c, so the two must agree.
    tableau = TABLEAUS[name]
    row_sums = np.array([sum(row) for row in tableau.a])
    np.testing.assert_allclose(row_sums, tableau.c, rtol=0.0, atol=1e-15)


@pytest.mark.parametrize("name", _FSAL)
def test_fsal_last_stage_is_the_propagated_solution(name):
    # The last stage is f(t_{n+1}, y_{n+1}) and serves as the next step's first stage.
    tableau = TABLEAUS[name]
    assert tableau.c[-1] == 1.0
    assert tableau.a[-1] == tuple(tableau.b[:-1])
    assert tableau.b[-1] == 0.0


@pytest.mark.parametrize("name", _DENSE)
def test_dense_weights_at_theta_one_equal_b(name):
    # Compared exactly: the float64 coefficients as written, summed in rational
    # arithmetic, may differ from b only by rounding each coefficient once.
    tableau = TABLEAUS[name]
    eps = np.finfo(np.float64).eps
    for row, b in zip(tableau.dense, tableau.b, strict=True):
        exact_sum = sum(Fraction(x) for x in row)
        rounding = eps * (sum(abs(x) for x in row) + abs(b))
        assert abs(exact_sum - Fraction(b)) <= rounding


@pytest.mark.parametrize("name", sorted(set(_DENSE) & set(_FSAL)))
def test_fsal_dense_output_matches_both_end_slopes(name):
    # b_i'(0) = δ_i1 and b_i'(1) = δ_is: the interpolant leaves y_n with slope k_1 and
    # reaches y_{n+1} with slope k_s = f(t_{n+1}, y_{n+1}), so it is C¹ across steps.
    tableau = TABLEAUS[name]
    eps = np.finfo(np.float64).eps
    last = tableau.stages - 1
    for i, row in enumerate(tableau.dense):
        assert row[0] == (1.0 if i == 0 else 0.0)
        slope_at_one = sum((j + 1) * Fraction(x) for j, x in enumerate(row))
        rounding = eps * sum((j + 1) * abs(x) for j, x in enumerate(row))
        assert abs(slope_at_one - (1 if i == last else 0)) <= rounding, i


@pytest.mark.parametrize("name", _DENSE)
def test_every_dense_output_has_a_stated_continuous_order(name):
    assert name in _DENSE_ORDER


@pytest.mark.parametrize("theta", _THETAS)
@pytest.mark.parametrize("name", _DENSE)
def test_dense_output_satisfies_continuous_order_conditions(name, theta):
    tableau = TABLEAUS[name]
    weights = _dense_weights(tableau, theta)
    phi = _ElementaryWeights(tableau)
    for tree in _trees_up_to(_DENSE_ORDER[name]):
        expected = theta ** _size(tree) / _density(tree)
        assert abs(weights @ phi(tree) - expected) < _SATISFIED, tree
