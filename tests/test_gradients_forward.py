"""Forward sensitivities: against matrix exponentials, finite differences and direct backprop."""

from __future__ import annotations

import pytest
import torch

import neurode
from neurode import sensitivities
from neurode.errors import NeurodeInputError, UnknownOptionError

DTYPE = torch.float64
STRATEGIES = [("forward", True), ("forward", False), ("reverse", True), ("reverse", False)]


class _Linear(torch.nn.Module):
    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        self.matrix = torch.nn.Parameter(matrix.clone())

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.matrix @ y


class _MLP(torch.nn.Module):
    """``f(t, y) = W₂ tanh(W₁ [y, sin t] + b₁)``, applied to the last axis of ``y``."""

    def __init__(self, seed: int = 0, hidden: int = 6):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.inner = torch.nn.Parameter(
            0.7 * torch.randn(hidden, 3, generator=generator, dtype=DTYPE)
        )
        self.bias = torch.nn.Parameter(0.2 * torch.randn(hidden, generator=generator, dtype=DTYPE))
        self.outer = torch.nn.Parameter(
            0.6 * torch.randn(2, hidden, generator=generator, dtype=DTYPE)
        )

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        time = torch.sin(t).to(y.dtype).expand(*y.shape[:-1], 1)
        hidden = torch.tanh(torch.cat([y, time], dim=-1) @ self.inner.T + self.bias)
        return hidden @ self.outer.T


_MATRIX = torch.tensor([[-0.5, 1.2, 0.1], [-1.0, -0.3, 0.4], [0.2, -0.6, -0.8]], dtype=DTYPE)
_Y0_3 = torch.tensor([1.0, -0.5, 0.25], dtype=DTYPE)
_Y0_2 = torch.tensor([0.6, -0.4], dtype=DTYPE)


def _expm_directional(matrix: torch.Tensor, direction: torch.Tensor, t: float) -> torch.Tensor:
    """``d/dε expm((A + εE) t)`` at 0: the upper-right block of ``expm([[A, E], [0, A]] t)``."""
    n = matrix.shape[0]
    block = torch.zeros(2 * n, 2 * n, dtype=DTYPE)
    block[:n, :n] = block[n:, n:] = matrix
    block[:n, n:] = direction
    return torch.linalg.matrix_exp(block * t)[:n, n:]


def _all_gradients(func, y0, t, gradient, weights, **kwargs) -> torch.Tensor:
    y0 = y0.detach().clone().requires_grad_(True)
    solution = neurode.solve(func, y0, t, gradient=gradient, **kwargs)
    loss = (weights * solution.ys).sum()
    grads = torch.autograd.grad(loss, [y0, *func.parameters()])
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("jacobian, vectorize", STRATEGIES)
def test_linear_system_sensitivities_are_the_matrix_exponential_and_its_derivative(
    jacobian, vectorize
):
    func = _Linear(_MATRIX)
    t = torch.tensor([0.0, 0.5, 1.7], dtype=DTYPE)
    ys, dy_dy0, (dy_dmatrix,) = sensitivities(
        func, _Y0_3, t, rtol=1e-10, atol=1e-12, jacobian=jacobian, vectorize=vectorize
    )
    assert dy_dy0.shape == (3, 3, 3)
    assert dy_dmatrix.shape == (3, 3, 3, 3)
    for i, s in enumerate(t.tolist()):
        phi = torch.linalg.matrix_exp(_MATRIX * s)
        assert torch.allclose(ys[i], phi @ _Y0_3, rtol=0, atol=1e-9)
        assert torch.allclose(dy_dy0[i], phi, rtol=0, atol=1e-9)
        for j in range(3):
            for k in range(3):
                direction = torch.zeros(3, 3, dtype=DTYPE)
                direction[j, k] = 1.0
                expected = _expm_directional(_MATRIX, direction, s) @ _Y0_3
                assert torch.allclose(dy_dmatrix[i, :, j, k], expected, rtol=0, atol=1e-9)


