"""neurode.nn layers against exact solutions and finite differences.

The linear field f(h) = A h has the flow h(t) = expm(A (t - t0)) h(t0); batched
states are rows, so h(t) = h0 @ expm(A (t - t0))^T.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from neurode.errors import InvalidTimesError, NeurodeInputError, ShapeMismatchError
from neurode.nn import (
    Augmented,
    ConcatConv2d,
    ConcatLinear,
    ConcatTime,
    MLPDynamics,
    NeuralODE,
    ODEBlock,
    SecondOrder,
    join_state,
    split_state,
    steer_end_time,
)

F64 = torch.float64
TIGHT = dict(rtol=1e-10, atol=1e-12)
GRADIENTS = ["direct", "backsolve", "checkpoint", "reversible", "forward"]


class LinearField(nn.Module):
    """f(t, h) = A h on batched rows."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return h @ self.A.T


class CountingField(nn.Module):
    """Wraps a field and counts its evaluations."""

    def __init__(self, field: nn.Module):
        super().__init__()
        self.field = field
        self.calls = 0

    def forward(self, t, h):
        self.calls += 1
        return self.field(t, h)


def _matrix(seed: int = 0, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n, generator=g, dtype=F64) / math.sqrt(n)


def _flow(A: torch.Tensor, h0: torch.Tensor, dt: float) -> torch.Tensor:
    return h0 @ torch.linalg.matrix_exp(A * dt).T


