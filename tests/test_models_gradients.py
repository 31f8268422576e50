"""Every model with every gradient method, against ``gradient="direct"`` and finite differences.

Each case builds a tiny float64 model (the same weights for every method), runs
several forward passes with different batch sizes and sums their losses before
one backward pass: a gradient method must then differentiate each pass with
that pass's own solve (its own random probe, its own save times), not with
state left on a module by the last pass. Random draws (Hutchinson probes,
reparameterised samples) come from generators seeded per call, so that every
method sees the same draws.

``checkpoint`` and ``forward`` compute the gradient of the same discrete solve
as ``direct`` and agree with it to rounding; ``backsolve`` (a backward solve)
and ``reversible`` (another discretisation) agree to the solver tolerance.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from neurode.models import CNF, ODERNN, HybridODE, LatentODE, ODENet, PendulumPhysics
from neurode.models.concatsquash import ConcatSquashMLP
from neurode.nn import Augmented, MLPDynamics, NeuralODE, ODEBlock, SecondOrder

F64 = torch.float64
TOLERANCES = dict(rtol=1e-10, atol=1e-10)
# The gradient methods, as solver settings of the models. Forward sensitivities
# choose forward- or reverse-mode products by size ("auto"); "forward_jvp" forces
# the forward-mode ones, which evaluate the model's vector field inside
# torch.func transforms.
METHODS = {
    "direct": dict(gradient="direct"),
    "backsolve": dict(gradient="backsolve"),
    "checkpoint": dict(gradient="checkpoint"),
    "reversible": dict(gradient="reversible"),
    "forward": dict(gradient="forward"),
    "forward_jvp": dict(gradient="forward", gradient_options={"jacobian": "forward"}),
}
# Largest entry of |gradient - direct's| over the largest entry of |direct's|:
# the same discrete gradient agrees to rounding, a gradient of the same
# continuous problem (a backward solve, another discretisation) to the tolerance.
AGREEMENT = {
    "checkpoint": 1e-9,
    "forward": 1e-9,
    "forward_jvp": 1e-9,
    "backsolve": 1e-6,
    "reversible": 1e-6,
}


def _normal(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class Case:
    """``build(method)`` makes the model (weights from a fixed seed) solved by one of
    :data:`METHODS`; ``loss(model)`` sums the losses of several forward passes."""

    build: Callable[[str], nn.Module]
    loss: Callable[[nn.Module], torch.Tensor]
    slow: bool = False
    agreement: dict[str, float] | None = None


def _seeded_build(make: Callable[[dict], nn.Module]) -> Callable[[str], nn.Module]:
    def build(method: str) -> nn.Module:
        torch.manual_seed(0)
        return make({**METHODS[method], **TOLERANCES}).to(F64)

    return build


class _Acceleration(nn.Module):
    """``a(t, x, v) = W2 tanh(W1 [x, v])`` for the second-order wrapper."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * dim, 6), nn.Tanh(), nn.Linear(6, dim))

    def forward(self, t, x, v):
        return self.net(torch.cat([x, v], dim=-1))


# ------------------------------------------------------------------------- losses
def _block_loss(model: nn.Module) -> torch.Tensor:
    first = model(_normal(3, 2, seed=1))
    second = model(_normal(5, 2, seed=2))
    return (first**2).sum() + torch.sin(second).sum()


def _regularised_block_loss(model: ODEBlock) -> torch.Tensor:
    first = model(_normal(3, 2, seed=1))
    penalty_first = model.regularisation_loss
    second = model(_normal(5, 2, seed=2))
    penalty_second = model.regularisation_loss
    return (first**2).sum() + torch.sin(second).sum() + penalty_first + penalty_second


def _trajectory_loss(dim: int, times: list[list[float]]) -> Callable[[nn.Module], torch.Tensor]:
    def loss(model: nn.Module) -> torch.Tensor:
        total = torch.zeros((), dtype=F64)
        for i, t in enumerate(times):
            ys = model(_normal(3 + 2 * i, dim, seed=10 + i), torch.tensor(t, dtype=F64))
            total = total + (ys * _normal(*ys.shape, seed=20 + i)).sum()
        return total

    return loss


def _pendulum_loss(model: nn.Module) -> torch.Tensor:
    total = torch.zeros((), dtype=F64)
    for i, t in enumerate([[0.0, 0.4, 0.9], [0.0, 0.7]]):
        y0 = 0.5 * _normal(2 + i, 2, seed=30 + i)
        ys = model(y0, torch.tensor(t, dtype=F64))
        total = total + (ys * _normal(*ys.shape, seed=40 + i)).sum()
    return total