def test_mlp_parameter_sensitivities_match_central_differences():
    func = _MLP()
    t = torch.tensor([0.0, 0.8, 1.6], dtype=DTYPE)
    options = {"step_size": 0.05}
    _, _, dy_dparams = sensitivities(func, _Y0_2, t, method="rk4", options=options)
    eps = 1e-6
    for param, jacobian in zip(func.parameters(), dy_dparams):
        flat = param.data.view(-1)
        for index in range(flat.numel()):
            original = flat[index].item()
            values = []
            for shift in (eps, -eps):
                flat[index] = original + shift
                with torch.no_grad():
                    values.append(neurode.solve(func, _Y0_2, t, method="rk4", options=options).ys)
            flat[index] = original
            central = (values[0] - values[1]) / (2 * eps)
            assert torch.allclose(
                jacobian.reshape(3, 2, -1)[:, :, index], central, rtol=1e-6, atol=1e-9
            )


@pytest.mark.parametrize(
    "solve_kwargs",
    [
        dict(method="dopri5", rtol=1e-8, atol=1e-10),
        dict(method="tsit5", rtol=1e-6, atol=1e-8),
        dict(method="rk4", options={"step_size": 0.1}),
        dict(method="bosh3", rtol=1e-6, atol=1e-8, options={"step_t": [0.33]}),
    ],
    ids=["dopri5", "tsit5", "rk4", "bosh3-step_t"],
)
@pytest.mark.parametrize("jacobian", ["forward", "reverse"])
def test_gradient_method_equals_direct_backprop(solve_kwargs, jacobian):
    """Runge–Kutta methods commute with differentiation: the sensitivities integrated in
    the same steps are the derivative of the discrete solve."""
    func = _MLP()
    t = torch.linspace(0.0, 1.5, 4, dtype=DTYPE)
    weights = torch.tensor([[0.0, 0.0], [1.0, -0.4], [0.3, 0.8], [-0.9, 0.5]], dtype=DTYPE)
    direct = _all_gradients(func, _Y0_2, t, "direct", weights, **solve_kwargs)
    forward = _all_gradients(
        func, _Y0_2, t, "forward", weights, gradient_options={"jacobian": jacobian}, **solve_kwargs
    )
    assert torch.allclose(forward, direct, rtol=1e-11, atol=1e-13)


def test_same_steps_as_the_plain_solve_and_no_backward_evaluations():
    func = _MLP()
    t = torch.linspace(0.0, 2.0, 3, dtype=DTYPE)
    plain = neurode.solve(func, _Y0_2, t, rtol=1e-9, atol=1e-11)
    y0 = _Y0_2.clone().requires_grad_(True)
    solution = neurode.solve(func, y0, t, rtol=1e-9, atol=1e-11, gradient="forward")
    for key in ("steps", "accepted", "rejected", "nfe"):
        assert solution.stats[key] == plain.stats[key]
    assert torch.equal(solution.ys.detach(), plain.ys)
    solution.ys.sum().backward()
    assert solution.stats["nfe_backward"] == 0


def test_time_gradients_tuple_states_and_decreasing_time_match_direct():
    func = _MLP()

    def tuple_func(t, state):
        first, second = state
        out = func(t, torch.cat([first, second]))
        return out[:1], out[1:]

    results = {}
    for gradient in ("direct", "forward"):
        first = _Y0_2[:1].clone().requires_grad_(True)
        second = _Y0_2[1:].clone().requires_grad_(True)
        t = torch.tensor([1.5, 0.8, -0.4], dtype=DTYPE, requires_grad=True)
        solution = neurode.solve(
            tuple_func,
            (first, second),
            t,
            rtol=1e-9,
            atol=1e-11,
            gradient=gradient,
            params=tuple(func.parameters()),
        )
        loss = (solution.ys[0] ** 2).sum() + (solution.ys[1] * 0.7).sum()
        grads = torch.autograd.grad(loss, [first, second, t, *func.parameters()])
        results[gradient] = torch.cat([g.reshape(-1) for g in grads])
    assert torch.allclose(results["forward"], results["direct"], rtol=1e-11, atol=1e-13)