def _h0(batch: int = 4, n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, n, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ----------------------------------------------------------------------------- ODEBlock
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_odeblock_linear_field_matches_matrix_exponential(method):
    A, h0 = _matrix(), _h0()
    block = ODEBlock(LinearField(A), t0=0.3, t1=1.7, method=method, gradient="direct", **TIGHT)
    out = block(h0)
    assert out.shape == h0.shape
    torch.testing.assert_close(out, _flow(A, h0, 1.4), rtol=1e-8, atol=1e-8)


def test_odeblock_integrates_backwards_when_t1_precedes_t0():
    A, h0 = _matrix(), _h0()
    block = ODEBlock(LinearField(A), t0=1.0, t1=-0.5, gradient="direct", **TIGHT)
    torch.testing.assert_close(block(h0), _flow(A, h0, -1.5), rtol=1e-8, atol=1e-8)


def test_odeblock_end_time_override_per_call():
    A, h0 = _matrix(), _h0()
    block = ODEBlock(LinearField(A), gradient="direct", **TIGHT)
    torch.testing.assert_close(block(h0, t1=0.4), _flow(A, h0, 0.4), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(block(h0), _flow(A, h0, 1.0), rtol=1e-8, atol=1e-8)


def test_odeblock_trajectory_at_given_times():
    A, h0 = _matrix(), _h0()
    times = [0.0, 0.1, 0.5, 1.2]
    block = ODEBlock(
        LinearField(A), return_trajectory=True, times=times, gradient="direct", **TIGHT
    )
    trajectory = block(h0)
    assert trajectory.shape == (len(times), *h0.shape)
    for i, t in enumerate(times):
        torch.testing.assert_close(trajectory[i], _flow(A, h0, t), rtol=1e-8, atol=1e-8)


def test_odeblock_default_trajectory_is_start_and_end():
    A, h0 = _matrix(), _h0()
    block = ODEBlock(LinearField(A), t1=0.8, return_trajectory=True, gradient="direct", **TIGHT)
    trajectory = block(h0)
    assert trajectory.shape == (2, *h0.shape)
    torch.testing.assert_close(trajectory[0], h0)
    torch.testing.assert_close(trajectory[1], _flow(A, h0, 0.8), rtol=1e-8, atol=1e-8)


def _central_difference(loss_fn, tensor: torch.Tensor, index, eps: float = 1e-6) -> float:
    with torch.no_grad():
        original = tensor[index].item()
        tensor[index] = original + eps
        plus = loss_fn().item()
        tensor[index] = original - eps
        minus = loss_fn().item()
        tensor[index] = original
    return (plus - minus) / (2 * eps)


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_odeblock_gradients_match_finite_differences(gradient):
    torch.manual_seed(0)
    dynamics = MLPDynamics(2, hidden=8, depth=1, activation="tanh").to(F64)
    block = ODEBlock(dynamics, t1=0.7, gradient=gradient, **TIGHT)
    h0 = _h0(3, 2).requires_grad_(True)
    weights = torch.randn(3, 2, generator=torch.Generator().manual_seed(5), dtype=F64)

    def loss_fn():
        return (block(h0) * weights).sum()

    loss_fn().backward()
    first_weight = dynamics.layers[0].weight
    checks = [(h0, (0, 1)), (h0, (2, 0)), (first_weight, (3, 1)), (dynamics.layers[1].bias, (0,))]
    for tensor, index in checks:
        expected = _central_difference(loss_fn, tensor, index)
        assert tensor.grad[index].item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_odeblock_gradient_of_linear_flow_matches_matrix_exponential_derivative():
    # d/dh0 of sum(w * h0 expm(AT)^T) is w expm(AT): exact, no finite differences.
    A, h0 = _matrix(), _h0().requires_grad_(True)
    w = _h0(seed=9)
    block = ODEBlock(LinearField(A), t1=0.9, gradient="backsolve", **TIGHT)
    (block(h0) * w).sum().backward()
    torch.testing.assert_close(h0.grad, w @ torch.linalg.matrix_exp(0.9 * A), rtol=1e-7, atol=1e-8)


def test_odeblock_nfe_counts_match_actual_evaluations():
    A, h0 = _matrix(), _h0().requires_grad_(True)
    field = CountingField(LinearField(A))
    block = ODEBlock(field, gradient="backsolve", rtol=1e-6, atol=1e-8)
    assert block.nfe_forward == 0 and block.nfe_backward == 0 and block.stats is None
    out = block(h0)
    forward_calls = field.calls
    assert forward_calls > 0
    assert block.nfe_forward == forward_calls == block.stats["nfe"]
    assert block.nfe_backward == 0  # read lazily: backward has not run yet
    out.sum().backward()
    assert block.nfe_backward == field.calls - forward_calls > 0


def test_odeblock_direct_gradient_needs_no_backward_evaluations():
    A, h0 = _matrix(), _h0().requires_grad_(True)
    field = CountingField(LinearField(A))
    block = ODEBlock(field, gradient="direct", rtol=1e-6, atol=1e-8)
    block(h0).sum().backward()
    assert field.calls == block.nfe_forward
    assert block.nfe_backward == 0


def test_odeblock_rejects_bad_arguments_before_solving():
    field = LinearField(_matrix())
    with pytest.raises(InvalidTimesError):
        ODEBlock(field, t0=1.0, t1=1.0)
    with pytest.raises(InvalidTimesError):
        ODEBlock(field, t1=float("nan"))
    with pytest.raises(NeurodeInputError):
        ODEBlock(field, rtol=-1.0)
    with pytest.raises(NeurodeInputError):
        ODEBlock(field, steer=1.0)  # not smaller than the span
    with pytest.raises(NeurodeInputError):
        ODEBlock(field, regularisation={"speed": 1.0})
    with pytest.raises(NeurodeInputError):
        ODEBlock(field, noise="uniform")
    with pytest.raises(InvalidTimesError):
        ODEBlock(field, return_trajectory=True, times=[0.0, 0.5, 0.2])
    with pytest.raises(NeurodeInputError):
        ODEBlock("not a module")
    with pytest.raises(NeurodeInputError):
        ODEBlock(lambda t, h: -h, gradient="backsolve")  # parameters cannot be found
    with pytest.raises(NeurodeInputError):
        ODEBlock(field)(torch.zeros(2, 3, dtype=torch.long))


# -------------------------------------------------------------------------------- STEER
def test_steer_end_time_is_uniform_on_the_interval():
    g = torch.Generator().manual_seed(0)
    t1, b, n = 2.0, 0.5, 4000
    samples = torch.tensor([steer_end_time(t1, b, g) for _ in range(n)], dtype=F64)
    assert samples.min() >= t1 - b and samples.max() <= t1 + b
    # U[t1-b, t1+b]: mean t1, variance b^2/3.
    standard_error = math.sqrt(b**2 / 3 / n)
    assert abs(samples.mean().item() - t1) < 4 * standard_error
    assert samples.var().item() == pytest.approx(b**2 / 3, rel=0.08)
    # The fraction below t1 - b/2 is 1/4.
    fraction = (samples < t1 - b / 2).double().mean().item()
    assert abs(fraction - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)


def test_steer_applies_only_in_training_mode():
    A, h0 = _matrix(), _h0()
    block = ODEBlock(
        LinearField(A),
        steer=0.3,
        generator=torch.Generator().manual_seed(3),
        gradient="direct",
        **TIGHT,
    )
    expected_end = steer_end_time(1.0, 0.3, torch.Generator().manual_seed(3))
    assert expected_end != 1.0
    block.train()
    torch.testing.assert_close(block(h0), _flow(A, h0, expected_end), rtol=1e-8, atol=1e-8)
    block.eval()
    torch.testing.assert_close(block(h0), _flow(A, h0, 1.0), rtol=1e-8, atol=1e-8)


def test_steer_end_time_rejects_negative_width():
    with pytest.raises(NeurodeInputError):
        steer_end_time(1.0, -0.1)


# ---------------------------------------------------------------------------- NeuralODE
def test_neural_ode_decreasing_irregular_times_match_exact_flow():
    A, y0 = _matrix(seed=2), _h0(5)
    model = NeuralODE(LinearField(A), **TIGHT)
    t = torch.tensor([1.0, 0.93, 0.41, 0.4, -0.75], dtype=F64)
    trajectory = model(y0, t)
    assert trajectory.shape == (5, 5, 3)
    for i in range(len(t)):
        expected = _flow(A, y0, (t[i] - t[0]).item())
        torch.testing.assert_close(trajectory[i], expected, rtol=1e-8, atol=1e-8)


def test_neural_ode_batches_independent_initial_conditions():
    A = _matrix(seed=4)
    y0 = _h0(6)
    t = [0.0, 0.3, 1.1]
    model = NeuralODE(LinearField(A), **TIGHT)
    batched = model(y0, t)
    for i in range(y0.shape[0]):
        single = model(y0[i : i + 1], t)
        torch.testing.assert_close(batched[:, i : i + 1], single, rtol=1e-8, atol=1e-9)


def test_neural_ode_backsolve_counts_backward_evaluations():
    A, y0 = _matrix(), _h0().requires_grad_(True)
    field = CountingField(LinearField(A))
    model = NeuralODE(field, gradient="backsolve", rtol=1e-6, atol=1e-8)
    out = model(y0, torch.tensor([0.0, 0.5, 1.0], dtype=F64))
    forward_calls = field.calls
    assert model.nfe_forward == forward_calls
    out.square().sum().backward()
    assert model.nfe_backward == field.calls - forward_calls > 0


def test_neural_ode_rejects_scalar_times():
    with pytest.raises(InvalidTimesError):
        NeuralODE(LinearField(_matrix()))(_h0(), torch.tensor(1.0, dtype=F64))


# ---------------------------------------------------------------------------- Augmented
def test_augmented_pads_zeros_and_integrates_the_larger_state():
    A = _matrix(n=5)
    x = _h0(4, 3)
    model = Augmented(LinearField(A), 2, gradient="direct", **TIGHT)
    out = model(x)
    padded = torch.cat([x, torch.zeros(4, 2, dtype=F64)], dim=1)
    assert out.shape == (4, 5)
    torch.testing.assert_close(model.augment(x), padded)
    torch.testing.assert_close(out, _flow(A, padded, 1.0), rtol=1e-8, atol=1e-8)
    assert model.nfe_forward == model.block.nfe_forward > 0


def test_augmented_slice_and_linear_projection():
    A = _matrix(n=4)
    x = _h0(3, 2)
    full = _flow(A, torch.cat([x, torch.zeros(3, 2, dtype=F64)], 1), 1.0)
    sliced = Augmented(LinearField(A), 2, projection="slice", gradient="direct", **TIGHT)
    torch.testing.assert_close(sliced(x), full[:, :2], rtol=1e-8, atol=1e-8)
    head = Augmented(
        LinearField(A),
        2,
        projection="linear",
        in_features=2,
        out_features=1,
        gradient="direct",
        **TIGHT,
    ).to(F64)
    expected = full @ head.head.weight.T + head.head.bias
    torch.testing.assert_close(head(x), expected, rtol=1e-8, atol=1e-8)


def test_augmented_images_along_channels_and_wrapped_neural_ode_trajectory():
    block = ODEBlock(ConcatConv2d(3, 3).to(F64), method="rk4", options=dict(step_size=0.25))
    model = Augmented(block, 1, dim=1, projection="slice")
    assert model(torch.randn(2, 2, 5, 5, dtype=F64)).shape == (2, 2, 5, 5)

    A = _matrix(n=3)
    x = _h0(2, 2)
    trajectory_model = Augmented(NeuralODE(LinearField(A), **TIGHT), 1, projection="slice")
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    out = trajectory_model(x, t)
    padded = torch.cat([x, torch.zeros(2, 1, dtype=F64)], 1)
    assert out.shape == (3, 2, 2)
    torch.testing.assert_close(out[2], _flow(A, padded, 1.0)[:, :2], rtol=1e-8, atol=1e-8)


def test_augmented_rejects_bad_arguments():
    field = LinearField(_matrix())
    with pytest.raises(NeurodeInputError):
        Augmented(field, 0)
    with pytest.raises(NeurodeInputError):
        Augmented(field, 1, projection="linear")  # needs in_features
    with pytest.raises(NeurodeInputError):
        Augmented(ODEBlock(field), 1, rtol=1e-3)  # options belong to the given block
    with pytest.raises(NeurodeInputError):
        Augmented(field, 1)(torch.zeros(3, dtype=F64))  # unbatched


# -------------------------------------------------------------------------- SecondOrder
class HarmonicAcceleration(nn.Module):
    def __init__(self, omega: float):
        super().__init__()
        self.omega = omega

    def forward(self, t, x, v):
        return -(self.omega**2) * x


def test_second_order_harmonic_oscillator_gives_cos_and_sin():
    omega = 2.5
    x0 = torch.tensor([[1.0], [0.0], [-0.3]], dtype=F64)
    v0 = torch.tensor([[0.0], [1.0], [0.7]], dtype=F64)
    dynamics = SecondOrder(HarmonicAcceleration(omega))
    t = torch.linspace(0.0, 3.0, 7, dtype=F64)
    trajectory = NeuralODE(dynamics, **TIGHT)(dynamics.join(x0, v0), t)
    x, v = dynamics.split(trajectory)
    tt = t[:, None, None]
    x_exact = x0 * torch.cos(omega * tt) + v0 / omega * torch.sin(omega * tt)
    v_exact = -x0 * omega * torch.sin(omega * tt) + v0 * torch.cos(omega * tt)
    torch.testing.assert_close(x, x_exact, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(v, v_exact, rtol=1e-8, atol=1e-8)


def test_second_order_state_helpers_round_trip_and_check_shapes():
    x, v = torch.randn(4, 3), torch.randn(4, 3)
    z = join_state(x, v)
    assert z.shape == (4, 6)
    x2, v2 = split_state(z)
    assert torch.equal(x2, x) and torch.equal(v2, v)
    z_channels = join_state(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), dim=1)
    assert split_state(z_channels, dim=1)[0].shape == (2, 3, 4, 4)
    with pytest.raises(ShapeMismatchError):
        split_state(torch.randn(4, 5))
    with pytest.raises(ShapeMismatchError):
        join_state(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ShapeMismatchError):
        SecondOrder(lambda t, x, v: x[..., :1])(torch.tensor(0.0), torch.randn(2, 4))


def test_second_order_derivative_is_velocity_then_acceleration():
    dynamics = SecondOrder(lambda t, x, v: x * v + t)
    x, v = torch.randn(3, 2), torch.randn(3, 2)
    t = torch.tensor(0.5)
    expected = torch.cat([v, x * v + t], dim=-1)
    torch.testing.assert_close(dynamics(t, join_state(x, v)), expected)


# ----------------------------------------------------------------- time-dependent helpers
def test_concat_linear_is_affine_in_state_and_time():
    layer = ConcatLinear(3, 2).to(F64)
    h, t = _h0(5, 3), torch.tensor(0.8, dtype=F64)
    weight, bias = layer.linear.weight, layer.linear.bias
    expected = h @ weight[:, 1:].T + t * weight[:, 0] + bias
    torch.testing.assert_close(layer(t, h), expected)


def test_time_dependent_field_integrates_to_its_antiderivative():
    # f(t, h) = 2 t + 1 for every entry: h(T) = h0 + T^2 + T.
    layer = ConcatLinear(2, 2).to(F64)
    with torch.no_grad():
        layer.linear.weight.zero_()
        layer.linear.weight[:, 0] = 2.0
        layer.linear.bias.fill_(1.0)
    h0 = _h0(3, 2)
    out = ODEBlock(layer, t0=0.5, t1=2.0, gradient="direct", **TIGHT)(h0)
    torch.testing.assert_close(out, h0 + (2.0**2 + 2.0) - (0.5**2 + 0.5), rtol=1e-9, atol=1e-9)


def test_concat_time_feeds_time_as_first_feature():
    module = ConcatTime(lambda z: z)
    h = torch.randn(4, 3)
    out = module(torch.tensor(1.5), h)
    assert out.shape == (4, 4)
    assert torch.all(out[:, 0] == 1.5) and torch.equal(out[:, 1:], h)


def test_concat_conv2d_time_channel_and_shape():
    layer = ConcatConv2d(2, 3).to(F64)
    with torch.no_grad():
        layer.conv.weight.zero_()
        layer.conv.weight[:, 0] = 1.0  # only the time channel contributes
    h = torch.randn(2, 2, 6, 6, dtype=F64)
    t = torch.tensor(0.25, dtype=F64)
    out = layer(t, h)
    assert out.shape == (2, 3, 6, 6)
    bias = layer.conv.bias[None, :]
    # Interior pixels see all 9 taps of the constant time channel; corners see 4.
    torch.testing.assert_close(out[:, :, 3, 3], 9 * 0.25 + bias.expand(2, 3))
    torch.testing.assert_close(out[:, :, 0, 0], 4 * 0.25 + bias.expand(2, 3))


def test_mlp_dynamics_time_dependence_and_shape_check():
    torch.manual_seed(0)
    h = torch.randn(4, 3)
    autonomous = MLPDynamics(3, hidden=8, depth=2)
    assert torch.equal(autonomous(torch.tensor(0.0), h), autonomous(torch.tensor(5.0), h))
    timed = MLPDynamics(3, hidden=8, depth=2, activation="softplus", time_dependent=True)
    assert not torch.allclose(timed(torch.tensor(0.0), h), timed(torch.tensor(5.0), h))
    assert len(autonomous.layers) == 3
    with pytest.raises(NeurodeInputError):
        autonomous(torch.tensor(0.0), torch.randn(4, 2))
    with pytest.raises(NeurodeInputError):
        MLPDynamics(3, activation="swish-ish")
    with pytest.raises(NeurodeInputError):
        MLPDynamics(3, depth=0)
