"""The gradient health check: small errors for healthy methods, warnings for drift."""

from __future__ import annotations

import warnings

import pytest
import torch

from neurode import gradients
from neurode.check_gradients import (
    GradientDriftWarning,
    GradientReport,
    check_gradients,
)
from neurode.errors import NeurodeInputError
from neurode.gradients.direct import solve_direct

DTYPE = torch.float64


class _MLP(torch.nn.Module):
    def __init__(self, seed: int = 0, hidden: int = 8):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.inner = torch.nn.Parameter(
            0.7 * torch.randn(hidden, 2, generator=generator, dtype=DTYPE)
        )
        self.bias = torch.nn.Parameter(0.2 * torch.randn(hidden, generator=generator, dtype=DTYPE))
        self.outer = torch.nn.Parameter(
            0.6 * torch.randn(2, hidden, generator=generator, dtype=DTYPE)
        )

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.outer @ torch.tanh(self.inner @ y + self.bias)


class _Linear(torch.nn.Module):
    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        self.matrix = torch.nn.Parameter(matrix.clone())

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.matrix @ y


_Y0 = torch.tensor([0.6, -0.4], dtype=DTYPE)
_T = torch.linspace(0.0, 1.5, 4, dtype=DTYPE)


def test_healthy_methods_agree_with_the_reference_and_finite_differences():
    func = _MLP()
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientDriftWarning)
        report = check_gradients(
            func, _Y0, _T, methods=("direct", "backsolve", "checkpoint", "reversible", "forward")
        )
    assert isinstance(report, GradientReport)
    assert report.reference.error_vs_finite_differences < 1e-7
    for name in ("direct", "backsolve", "checkpoint", "reversible", "forward"):
        row = report[name]
        assert row.error_vs_reference < 1e-5, name
        assert row.error_vs_finite_differences < 1e-5, name
        assert row.nfe_forward > 0
    for name in ("backsolve", "checkpoint", "reversible"):
        assert report[name].nfe_backward > 0
    assert report["direct"].nfe_backward == report["forward"].nfe_backward == 0
    # direct and forward differentiate the same discrete solve.
    assert report["forward"].error_vs_reference == pytest.approx(
        report["direct"].error_vs_reference, rel=1e-6
    )
    assert report.drifting == []
    table = str(report)
    for name in ("reference", "direct", "backsolve", "checkpoint", "reversible", "forward"):
        assert name in table


def test_a_wrong_gradient_is_measured_exactly():
    """A method returning ``1.01 ×`` direct's gradient is off by ``0.01`` relative."""

    def scaled_direct(problem, y0, t, t_solver, **kwargs):
        result = solve_direct(problem, y0, t, t_solver, **kwargs)
        ys = result.ys
        result.ys = ys + 0.01 * (ys - ys.detach())
        return result

    gradients.register("scaled_direct_for_test", scaled_direct)
    try:
        with pytest.warns(GradientDriftWarning, match="scaled_direct_for_test"):
            report = check_gradients(
                _MLP(), _Y0, _T, methods=("direct", "scaled_direct_for_test"), rtol=1e-9, atol=1e-11
            )
    finally:
        gradients._REGISTRY.pop("scaled_direct_for_test")
    row = report["scaled_direct_for_test"]
    assert row.error_vs_reference == pytest.approx(0.01, rel=1e-4)
    assert row.error_vs_finite_differences > 1e-3
    assert report.drifting == ["scaled_direct_for_test"]


def test_backsolve_drift_on_a_strongly_damped_two_rate_system_warns():
    """Decay rates 1 and 21 over [0, 1]: the backwards re-integration loses ``e^20``
    times its tolerance (backsolve stops and says so), the stored-step methods do not."""
    rotation = torch.tensor([[0.8, 0.6], [-0.6, 0.8]], dtype=DTYPE)
    matrix = rotation @ torch.diag(torch.tensor([-1.0, -21.0], dtype=DTYPE)) @ rotation.T
    t = torch.tensor([0.0, 1.0], dtype=DTYPE)
    with pytest.warns(GradientDriftWarning, match="backsolve") as record:
        report = check_gradients(
            _Linear(matrix),
            torch.tensor([1.0, 0.5], dtype=DTYPE),
            t,
            methods=("direct", "backsolve", "checkpoint"),
            rtol=1e-6,
            atol=1e-8,
        )
    assert len(record) == 1
    assert report.drifting == ["backsolve"]
    assert report["backsolve"].diverged and "AdjointDivergedError" in report["backsolve"].note
    assert report["checkpoint"].error_vs_reference < 1e-4
    assert report["direct"].error_vs_reference < 1e-4


def test_unregistered_methods_are_skipped_with_a_note():
    report = check_gradients(_MLP(), _Y0, _T, methods=("direct", "no_such_method"), n_directions=1)
    row = report["no_such_method"]
    assert not row.ran and "not registered" in row.note
    assert "no_such_method" in str(report)


def test_parameters_are_restored_exactly_and_tuple_states_work():
    func = _MLP()
    before = [p.detach().clone() for p in func.parameters()]

    def tuple_func(t, state):
        out = func(t, torch.cat(state))
        return out[:1], out[1:]

    report = check_gradients(
        tuple_func,
        (_Y0[:1], _Y0[1:]),
        _T,
        methods=("direct", "checkpoint"),
        params=list(func.parameters()),
        loss=lambda ys: (ys[0] ** 2).sum() + ys[1].sum(),
    )
    assert report["checkpoint"].error_vs_reference < 1e-5
    assert report["checkpoint"].error_vs_finite_differences < 1e-5
    for p, original in zip(func.parameters(), before):
        assert torch.equal(p, original)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(methods="direct"),
        dict(methods=()),
        dict(methods=("direct", 3)),
        dict(n_directions=-1),
        dict(n_directions=2.5),
        dict(eps=0.0),
        dict(eps=float("nan")),
        dict(seed="zero"),
        dict(loss="sum"),
        dict(rtol=-1e-6),
        dict(drift_threshold=-1.0),
        dict(gradient_options=[("direct", {})]),
    ],
)
def test_bad_arguments_raise_typed_errors_before_any_solve(kwargs):
    calls = []

    def func(t, y):
        calls.append(t)
        return -y

    with pytest.raises(NeurodeInputError):
        check_gradients(func, _Y0, _T, **kwargs)
    assert calls == []


def test_a_loss_that_is_not_scalar_is_rejected():
    with pytest.raises(NeurodeInputError, match="scalar"):
        check_gradients(_MLP(), _Y0, _T, methods=("direct",), loss=lambda ys: ys)


@pytest.mark.slow
def test_the_health_check_finishes_on_a_chaotic_system_and_reports_the_divergence():
    """Lorenz on [0, 8]: the backward re-integration of backsolve used to crawl for minutes."""

    class Lorenz(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.tensor([10.0, 28.0, 8.0 / 3.0], dtype=DTYPE))

        def forward(self, t, u):
            sigma, rho, beta = self.p
            x, y, z = u.unbind(-1)
            return torch.stack([sigma * (y - x), x * (rho - z) - y, x * y - beta * z], -1)

    with pytest.warns(GradientDriftWarning, match="backsolve"):
        report = check_gradients(
            Lorenz(),
            torch.ones(3, dtype=DTYPE),
            torch.tensor([0.0, 8.0], dtype=DTYPE),
            methods=("checkpoint", "backsolve"),
            rtol=1e-6,
            atol=1e-8,
            n_directions=0,
        )
    assert report["backsolve"].diverged
    assert report["checkpoint"].ran
