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


# ------------------------------------------------------------ never a silent cast or crash
def test_complex_output_for_a_real_state_is_a_dtype_error():
    with pytest.raises(errors.DtypeMismatchError, match="imaginary"):
        neurode.odeint(lambda t, y: y * 1j, Y0, T)


def test_zero_rtol_and_atol_are_refused_before_any_evaluation():
    func = _CountingField()
    with pytest.raises(errors.InvalidToleranceError, match="both zero"):
        neurode.odeint(func, Y0, T, rtol=0.0, atol=0.0)
    mixed = torch.tensor([1e-9, 0.0, 1e-9], dtype=F64)
    with pytest.raises(errors.InvalidToleranceError, match="both zero"):
        neurode.odeint(func, Y0, T, rtol=0.0, atol=mixed)
    assert func.calls == 0
    neurode.odeint(func, Y0, T, rtol=1e-6, atol=0.0)  # a relative test alone is fine


@pytest.mark.parametrize("first_step", [-0.1, 0.0, math.inf, math.nan])
def test_bad_first_step_is_an_option_error(first_step):
    func = _CountingField()
    with pytest.raises(errors.InvalidOptionError, match="first_step"):
        neurode.odeint(func, Y0, T, options={"first_step": first_step})
    assert func.calls == 0


def test_tolerance_that_would_widen_the_state_is_refused():
    atol = torch.full((1, 3), 1e-9, dtype=F64)
    with pytest.raises(errors.InvalidToleranceError, match="without changing its shape"):
        neurode.odeint(lambda t, y: -y, Y0, T, atol=atol)


@pytest.mark.parametrize(
    "late_output, error, match",
    [
        (lambda y: torch.zeros(2, dtype=F64), errors.ShapeMismatchError, r"shape \(2,\)"),
        (lambda y: None, errors.ShapeMismatchError, "forget to return"),
        (lambda y: (y, y), errors.ShapeMismatchError, "tuple"),
    ],
)
def test_func_that_changes_its_output_later_gets_a_typed_error(late_output, error, match):
    calls = []

    def func(t, y):
        calls.append(t)
        return -y if len(calls) < 6 else late_output(y)

    with pytest.raises(error, match=match):
        neurode.odeint(func, Y0, torch.linspace(0.0, 5.0, 4, dtype=F64))


def test_a_grid_too_fine_for_max_num_steps_is_refused_before_any_work():
    func = _CountingField()
    with pytest.raises(errors.InvalidOptionError, match="max_num_steps"):
        neurode.odeint(
            func,
            Y0,
            torch.tensor([0.0, 10.0], dtype=F64),
            method="rk4",
            options={"step_size": 1e-9},
        )
    assert func.calls == 0
    with pytest.raises(errors.InvalidOptionError, match="max_num_steps"):
        neurode.odeint(
            func, Y0, T, method="euler", options={"step_size": 0.01, "max_num_steps": 50}
        )


@pytest.mark.parametrize("method", ["euler", "rk4", "explicit_adams", "implicit_adams"])
def test_fixed_grid_blow_up_raises_naming_the_time_instead_of_returning_nan(method):
    def func(t, y):
        return torch.where(t > 0.5, y * math.nan, -y)

    with pytest.raises(errors.NonFiniteStateError) as info:
        neurode.odeint(
            func,
            Y0,
            torch.linspace(0.0, 1.0, 5, dtype=F64),
            method=method,
            options={"step_size": 0.1},
        )
    assert 0.5 < info.value.t <= 0.8 + 1e-12


@pytest.mark.parametrize("gradient", ["direct", "reversible", "checkpoint", "backsolve"])
def test_errors_name_the_users_time_when_t_decreases(gradient):
    y0 = Y0.clone().requires_grad_(gradient != "direct")
    params = (y0,) if gradient != "direct" else None
    with pytest.raises(errors.MaxStepsExceededError) as info:
        neurode.solve(
            lambda t, y: -y,
            y0,
            torch.tensor([10.0, 0.0], dtype=F64),
            options={"max_num_steps": 3},
            gradient=gradient,
            params=params,
        )
    assert 9.0 < info.value.t < 10.0
    assert f"t={info.value.t:.6g}" in str(info.value)
