"""Bad input gets a typed error that says what to fix, before func is ever called."""

import math

import pytest
import torch

import neurode
from neurode import errors

F64 = torch.float64


class _CountingField:
    def __init__(self, output=None):
        self.calls = 0
        self.output = output

    def __call__(self, t, y):
        self.calls += 1
        return -y if self.output is None else self.output(t, y)


T = torch.tensor([0.0, 1.0], dtype=F64)
Y0 = torch.ones(3, dtype=F64)


@pytest.mark.parametrize(
    "t, match",
    [
        (torch.tensor([0.0, 1.0, 1.0], dtype=F64), "strictly"),
        (torch.tensor([0.0, 2.0, 1.0], dtype=F64), "strictly"),
        (torch.tensor([0.0, math.nan], dtype=F64), "NaN"),
        (torch.tensor([0.0, math.inf], dtype=F64), "NaN or infinity"),
        (torch.zeros(2, 2, dtype=F64), "1-D"),
    ],
)
def test_bad_times_raise_before_any_evaluation(t, match):
    func = _CountingField()
    with pytest.raises(errors.InvalidTimesError, match=match):
        neurode.odeint(func, Y0, t)
    assert func.calls == 0


def test_non_finite_y0_is_rejected():
    func = _CountingField()
    with pytest.raises(errors.NonFiniteInputError):
        neurode.odeint(func, torch.tensor([1.0, math.nan], dtype=F64), T)
    assert func.calls == 0


def test_unknown_method_lists_valid_names():
    with pytest.raises(errors.UnknownMethodError, match="dopri5"):
        neurode.odeint(_CountingField(), Y0, T, method="dopri7")


def test_unknown_option_lists_accepted_ones():
    func = _CountingField()
    with pytest.raises(errors.UnknownOptionError, match="first_step"):
        neurode.odeint(func, Y0, T, method="dopri5", options={"stepsize": 0.1})
    with pytest.raises(errors.UnknownOptionError, match="step_size"):
        neurode.odeint(func, Y0, T, method="rk4", options={"first_step": 0.1})
    assert func.calls == 0


@pytest.mark.parametrize("rtol, atol", [(-1e-3, 1e-6), (1e-3, -1.0), (math.nan, 1e-6)])
def test_bad_tolerances(rtol, atol):
    with pytest.raises(errors.InvalidToleranceError):
        neurode.odeint(_CountingField(), Y0, T, rtol=rtol, atol=atol)


def test_wrong_output_shape_is_named_at_first_evaluation():
    func = _CountingField(lambda t, y: y[:2])
    with pytest.raises(errors.ShapeMismatchError, match=r"shape \(2,\).*\(3,\)"):
        neurode.odeint(func, Y0, T)
    assert func.calls == 1


def test_lossy_output_dtype_is_an_error_but_a_wider_one_is_cast():
    with pytest.raises(errors.DtypeMismatchError, match="loses precision"):
        neurode.odeint(_CountingField(lambda t, y: (-y).float()), Y0, T)
    ys = neurode.odeint(lambda t, y: (-y).double(), torch.ones(3), T)
    assert ys.dtype == torch.float32


def test_tuple_structure_mismatch():
    y0 = (torch.ones(2, dtype=F64), torch.zeros(3, dtype=F64))
    with pytest.raises(errors.StructureMismatchError, match="tuple of 2"):
        neurode.odeint(lambda t, y: y[0], y0, T)
    with pytest.raises(errors.ShapeMismatchError, match=r"output\[1\]"):
        neurode.odeint(lambda t, y: (y[0], y[1][:2]), y0, T)


def test_unknown_gradient_method():
    with pytest.raises(errors.UnknownMethodError, match="direct"):
        neurode.solve(_CountingField(), Y0, T, gradient="telepathy")


def test_every_input_error_is_a_value_error():
    for name in dir(errors):
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, errors.NeurodeInputError):
            assert issubclass(cls, ValueError)


# ----------------------------------------------------------------- runtime failures
def test_max_num_steps_names_the_time_reached():
    with pytest.raises(errors.MaxStepsExceededError, match=r"t=") as info:
        neurode.odeint(
            lambda t, y: torch.cos(50 * t) * y,
            Y0,
            torch.tensor([0.0, 10.0], dtype=F64),
            options={"max_num_steps": 5},
        )
    assert 0 < info.value.t < 10


def test_finite_time_blow_up_reports_where():
    # y' = y², y(0) = 1 blows up at t = 1.
    with pytest.raises(errors.SolverError) as info:
        neurode.odeint(
            lambda t, y: y * y, torch.ones(1, dtype=F64), torch.tensor([0.0, 2.0], dtype=F64)
        )
    assert abs(info.value.t - 1.0) < 1e-6


def test_nan_from_func_is_reported_as_non_finite_not_as_step_underflow():
    def f(t, y):
        return torch.where(t > 0.5, torch.full_like(y, math.nan), -y)

    with pytest.raises(errors.NonFiniteStateError) as info:
        neurode.odeint(f, Y0, T)
    assert abs(info.value.t - 0.5) < 1e-6
    assert "underflow" not in str(info.value)
