"""Every implicit and Rosenbrock tableau against its order conditions and its stability claims.

The rooted-tree conditions (see ``_order_conditions``) are generated, not typed
in; for Rosenbrock methods the generator's rule is checked against the
hand-written list of HW II Table 7.1 up to order 4. Stability is checked on the
stability function ``R(z)``: ``R(∞) = 0`` for the L-stable methods, poles in the
right half-plane and ``|R(iy)| ≤ 1`` on the imaginary axis for the A-stable ones.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from _order_conditions import (
    RosenbrockWeights,
    RungeKuttaWeights,
    density,
    max_residual_up_to,
    residuals,
    size,
    trees_of_order,
    trees_up_to,
)
from neurode.solvers.implicit_tableau import ImplicitTableau, hermite_dense
from neurode.solvers.rosenbrock_tableau import RosenbrockTableau
from neurode.solvers.tableaus.kvaerno import KVAERNO3, KVAERNO4
from neurode.solvers.tableaus.stiff import IMPLICIT_TABLEAUS, ROSENBROCK_TABLEAUS

# Every coefficient is rounded to float64 once; the largest (Rodas, |c_ij| ≈ 300) leave
# residuals of a few 1e-14, a violated condition leaves at least 1e-4 for every method here.
_SATISFIED = 1e-12
_VIOLATED = 1e-6

_THETAS = (0.1, 0.3, 0.5, 0.77, 0.95)

# Continuous order of each tableau's dense output.
_DENSE_ORDER = {
    "implicit_euler": 1,
    "implicit_midpoint": 1,
    "trapezoid": 2,
    "gl4": 2,
    "gl6": 3,
    "radauIIA3": 2,
    "radauIIA5": 3,
    "sdirk2": 2,
    "trbdf2": 2,
    "kvaerno3": 3,
    "kvaerno4": 3,
    "kvaerno5": 3,
    "rodas5": 4,
    "rodas5p": 4,
}

# (diagonally implicit, explicit first stage, stiffly accurate, singly diagonal γ or None)
_STRUCTURE = {
    "implicit_euler": (True, False, True, 1.0),
    "implicit_midpoint": (True, False, False, 0.5),
    "trapezoid": (True, True, True, 0.5),
    "gl4": (False, False, False, None),
    "gl6": (False, False, False, None),
    "radauIIA3": (False, False, True, None),
    "radauIIA5": (False, False, True, None),
    "sdirk2": (True, False, True, 1 - math.sqrt(2) / 2),
    "trbdf2": (True, True, True, 1 - math.sqrt(2) / 2),
    "kvaerno3": (True, True, True, KVAERNO3.gamma),
    "kvaerno4": (True, True, True, KVAERNO4.gamma),
    "kvaerno5": (True, True, True, 0.26),
}

_IMPLICIT = sorted(IMPLICIT_TABLEAUS)
_EMBEDDED = sorted(n for n, t in IMPLICIT_TABLEAUS.items() if t.adaptive)
_ROSENBROCK = sorted(ROSENBROCK_TABLEAUS)


def _matrix(tableau: ImplicitTableau) -> np.ndarray:
    return np.array(tableau.a, dtype=np.float64)


def _dense_weights(rows, theta: float) -> np.ndarray:
    """``b_i(θ) = Σ_j rows[i][j] θ^{j+1}``."""
    return np.array([sum(x * theta ** (j + 1) for j, x in enumerate(row)) for row in rows])


def _stability(a: np.ndarray, b: np.ndarray, z: complex) -> complex:
    """``R(z) = 1 + z bᵀ (I − zA)⁻¹ 𝟙``."""
    s = len(b)
    return 1 + z * (b @ np.linalg.solve(np.eye(s) - z * a, np.ones(s, dtype=complex)))


def _check_a_stability(a: np.ndarray, b: np.ndarray) -> None:
    # Poles of R are the reciprocals of A's nonzero eigenvalues: all must lie in Re z > 0
    # for R to be analytic on the left half-plane, where the maximum principle then puts
    # max |R| on the imaginary axis.
    eigenvalues = np.linalg.eigvals(a)
    nonzero = eigenvalues[np.abs(eigenvalues) > 1e-12]
    assert np.all(nonzero.real > 0), eigenvalues
    for y in np.concatenate([-np.logspace(-3, 8, 200), np.logspace(-3, 8, 200)]):
        assert abs(_stability(a, b, 1j * y)) <= 1 + 1e-12, y


# --- the implicit Runge–Kutta tableaus --------------------------------------------------


@pytest.mark.parametrize("name", _IMPLICIT)
def test_weights_satisfy_every_order_condition_up_to_declared_order(name):
    tableau = IMPLICIT_TABLEAUS[name]
    phi = RungeKuttaWeights(_matrix(tableau))
    assert max_residual_up_to(phi, tableau.b, tableau.order) < _SATISFIED


@pytest.mark.parametrize("name", _IMPLICIT)
def test_declared_order_is_exact(name):
    tableau = IMPLICIT_TABLEAUS[name]
    phi = RungeKuttaWeights(_matrix(tableau))
    assert np.abs(residuals(phi, tableau.b, tableau.order + 1)).max() > _VIOLATED


@pytest.mark.parametrize("name", _EMBEDDED)
def test_embedded_weights_have_exactly_the_embedded_order(name):
    tableau = IMPLICIT_TABLEAUS[name]
    phi = RungeKuttaWeights(_matrix(tableau))
    b_hat = np.array(tableau.b) - np.array(tableau.b_error)
    assert max_residual_up_to(phi, b_hat, tableau.embedded_order) < _SATISFIED
    assert np.abs(residuals(phi, b_hat, tableau.embedded_order + 1)).max() > _VIOLATED


def test_gauss_legendre_4_has_the_two_distinct_gauss_nodes():
    # torchdiffeq's master uses 1/2 − √3/6 twice, which leaves a first-order method.
    c = IMPLICIT_TABLEAUS["gl4"].c
    assert c == pytest.approx((0.5 - math.sqrt(3) / 6, 0.5 + math.sqrt(3) / 6), abs=1e-16)
    broken = np.array(IMPLICIT_TABLEAUS["gl4"].a)
    broken[1] = broken[0]
    assert abs(residuals(RungeKuttaWeights(broken), (0.5, 0.5), 2)[0]) > 0.1


@pytest.mark.parametrize("name", _IMPLICIT)
def test_rows_of_a_sum_to_c(name):
    tableau = IMPLICIT_TABLEAUS[name]
    np.testing.assert_allclose(_matrix(tableau).sum(axis=1), tableau.c, rtol=0.0, atol=2e-15)


@pytest.mark.parametrize("name", _IMPLICIT)
def test_structure_flags(name):
    tableau = IMPLICIT_TABLEAUS[name]
    diagonal, explicit_first, stiffly, gamma = _STRUCTURE[name]
    assert tableau.diagonally_implicit is diagonal
    assert tableau.explicit_first_stage is explicit_first
    assert tableau.stiffly_accurate is stiffly
    assert tableau.gamma == gamma
    if stiffly:
        assert tableau.c[-1] == 1.0


def test_kvaerno_gammas_are_the_l_stability_roots_to_full_precision():
    # R(∞) = 0 is one polynomial condition on γ (Kværnø 2004); the paper prints ten digits.
    for gamma, coefficients in (
        (KVAERNO3.gamma, (6, -18, 9, -1)),
        (KVAERNO4.gamma, (24, -96, 72, -16, 1)),
    ):
        value = np.polyval(coefficients, gamma)
        slope = np.polyval(np.polyder(coefficients), gamma)
        assert abs(value / slope) < 1e-15


def test_kvaerno_error_estimate_is_the_difference_of_the_last_two_stages():
    for name in ("kvaerno3", "kvaerno4", "kvaerno5"):
        tableau = IMPLICIT_TABLEAUS[name]
        b_hat = np.array(tableau.b) - np.array(tableau.b_error)
        np.testing.assert_allclose(b_hat, tableau.a[-2], rtol=0, atol=1e-16)
        assert tableau.c[-2] == 1.0


@pytest.mark.parametrize("name", _IMPLICIT)
def test_dense_weights_at_theta_one_equal_b(name):
    tableau = IMPLICIT_TABLEAUS[name]
    eps = np.finfo(np.float64).eps
    for row, b in zip(tableau.dense, tableau.b, strict=True):
        exact_sum = sum(Fraction(x) for x in row)
        assert abs(exact_sum - Fraction(b)) <= 4 * eps * (sum(abs(x) for x in row) + abs(b))


@pytest.mark.parametrize("theta", _THETAS)
@pytest.mark.parametrize("name", _IMPLICIT)
def test_dense_output_satisfies_continuous_order_conditions(name, theta):
    tableau = IMPLICIT_TABLEAUS[name]
    phi = RungeKuttaWeights(_matrix(tableau))
    weights = _dense_weights(tableau.dense, theta)
    assert max_residual_up_to(phi, weights, _DENSE_ORDER[name], theta) < _SATISFIED


@pytest.mark.parametrize("name", _IMPLICIT)
def test_dense_output_order_is_exact(name):
    # Not one order more at every θ (a symmetric method gains one at θ = 1/2), so the
    # table above is the true continuous order.
    tableau = IMPLICIT_TABLEAUS[name]
    phi = RungeKuttaWeights(_matrix(tableau))
    worst = max(
        np.abs(residuals(phi, _dense_weights(tableau.dense, th), _DENSE_ORDER[name] + 1, th)).max()
        for th in _THETAS
    )
    assert worst > _VIOLATED


def test_hermite_dense_is_the_hermite_cubic():
    # For scalar values y0, y1, f0, f1 of a stiffly accurate ESDIRK step, the weights
    # reproduce the textbook Hermite basis.
    b = KVAERNO3.b
    k = np.array([0.7, -1.3, 2.1, 0.4])  # k_1 = f0, k_4 = f1
    h, y0 = 0.3, 1.1
    y1 = y0 + h * (np.array(b) @ k)
    for theta in _THETAS:
        hermite = (
            (2 * theta**3 - 3 * theta**2 + 1) * y0
            + (theta**3 - 2 * theta**2 + theta) * h * k[0]
            + (-2 * theta**3 + 3 * theta**2) * y1
            + (theta**3 - theta**2) * h * k[-1]
        )
        assert y0 + h * _dense_weights(hermite_dense(b), theta) @ k == pytest.approx(hermite)


@pytest.mark.parametrize("name", _IMPLICIT)
def test_declared_stability(name):
    tableau = IMPLICIT_TABLEAUS[name]
    a, b = _matrix(tableau), np.array(tableau.b)
    assert tableau.a_stable  # every method registered here is A-stable
    _check_a_stability(a, b)
    at_infinity = abs(_stability(a, b, -1e8))
    if tableau.l_stable:
        assert at_infinity < 1e-6
    else:
        assert at_infinity > 0.5


def test_invalid_tableaus_are_rejected():
    with pytest.raises(ValueError, match="full"):
        ImplicitTableau(name="x", order=1, c=(1.0,), a=((),), b=(1.0,))
    with pytest.raises(ValueError, match="come together"):
        ImplicitTableau(name="x", order=1, c=(1.0,), a=((1.0,),), b=(1.0,), b_error=(0.0,))
    with pytest.raises(ValueError, match="L-stability"):
        ImplicitTableau(name="x", order=1, c=(1.0,), a=((1.0,),), b=(1.0,), l_stable=True)
    with pytest.raises(ValueError, match="strictly lower"):
        RosenbrockTableau(
            name="x", order=1, gamma=1.0, alpha=(0.0,), gamma_sums=(1.0,), a=((1.0,),),
            c_matrix=((),), m=(1.0,),
        )  # fmt: skip


# --- the Rosenbrock tableaus ------------------------------------------------------------


def _lower(rows, s: int) -> np.ndarray:
    matrix = np.zeros((s, s))
    for i, row in enumerate(rows):
        matrix[i, : len(row)] = row
    return matrix


def _classical_form(tableau: RosenbrockTableau):
    """``(α, Γ, b, b̂)`` from the published ``u``-form.

    ``Γ⁻¹ = diag(1/γ) − C``, ``α = aΓ``, ``b = mΓ``, ``b̂ = (m − m_error)Γ``.
    """
    s = tableau.stages
    gamma = np.linalg.inv(np.eye(s) / tableau.gamma - _lower(tableau.c_matrix, s))
    alpha = _lower(tableau.a, s) @ gamma
    b = np.array(tableau.m) @ gamma
    b_hat = (np.array(tableau.m) - np.array(tableau.m_error)) @ gamma
    return alpha, gamma, b, b_hat


@pytest.mark.parametrize("name", _ROSENBROCK)
def test_rosenbrock_nodes_and_gamma_sums_match_the_classical_form(name):
    tableau = ROSENBROCK_TABLEAUS[name]
    alpha, gamma, _, _ = _classical_form(tableau)
    np.testing.assert_allclose(np.diag(gamma), tableau.gamma, rtol=1e-14)
    np.testing.assert_allclose(np.triu(alpha), 0.0, atol=1e-13)
    np.testing.assert_allclose(alpha.sum(axis=1), tableau.alpha, rtol=0, atol=1e-13)
    np.testing.assert_allclose(gamma.sum(axis=1), tableau.gamma_sums, rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", _ROSENBROCK)
def test_rosenbrock_order_conditions_to_order_five_and_not_six(name):
    tableau = ROSENBROCK_TABLEAUS[name]
    alpha, gamma, b, b_hat = _classical_form(tableau)
    phi = RosenbrockWeights(alpha, gamma)
    assert max_residual_up_to(phi, b, tableau.order) < _SATISFIED
    assert np.abs(residuals(phi, b, tableau.order + 1)).max() > _VIOLATED
    assert max_residual_up_to(phi, b_hat, tableau.embedded_order) < _SATISFIED
    assert np.abs(residuals(phi, b_hat, tableau.embedded_order + 1)).max() > _VIOLATED


@pytest.mark.parametrize("name", _ROSENBROCK)
def test_rosenbrock_conditions_match_hairer_wanner_table_7_1(name):
    # HW II, Table 7.1, with β'_ij = α_ij + γ_ij for j < i only and γ the diagonal:
    # the generator's rule for single-child vertices is checked against this list.
    tableau = ROSENBROCK_TABLEAUS[name]
    alpha, gamma_matrix, b, _ = _classical_form(tableau)
    g = tableau.gamma
    beta = np.tril(alpha + gamma_matrix, -1)
    one = np.ones(tableau.stages)
    a1 = alpha @ one
    conditions = [
        (b @ one, 1.0),
        (b @ beta @ one, 0.5 - g),
        (b @ (a1 * a1), 1 / 3),
        (b @ beta @ beta @ one, 1 / 6 - g + g**2),
        (b @ a1**3, 1 / 4),
        (b @ (a1 * (alpha @ beta @ one)), 1 / 8 - g / 3),
        (b @ beta @ (a1 * a1), 1 / 12 - g / 3),
        (b @ beta @ beta @ beta @ one, 1 / 24 - g / 2 + 1.5 * g**2 - g**3),
    ]
    for lhs, rhs in conditions:
        assert lhs == pytest.approx(rhs, abs=_SATISFIED)


def test_rosenbrock_tree_rule_is_the_runge_kutta_rule_when_gamma_vanishes():
    # With Γ = 0 a Rosenbrock method is the explicit RK method (α, b): both generators agree.
    rng = np.random.default_rng(0)
    alpha = np.tril(rng.normal(size=(4, 4)), -1)
    b = rng.normal(size=4)
    for tree in trees_up_to(5):
        ros = b @ RosenbrockWeights(alpha, np.zeros((4, 4)))(tree)
        rk = b @ RungeKuttaWeights(alpha)(tree)
        assert ros == pytest.approx(rk, abs=1e-12)


@pytest.mark.parametrize("theta", _THETAS)
@pytest.mark.parametrize("name", _ROSENBROCK)
def test_rosenbrock_dense_output_is_fourth_order(name, theta):
    tableau = ROSENBROCK_TABLEAUS[name]
    alpha, gamma, _, _ = _classical_form(tableau)
    h = np.array(tableau.dense)
    # y(θ) − y0 = θ (y1 − y0) + θ(1 − θ) Σ_j θ^j K_j, as weights on u, then on k = Γ⁻¹ u.
    on_u = theta * np.array(tableau.m) + theta * (1 - theta) * sum(
        theta**j * row for j, row in enumerate(h)
    )
    weights = on_u @ gamma
    phi = RosenbrockWeights(alpha, gamma)
    order = _DENSE_ORDER[name]
    assert max_residual_up_to(phi, weights, order, theta) < _SATISFIED
    assert np.abs(residuals(phi, weights, order + 1, theta)).max() > _VIOLATED


@pytest.mark.parametrize("name", _ROSENBROCK)
def test_rosenbrock_stability(name):
    # R(z) = 1 + z bᵀ (I − zB)⁻¹ 𝟙 with B = α + Γ (HW II (7.14)); both solutions stiffly
    # accurate: R(∞) = 0 for the method and for its embedded solution.
    tableau = ROSENBROCK_TABLEAUS[name]
    alpha, gamma, b, b_hat = _classical_form(tableau)
    beta = alpha + gamma
    _check_a_stability(beta, b)
    assert tableau.l_stable
    assert abs(_stability(beta, b, -1e8)) < 1e-6
    assert abs(_stability(beta, b_hat, -1e8)) < 1e-6


# --- the tree generator -----------------------------------------------------------------


def test_tree_generator_counts_and_densities():
    assert [len(trees_of_order(n)) for n in range(1, 8)] == [1, 1, 2, 4, 9, 20, 48]
    assert all(size(t) == n for n in range(1, 8) for t in trees_of_order(n))
    # Σ_{|τ|=n} 1/γ(τ) · α(τ) = 1 is too weak to pin γ; the tall tree and the bush pin both ends.
    chain: tuple = ()
    for _ in range(4):
        chain = (chain,)
    assert density(chain) == math.factorial(5)
    assert density(((),) * 4) == 5