def _cnf_loss(model: CNF) -> torch.Tensor:
    # Two batches of different sizes, each with its own seeded Hutchinson probe.
    first = model(_normal(3, 2, seed=1), generator=_seeded(5)).log_prob
    second = model(_normal(5, 2, seed=2), generator=_seeded(6)).log_prob
    return -(first.mean() + second.mean())


def _regularised_cnf_loss(model: CNF) -> torch.Tensor:
    total = torch.zeros((), dtype=F64)
    for i, batch in enumerate((3, 5)):
        output = model(_normal(batch, 2, seed=1 + i), generator=_seeded(5 + i))
        total = total - output.log_prob.mean() + 0.3 * output.kinetic.mean()
        total = total + 0.2 * output.jacobian.mean()
    return total


def _series(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    times = torch.tensor([0.0, 0.3, 0.5, 0.9], dtype=F64)
    values = _normal(batch, 4, 2, seed=seed)
    mask = (torch.rand(batch, 4, 2, generator=_seeded(seed + 1), dtype=F64) > 0.3).to(F64)
    mask[:, 0] = 1.0
    return times, values, mask


def _latent_loss(model: LatentODE) -> torch.Tensor:
    total = torch.zeros((), dtype=F64)
    for i, batch in enumerate((2, 3)):
        times, values, mask = _series(batch, seed=50 + i)
        total = total - model.elbo(times, values, mask, generator=_seeded(60 + i)).objective
    return total


def _ode_rnn_loss(model: ODERNN) -> torch.Tensor:
    total = torch.zeros((), dtype=F64)
    for i, batch in enumerate((2, 3)):
        times, values, mask = _series(batch, seed=70 + i)
        states = model(times, values, mask)
        total = total + (states.before * _normal(*states.before.shape, seed=80 + i)).sum()
        total = total + states.final.pow(2).sum()
    return total


def _images_loss(model: ODENet) -> torch.Tensor:
    first = model(_normal(2, 1, 10, 10, seed=90))
    second = model(_normal(3, 1, 10, 10, seed=91))
    return torch.nn.functional.cross_entropy(
        first, torch.tensor([1, 7])
    ) + torch.nn.functional.cross_entropy(second, torch.tensor([0, 3, 9]))


# -------------------------------------------------------------------------- cases
def _cnf(trace: str, **kwargs) -> Callable[[dict], nn.Module]:
    return lambda s: CNF(ConcatSquashMLP(2, [6]), 2, t1=0.5, trace=trace, **s, **kwargs)


CASES: dict[str, Case] = {
    "ode_block": Case(
        _seeded_build(lambda s: ODEBlock(MLPDynamics(2, hidden=6, depth=1), t1=0.6, **s)),
        _block_loss,
    ),
    "neural_ode": Case(
        _seeded_build(
            lambda s: NeuralODE(MLPDynamics(2, hidden=6, depth=1, time_dependent=True), **s)
        ),
        _trajectory_loss(2, [[0.0, 0.3, 0.7], [0.0, -0.4]]),
    ),
    "augmented": Case(
        _seeded_build(
            lambda s: Augmented(
                MLPDynamics(4, hidden=6, depth=1),
                2,
                projection="linear",
                in_features=2,
                t1=0.6,
                **s,
            )
        ),
        _block_loss,
    ),
    "second_order": Case(
        _seeded_build(lambda s: NeuralODE(SecondOrder(_Acceleration(2)), **s)),
        _trajectory_loss(4, [[0.0, 0.3, 0.7], [0.0, 0.5]]),
    ),
    "regularised_block": Case(
        _seeded_build(
            lambda s: ODEBlock(
                MLPDynamics(2, hidden=6, depth=1),
                t1=0.6,
                regularisation={"kinetic": 0.3, "jacobian": 0.2},
                generator=_seeded(3),
                **s,
            )
        ),
        _regularised_block_loss,
    ),
    # STEER draws each forward pass's end time from the block's generator.
    "steer_block": Case(
        _seeded_build(
            lambda s: ODEBlock(
                MLPDynamics(2, hidden=6, depth=1), t1=0.6, steer=0.3, generator=_seeded(4), **s
            )
        ),
        _block_loss,
    ),
    "cnf_exact": Case(_seeded_build(_cnf("exact")), _cnf_loss),
    "cnf_hutchinson": Case(_seeded_build(_cnf("hutchinson")), _cnf_loss),
    "cnf_hutchinson_regularised": Case(
        _seeded_build(
            _cnf("hutchinson", noise="gaussian", kinetic_weight=0.3, jacobian_weight=0.2)
        ),
        _regularised_cnf_loss,
    ),
    "latent_ode": Case(
        _seeded_build(
            lambda s: LatentODE(
                2,
                2,
                encoder_hidden=3,
                dynamics_width=4,
                decoder_width=4,
                **s,
            )
        ),
        _latent_loss,
        slow=True,
    ),
    "ode_rnn": Case(
        _seeded_build(lambda s: ODERNN(2, 3, dynamics_width=4, **s)),
        _ode_rnn_loss,
    ),
    "hybrid": Case(
        _seeded_build(lambda s: NeuralODE(HybridODE(1.5, hidden=4), **s)),
        _pendulum_loss,
    ),
    "pendulum_physics": Case(
        _seeded_build(lambda s: NeuralODE(PendulumPhysics(1.5, 0.2), **s)),
        _pendulum_loss,
    ),
    # The ODE-Net's dynamics (ReLU between group norms of 2 x 2 feature maps) are
    # only piecewise smooth: the adjoint's right-hand side jumps where a unit
    # crosses zero, and there the continuous-gradient methods converge slowly
    # (with softplus in place of ReLU they agree with direct to 4e-9 over t1 = 0.3).
    # A short span crosses few kinks.
    "mnist_odenet": Case(
        _seeded_build(lambda s: ODENet(channels=2, t1=0.02, **s)),
        _images_loss,
        slow=True,
        agreement={"backsolve": 1e-4, "reversible": 1e-4},
    ),
}
CNF_CASES = ["cnf_exact", "cnf_hutchinson", "cnf_hutchinson_regularised"]


def _parameter_gradients(model: nn.Module) -> torch.Tensor:
    grads = [
        torch.zeros_like(p).reshape(-1) if p.grad is None else p.grad.reshape(-1)
        for p in model.parameters()
    ]
    return torch.cat(grads)


@functools.cache
def _gradient(case_name: str, method: str) -> torch.Tensor:
    case = CASES[case_name]
    model = case.build(method)
    case.loss(model).backward()
    return _parameter_gradients(model)


# Forward-mode products run every evaluation through torch.func transforms, about
# a second per case here; the CNF's default-run check is the test at the end.
_SLOW_METHODS = {"forward_jvp"}


def _combinations():
    return [
        pytest.param(
            name,
            method,
            marks=[pytest.mark.slow] if CASES[name].slow or method in _SLOW_METHODS else [],
        )
        for name in CASES
        for method in METHODS
        if method != "direct"
    ]


@pytest.mark.parametrize(("case_name", "method"), _combinations())
def test_gradient_method_matches_direct_over_several_forward_passes(case_name, method):
    reference = _gradient(case_name, "direct")
    scale = float(reference.abs().max())
    assert scale > 1e-3
    tolerance = {**AGREEMENT, **(CASES[case_name].agreement or {})}[method]
    error = float((_gradient(case_name, method) - reference).abs().max())
    assert error <= tolerance * scale, f"{method}: error {error:.3g} against {scale:.3g}"


def _directional_finite_difference(case_name: str, direction: torch.Tensor, step: float) -> float:
    case = CASES[case_name]
    model = case.build("direct")
    params = list(model.parameters())
    values = []
    with torch.no_grad():
        for sign in (1.0, -1.0):
            offset = 0
            for p in params:
                p.add_(sign * step * direction[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
            values.append(float(case.loss(model)))
            offset = 0
            for p in params:
                p.sub_(sign * step * direction[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
    return (values[0] - values[1]) / (2 * step)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case_name", CNF_CASES)
def test_cnf_gradient_matches_finite_differences(case_name, method):
    reference = _gradient(case_name, "direct")
    direction = _normal(reference.numel(), seed=99)
    expected = _directional_finite_difference(case_name, direction, 1e-4)
    actual = float(_gradient(case_name, method) @ direction)
    assert abs(expected) > 1e-2
    assert actual == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_cnf_trains_with_forward_sensitivities_on_data_without_gradient(trace):
    # 40 points of 2 coordinates and a log-density make 120 state entries against
    # 56 parameters, so forward sensitivities choose forward-mode products and
    # evaluate the CNF's divergence inside torch.func transforms.
    x = _normal(40, 2, seed=7)
    gradients = {}
    for method in ("direct", "forward"):
        model = _seeded_build(_cnf(trace))(method)
        assert sum(p.numel() for p in model.parameters()) < x.numel() + len(x)
        (-model(x, generator=_seeded(8)).log_prob.mean()).backward()
        gradients[method] = _parameter_gradients(model)
    scale = float(gradients["direct"].abs().max())
    assert scale > 1e-3
    assert float((gradients["forward"] - gradients["direct"]).abs().max()) <= 1e-9 * scale
