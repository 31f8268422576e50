"""Gradients through stiff solves, every gradient method, against finite differences.

Finite differences are central differences of scipy's Radau at tight tolerances
(``reference_solution``): an implementation independent of neurode's solvers.
Robertson's rate constants span nine orders of magnitude, so each is perturbed
relative to its size.
"""

from __future__ import annotations

import pytest
import torch

import neurode
from neurode.data.stiff_problems import reference_solution, robertson, van_der_pol
from neurode.errors import AdjointDivergedError, UnknownMethodError

F64 = torch.float64
RATES = (0.04, 3e7, 1e4)
T_END = 40.0
# A loss that weighs the tiny intermediate species as much as the others.
WEIGHTS = torch.tensor([1.0, 1e4, 1.0], dtype=F64)


def _robertson_loss(rates: torch.Tensor, method: str, gradient: str, **kwargs) -> torch.Tensor:
    k1, k2, k3 = rates.unbind(-1)

    def func(t, y):
        y1, y2, y3 = y.unbind(-1)
        return torch.stack(
            [-k1 * y1 + k3 * y2 * y3, k1 * y1 - k3 * y2 * y3 - k2 * y2 * y2, k2 * y2 * y2], -1
        )

    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=F64).expand(*rates.shape[:-1], 3)
    params = {} if gradient == "direct" else {"params": (rates,)}
    solution = neurode.solve(
        func,
        y0,
        torch.tensor([0.0, T_END], dtype=F64),
        method=method,
        rtol=1e-8,
        atol=1e-12,
        gradient=gradient,
        **params,
        **kwargs,
    )
    return (solution.ys[-1] * WEIGHTS).sum()


def _scipy_loss(rates) -> float:
    problem = robertson(torch.as_tensor(rates, dtype=F64), t_end=T_END)
    times = torch.tensor([0.0, T_END], dtype=F64)
    return float((reference_solution(problem, times)[-1] * WEIGHTS).sum())


@pytest.fixture(scope="module")
def robertson_gradient() -> torch.Tensor:
    gradient = []
    for i, rate in enumerate(RATES):
        delta = 1e-4 * rate
        plus, minus = list(RATES), list(RATES)
        plus[i] += delta
        minus[i] -= delta
        gradient.append((_scipy_loss(plus) - _scipy_loss(minus)) / (2 * delta))
    return torch.tensor(gradient, dtype=F64)


@pytest.mark.parametrize(
    ("method", "gradient"),
    [
        ("kvaerno5", "direct"),
        ("kvaerno5", "checkpoint"),
        ("kvaerno5", "forward"),
        ("rodas5p", "direct"),
        ("rodas5p", "checkpoint"),
        ("rodas5p", "forward"),
        ("kvaerno3", "direct"),
        ("auto", "direct"),
        ("auto", "forward"),
    ],
)
def test_robertson_rate_gradients_match_finite_differences(method, gradient, robertson_gradient):
    rates = torch.tensor(RATES, dtype=F64, requires_grad=True)
    _robertson_loss(rates, method, gradient).backward()
    torch.testing.assert_close(rates.grad, robertson_gradient, rtol=1e-5, atol=0)


def test_auto_gradient_is_right_at_tight_tolerances(robertson_gradient):
    # Hairer's test alone leaves tsit5 at its stability limit here for thousands of
    # steps, whose derivatives grow without bound; the Jacobian check switches early.
    rates = torch.tensor(RATES, dtype=F64, requires_grad=True)
    k1, k2, k3 = rates.unbind(-1)

    def func(t, y):
        y1, y2, y3 = y.unbind(-1)
        return torch.stack(
            [-k1 * y1 + k3 * y2 * y3, k1 * y1 - k3 * y2 * y3 - k2 * y2 * y2, k2 * y2 * y2], -1
        )

    solution = neurode.solve(
        func,
        torch.tensor([1.0, 0.0, 0.0], dtype=F64),
        torch.tensor([0.0, T_END], dtype=F64),
        method="auto",
        rtol=1e-8,
        atol=1e-12,
    )
    assert solution.stats["implicit_steps"] > 0
    assert solution.stats["explicit_steps"] < 200
    (solution.ys[-1] * WEIGHTS).sum().backward()
    torch.testing.assert_close(rates.grad, robertson_gradient, rtol=1e-5, atol=0)


