"""Every gradient method reaches the tensors func uses, or says before the solve that it cannot.

``direct`` differentiates through the solve. The others compute ``dL/dθ`` for a list
of tensors; the list defaults to what ``func`` visibly holds (a module's parameters,
tensors in its closure or globals, a bound method's object, a partial's arguments),
and a tensor ``func`` depends on beyond that is a typed error at its first evaluation.
"""

import functools

import pytest
import torch

import neurode
from neurode import errors
from neurode.gradients.captured import captured_tensors, uncovered_inputs

F64 = torch.float64
METHODS = ["backsolve", "checkpoint", "reversible", "forward"]
T = torch.tensor([0.0, 0.7, 1.3], dtype=F64)


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
    ).double()


def _y0() -> torch.Tensor:
    return torch.tensor([[0.3, -0.5], [1.0, 0.2]], dtype=F64)


def _gradients(func, tensors, gradient):
    for tensor in tensors:
        tensor.grad = None
    solution = neurode.solve(func, _y0(), T, gradient=gradient, rtol=1e-10, atol=1e-12)
    solution.ys.pow(2).sum().backward()
    return [tensor.grad.clone() for tensor in tensors]


@pytest.mark.parametrize("gradient", METHODS)
def test_a_lambda_closing_over_a_module_gets_the_modules_gradients(gradient):
    net = _net()
    params = list(net.parameters())
    expected = _gradients(lambda t, y: net(y), params, "direct")
    got = _gradients(lambda t, y: net(y), params, gradient)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-9)


class _Field:
    def __init__(self):
        self.weight = torch.tensor([[-0.4, 1.0], [-1.0, -0.3]], dtype=F64, requires_grad=True)

    def rate(self, t, y):
        return torch.tanh(y @ self.weight) * torch.cos(t)


@pytest.mark.parametrize("gradient", METHODS)
def test_bound_methods_partials_and_plain_tensors_in_a_closure_are_found(gradient):
    field = _Field()
    weight = field.weight
    expected = _gradients(field.rate, [weight], "direct")[0]
    torch.testing.assert_close(
        _gradients(field.rate, [weight], gradient)[0], expected, rtol=1e-6, atol=1e-9
    )

    def scaled(t, y, scale):
        return torch.tanh(y @ scale) * torch.cos(t)

    partial = functools.partial(scaled, scale=weight)
    torch.testing.assert_close(
        _gradients(partial, [weight], gradient)[0], expected, rtol=1e-6, atol=1e-9
    )


@pytest.mark.parametrize("gradient", METHODS)
def test_a_tensor_func_depends_on_but_does_not_show_is_an_error_before_the_solve(gradient):
    weight = torch.tensor([[-0.4, 1.0], [-1.0, -0.3]], dtype=F64, requires_grad=True)
    hidden = {"a": {"b": {"c": {"d": [weight]}}}}  # deeper than the search goes
    calls = []

    def func(t, y):
        calls.append(t)
        return y @ hidden["a"]["b"]["c"]["d"][0]

    with pytest.raises(errors.GradientUnavailableError, match="params="):
        neurode.solve(func, _y0(), T, gradient=gradient)
    assert len(calls) == 1  # the first evaluation, no solve after it
    # Given explicitly, the tensor gets its gradient.
    solution = neurode.solve(func, _y0(), T, gradient=gradient, params=(weight,))
    solution.ys.sum().backward()
    assert weight.grad is not None and bool(weight.grad.abs().sum() > 0)


def test_inference_without_autograd_never_checks():
    weight = torch.ones(2, 2, dtype=F64, requires_grad=True)
    hidden = {"a": {"b": {"c": {"d": [weight]}}}}
    with torch.no_grad():
        neurode.solve(
            lambda t, y: -y @ hidden["a"]["b"]["c"]["d"][0], _y0(), T, gradient="backsolve"
        )


def test_captured_tensors_finds_modules_closures_and_globals_once():
    net = _net()
    extra = torch.zeros(2, requires_grad=True)
    frozen = torch.zeros(2)

    def func(t, y):
        return net(y) + extra + frozen

    found = captured_tensors(func)
    expected = {id(p) for p in net.parameters()} | {id(extra)}
    assert {id(p) for p in found} == expected
    assert len(found) == 5


def test_uncovered_inputs_stops_at_covered_tensors_leaf_or_not():
    leaf = torch.ones(3, requires_grad=True)
    other = torch.ones(3, requires_grad=True)
    derived = leaf * 2
    output = (derived * other).sum()
    assert uncovered_inputs(output, [derived, other]) == []
    assert [id(x) for x in uncovered_inputs(output, [other])] == [id(leaf)]
    assert {id(x) for x in uncovered_inputs(output, [])} == {id(leaf), id(other)}