def test_batched_state_jacobian_is_block_diagonal():
    """Rows of a batch evolve independently: ``∂y[b]/∂y0[b'] = 0`` for ``b ≠ b'``."""
    func = _MLP()
    y0 = torch.tensor([[0.6, -0.4], [0.1, 0.9], [-0.7, 0.2]], dtype=DTYPE)
    t = torch.tensor([0.0, 1.0], dtype=DTYPE)
    ys, dy_dy0, dy_dparams = sensitivities(func, y0, t, rtol=1e-10, atol=1e-12)
    assert dy_dy0.shape == (2, 3, 2, 3, 2)
    assert [d.shape for d in dy_dparams] == [(2, 3, 2, *p.shape) for p in func.parameters()]
    for b in range(3):
        row_alone = sensitivities(func, y0[b], t, rtol=1e-10, atol=1e-12)[1]
        for other in range(3):
            block = dy_dy0[1, b, :, other, :]
            if other == b:
                assert torch.allclose(block, row_alone[1], rtol=0, atol=1e-8)
            else:
                assert torch.equal(block, torch.zeros_like(block))


def test_function_that_is_not_a_module_uses_reverse_products():
    weight = torch.tensor([[0.0, 1.0], [-2.0, -0.1]], dtype=DTYPE, requires_grad=True)

    def func(t, y):
        return weight @ torch.tanh(y)

    t = torch.tensor([0.0, 1.0, 2.0], dtype=DTYPE)
    results = {}
    for gradient in ("direct", "forward"):
        y0 = _Y0_2.clone().requires_grad_(True)
        solution = neurode.solve(
            func, y0, t, rtol=1e-9, atol=1e-11, gradient=gradient, params=(weight,)
        )
        grads = torch.autograd.grad(solution.ys.sum(), [y0, weight])
        results[gradient] = torch.cat([g.reshape(-1) for g in grads])
    assert torch.allclose(results["forward"], results["direct"], rtol=1e-11, atol=1e-13)
    with pytest.raises(NeurodeInputError, match="nn.Module"):
        neurode.solve(
            func,
            _Y0_2.clone().requires_grad_(True),
            t,
            gradient="forward",
            gradient_options={"jacobian": "forward"},
            params=(weight,),
        )


@pytest.mark.parametrize(
    "gradient_options, error",
    [
        ({"jacobain": "forward"}, UnknownOptionError),
        ({"jacobian": "sideways"}, NeurodeInputError),
        ({"vectorize": "yes"}, NeurodeInputError),
        ({"jacobians": []}, NeurodeInputError),
    ],
)
def test_bad_options_are_rejected_before_any_evaluation(gradient_options, error):
    calls = []

    def func(t, y):
        calls.append(t)
        return -y

    with pytest.raises(error):
        neurode.solve(
            func,
            _Y0_2.clone().requires_grad_(True),
            torch.tensor([0.0, 1.0], dtype=DTYPE),
            gradient="forward",
            gradient_options=gradient_options,
        )
    assert calls == []


def test_sensitivities_default_to_module_parameters_and_return_plain_tensors():
    func = _MLP()
    ys, dy_dy0, dy_dparams = sensitivities(func, _Y0_2, [0.0, 0.5])
    assert len(dy_dparams) == len(list(func.parameters()))
    assert not ys.requires_grad and not dy_dy0.requires_grad
    assert torch.equal(dy_dy0[0], torch.eye(2, dtype=DTYPE))
    assert all(torch.equal(d[0], torch.zeros_like(d[0])) for d in dy_dparams)
    with pytest.raises(NeurodeInputError):
        sensitivities(func, _Y0_2, [0.0, 0.5], params=[1.0])


def test_dense_output_is_the_plain_solves():
    func = _MLP()
    t = torch.tensor([0.0, 1.0], dtype=DTYPE)
    plain = neurode.solve(func, _Y0_2, t, rtol=1e-8, atol=1e-10, dense=True)
    y0 = _Y0_2.clone().requires_grad_(True)
    solution = neurode.solve(func, y0, t, rtol=1e-8, atol=1e-10, gradient="forward", dense=True)
    for s in (0.1, 0.45, 0.99):
        assert torch.allclose(solution.evaluate(s), plain.evaluate(s), rtol=0, atol=1e-14)
