"""Gradients through an explicit method held at its stability limit are refused.

Direct backpropagation freezes the step sizes; at the stability limit the step-size
control is what keeps an explicit solve stable, so the frozen-step derivative is
not the solution's (tsit5 on Robertson over [0, 0.4] at rtol 1e-4 gives −0.71 for
dy₂/dk₁, where the true value is 3.9e-4). ``backward()`` raises
``StiffGradientError`` instead; outputs before the stiff stretch keep their gradients.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import neurode
from neurode.data.stiff_problems import robertson
from neurode.errors import SolverError, StiffGradientError, StiffnessWarning

F64 = torch.float64
TRUE_DY2_DK1 = 3.902544053396102e-4  # central differences of rodas5p at rtol 1e-11


def _solve(method, times, rtol=1e-4, gradient="direct"):
    rates = torch.tensor([0.04, 3e7, 1e4], dtype=F64, requires_grad=True)
    problem = robertson(rates)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StiffnessWarning)
        solution = neurode.solve(
            problem.func,
            problem.y0,
            torch.tensor(times, dtype=F64),
            method=method,
            rtol=rtol,
            atol=rtol * 1e-4,
            gradient=gradient,
        )
    return rates, solution


@pytest.mark.parametrize("method", ["tsit5", "dopri5", "bosh3", "dopri8"])
@pytest.mark.parametrize("rtol", [1e-4, 1e-6])
def test_backward_through_a_stiff_explicit_solve_raises(method, rtol):
    rates, solution = _solve(method, [0.0, 0.4], rtol)
    with pytest.raises(StiffGradientError, match="stability limit") as caught:
        solution.ys[-1, 1].backward()
    assert isinstance(caught.value, SolverError)
    assert 0.0 < caught.value.t < 0.4
    assert rates.grad is None


@pytest.mark.parametrize("gradient", ["checkpoint", "forward"])
def test_checkpointed_and_forward_gradients_are_refused_the_same_way(gradient):
    # Checkpoint replays differentiate the same frozen steps; forward sensitivities
    # are integrated in them and equal direct backpropagation's.
    rates, solution = _solve("tsit5", [0.0, 0.4], gradient=gradient)
    with pytest.raises(StiffGradientError):
        solution.ys[-1, 1].backward()


def test_sensitivities_refuse_a_stiff_explicit_solve():
    problem = robertson(torch.tensor([0.04, 3e7, 1e4], dtype=F64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StiffnessWarning)
        with pytest.raises(StiffGradientError):
            neurode.sensitivities(
                problem.func,
                problem.y0,
                torch.tensor([0.0, 0.4], dtype=F64),
                method="tsit5",
                rtol=1e-4,
                atol=1e-8,
            )


def test_outputs_before_the_stiff_stretch_keep_their_gradients():
    # The stiffness test fires near t = 0.01; the output at t = 0.002 lies before it.
    rates, solution = _solve("tsit5", [0.0, 0.002, 0.4])
    (early,) = torch.autograd.grad(solution.ys[1, 1], rates, retain_graph=True)

    def y2_early(k1):
        problem = robertson(torch.tensor([k1, 3e7, 1e4], dtype=F64))
        with torch.no_grad():
            return neurode.solve(
                problem.func,
                problem.y0,
                torch.tensor([0.0, 0.002], dtype=F64),
                method="rodas5p",
                rtol=1e-11,
                atol=1e-15,
            ).ys[-1, 1]

    reference = (y2_early(0.04 + 1e-6) - y2_early(0.04 - 1e-6)) / 2e-6
    torch.testing.assert_close(early[0], reference, rtol=1e-3, atol=0.0)
    with pytest.raises(StiffGradientError):
        torch.autograd.grad(solution.ys[2, 1], rates)


@pytest.mark.parametrize("method", ["auto", "rodas5p", "kvaerno5"])
def test_stiff_methods_give_the_gradient(method):
    rates, solution = _solve(method, [0.0, 0.4], rtol=1e-7)
    solution.ys[-1, 1].backward()
    assert rates.grad[0].item() == pytest.approx(TRUE_DY2_DK1, rel=1e-4)


def test_no_guard_without_a_graph_or_on_a_non_stiff_problem():
    with torch.no_grad():
        _, solution = _solve("tsit5", [0.0, 0.4])
    assert not solution.ys.requires_grad
    decay = torch.tensor(0.5, dtype=F64, requires_grad=True)
    y = neurode.solve(
        lambda t, y: -decay * y,
        torch.ones(2, dtype=F64),
        torch.tensor([0.0, 5.0], dtype=F64),
        method="tsit5",
    ).ys[-1, 0]
    y.backward()
    assert decay.grad.item() == pytest.approx(-5.0 * torch.exp(torch.tensor(-2.5)).item(), rel=1e-6)
