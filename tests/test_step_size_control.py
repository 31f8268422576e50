"""The step-size controller: its PID formula, min/max step clipping and breakpoints."""

from __future__ import annotations

import math

import pytest
import torch

import neurode
from neurode.integrate.controller import PIDCoefficients, PIDController
from neurode.integrate.error_norm import ErrorNorm

F64 = torch.float64


class _Attempt:
    """A stand-in step whose error ratio is exactly ``ratio`` (RMS of one component)."""

    converged = True

    def __init__(self, ratio: float):
        self.y1 = torch.zeros(1, dtype=F64)
        self.error_terms = ((torch.tensor([ratio], dtype=F64), self.y1, self.y1),)


def _controller(**coefficients) -> PIDController:
    norm = ErrorNorm(torch.zeros(1, dtype=F64), 0.0, 1.0)  # scale 1: ratio = |error|
    controller = PIDController(norm, PIDCoefficients(**coefficients))
    controller.begin(0.0, 10.0)
    controller._k = 5.0  # error order q + 1
    return controller


@pytest.mark.parametrize(
    "pcoeff, icoeff, dcoeff", [(0.0, 1.0, 0.0), (0.2, 0.4, 0.0), (0.1, 0.3, 0.05)]
)
def test_pid_step_sizes_follow_the_formula_over_a_sequence_of_steps(pcoeff, icoeff, dcoeff):
    controller = _controller(pcoeff=pcoeff, icoeff=icoeff, dcoeff=dcoeff, safety=0.9)
    k = 5.0
    beta1, beta2, beta3 = (pcoeff + icoeff + dcoeff) / k, (pcoeff + 2 * dcoeff) / k, dcoeff / k
    history = [1.0, 1.0]
    h = 0.1
    for ratio in [0.5, 0.02, 0.9, 0.3]:
        accept, proposed, _ = controller.decide(0.0, h, _Attempt(ratio))
        assert accept
        factor = 0.9 * ratio**-beta1 * history[0] ** beta2 * history[1] ** -beta3
        factor = min(10.0, max(factor, 0.2))
        assert proposed == pytest.approx(h * factor, rel=1e-12)
        history = [max(ratio, 1e-4), history[0]]
        h = proposed


class _PredictiveAttempt(_Attempt):
    predictive = True


def test_predictive_rule_bounds_the_step_after_accepted_steps():
    # Gustafsson: h_{n+1} <= safety h_n (h_n / h_{n-1}) (r_{n-1} / r_n^2)^(1/k), with
    # r_{n-1} floored at 1e-2; the plain rule where it is smaller, and nothing on the
    # first accepted step (no h_{n-1} yet).
    controller = _controller(safety=0.9)
    k = 5.0
    previous = None
    h = 0.1
    for ratio in [0.5, 0.9, 0.95, 0.005, 0.7]:
        accept, proposed, _ = controller.decide(0.0, h, _PredictiveAttempt(ratio))
        assert accept
        factor = min(10.0, max(0.9 * ratio ** (-1 / k), 0.2))
        if previous is not None:
            h_prev, r_prev = previous
            predicted = 0.9 * (h / h_prev) * (r_prev / ratio**2) ** (1 / k)
            factor = min(factor, min(10.0, max(predicted, 0.2)))
        assert proposed == pytest.approx(h * factor, rel=1e-12)
        previous = (h, max(ratio, 1e-2))
        h = proposed
    # Without the flag (explicit methods) the same sequence follows the plain rule.
    plain = _controller(safety=0.9)
    accept, first, _ = plain.decide(0.0, 0.1, _Attempt(0.5))
    accept, second, _ = plain.decide(0.0, first, _Attempt(0.9))
    assert second == pytest.approx(first * 0.9 * 0.9 ** (-1 / k), rel=1e-12)


def test_predictive_rule_cuts_the_rejections_of_a_shrinking_step_size():
    # Approaching van der Pol's fast transients the plain rule proposes about the step it
    # just took, and every other step is rejected; the predictive rule follows the trend.
    from neurode.data.stiff_problems import reference_solution, van_der_pol

    problem = van_der_pol(1000.0)
    t = torch.tensor(problem.t_span, dtype=F64)
    reference = reference_solution(problem, [problem.t_span[1]])[-1]
    results = {}
    for predictive in (True, False):
        options = {"jacobian": problem.jacobian, "autonomous": True, "predictive": predictive}
        with torch.no_grad():
            solution = neurode.solve(
                problem.func, problem.y0, t, method="rodas5", rtol=1e-4, atol=1e-6, options=options
            )
        error = float(((solution.ys[-1] - reference).abs() / (1e-2 + reference.abs())).max())
        results[predictive] = (solution.stats["rejected"], solution.stats["nfe"], error)
    (rejected, nfe, error), (plain_rejected, plain_nfe, _) = results[True], results[False]
    assert rejected < plain_rejected / 3
    assert nfe < 0.8 * plain_nfe
    assert error < 1e-3  # rtol 1e-4: the global error stays within a modest multiple


def test_predictive_option_must_be_a_bool():
    with pytest.raises(neurode.errors.InvalidOptionError, match="predictive"):
        neurode.solve(
            lambda t, y: -y,
            torch.ones(1, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method="kvaerno5",
            options={"predictive": "yes"},
        )


def test_a_rejected_step_shrinks_and_leaves_the_history_alone():
    controller = _controller(pcoeff=0.2, icoeff=0.4)
    accept, proposed, _ = controller.decide(0.0, 0.1, _Attempt(4.0))
    assert not accept and proposed < 0.1
    assert controller._history == [1.0, 1.0]
    accept, proposed, _ = controller.decide(0.0, 0.1, _Attempt(math.nan))
    assert not accept and proposed == pytest.approx(0.1 * 0.2)


def _accepted_steps(**options) -> list[float]:
    steps = []

    class Field(torch.nn.Module):
        def forward(self, t, y):
            return torch.stack([y[1], -100.0 * y[0]])

    field = Field()
    field.callback_accept_step = lambda t, y, h: steps.append(float(h))
    neurode.odeint(
        field, torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 2.0], dtype=F64), **options
    )
    return steps


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8"])
def test_max_step_bounds_every_step(method):
    free = _accepted_steps(method=method, rtol=1e-6, atol=1e-9)
    bound = 0.5 * max(free)
    bounded = _accepted_steps(method=method, rtol=1e-6, atol=1e-9, options={"max_step": bound})
    assert max(bounded) <= bound * (1 + 1e-12)
    assert len(bounded) > len(free)
    assert sum(bounded) == pytest.approx(2.0)


@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_min_step_is_taken_even_where_the_error_test_would_refuse_it(method):
    steps = _accepted_steps(method=method, rtol=1e-12, atol=1e-14, options={"min_step": 0.05})
    assert min(steps[:-1]) >= 0.05 - 1e-15  # the last step may be cut by the end time
    assert sum(steps) == pytest.approx(2.0)


def test_step_t_and_jump_t_times_are_step_boundaries():
    steps = []

    class Field(torch.nn.Module):
        def forward(self, t, y):
            return -y

    field = Field()
    starts = []
    field.callback_accept_step = lambda t, y, h: (starts.append(float(t)), steps.append(float(h)))
    neurode.odeint(
        field,
        torch.ones(1, dtype=F64),
        torch.tensor([0.0, 3.0], dtype=F64),
        options={"step_t": [0.7], "jump_t": [1.9]},
    )
    ends = [s + h for s, h in zip(starts, steps)]
    assert any(abs(e - 0.7) < 1e-15 for e in ends)
    assert any(abs(e - 1.9) < 1e-15 for e in ends)