def test_per_sample_rows_have_the_gradients_of_the_rows_alone():
    rates = torch.tensor([RATES, (0.05, 2e7, 2e4)], dtype=F64, requires_grad=True)
    _robertson_loss(rates, "rodas5p", "direct", batch="per_sample").backward()
    for row in range(2):
        alone = rates.detach()[row].clone().requires_grad_(True)
        _robertson_loss(alone, "rodas5p", "direct").backward()
        torch.testing.assert_close(rates.grad[row], alone.grad, rtol=1e-6, atol=0)


@pytest.mark.parametrize("method", ["kvaerno5", "rodas5p"])
def test_van_der_pol_mu_gradient_matches_finite_differences(method):
    times = torch.tensor([0.0, 800.0], dtype=F64)

    def scipy_end(mu: float) -> float:
        problem = van_der_pol(mu, t_end=800.0)
        return float(reference_solution(problem, times)[-1, 0])

    mu = torch.tensor(1000.0, dtype=F64, requires_grad=True)
    problem = van_der_pol(mu, t_end=800.0)
    solution = neurode.solve(problem.func, problem.y0, times, method=method, rtol=1e-9, atol=1e-12)
    solution.ys[-1, 0].backward()
    expected = (scipy_end(1000.0 + 0.1) - scipy_end(1000.0 - 0.1)) / 0.2
    assert mu.grad is not None and abs(expected) > 1e-4
    assert float(mu.grad) == pytest.approx(expected, rel=1e-4)


def test_backsolve_on_a_stiff_problem_raises_a_typed_error_in_backward():
    # Backwards in time the fast modes of Robertson grow: the re-integrated state
    # leaves the forward trajectory. The error comes from backward(), not a NaN.
    rates = torch.tensor(RATES, dtype=F64, requires_grad=True)
    loss = _robertson_loss(rates, "kvaerno5", "backsolve")
    assert torch.isfinite(loss)
    with pytest.raises(AdjointDivergedError):
        loss.backward()


@pytest.mark.parametrize("method", ["kvaerno5", "rodas5p"])
def test_backsolve_with_an_implicit_method_where_the_state_runs_back_stably(method):
    # y' = a sin(y) + cos(t): mildly contracting, so backwards the state is stable.
    a = torch.tensor(-2.0, dtype=F64, requires_grad=True)
    y0 = torch.tensor([0.5, 1.5], dtype=F64, requires_grad=True)
    times = torch.linspace(0.0, 3.0, 4, dtype=F64)

    def func(t, y):
        return a * torch.sin(y) + torch.cos(t)

    def loss(gradient):
        params = {} if gradient == "direct" else {"params": (a,)}
        ys = neurode.solve(
            func, y0, times, method=method, rtol=1e-10, atol=1e-12, gradient=gradient, **params
        ).ys
        return ys.square().sum()

    expected = torch.autograd.grad(loss("direct"), (a, y0))
    actual = torch.autograd.grad(loss("backsolve"), (a, y0))
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_checkpoint_with_auto_is_refused_before_work():
    rates = torch.tensor(RATES, dtype=F64, requires_grad=True)
    with pytest.raises(UnknownMethodError, match="cannot be replayed"):
        _robertson_loss(rates, "auto", "checkpoint")


def test_reversible_needs_an_explicit_method():
    rates = torch.tensor(RATES, dtype=F64, requires_grad=True)
    with pytest.raises(UnknownMethodError, match="explicit"):
        _robertson_loss(rates, "kvaerno5", "reversible")
