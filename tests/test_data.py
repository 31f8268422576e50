"""Tests for neurode.data: pendulum, spirals, augmented-ODE toys, irregular sampling, CSV."""

from __future__ import annotations

import math

import pytest
import torch

from neurode.data import (
    DataFormatError,
    DatasetArgumentError,
    MaskedSeries,
    PendulumParams,
    load_pendulum_csv,
    make_concentric_circles,
    make_negation_pairs,
    make_pendulum_dataset,
    make_spirals_dataset,
    pendulum_energy,
    pendulum_vector_field,
    sample_sorted_uniform_times,
    save_pendulum_csv,
    simulate_pendulum,
    subsample_grid,
    take_along_time,
    union_time_grid,
)
from neurode.errors import NeurodeInputError

F64 = torch.float64


# ---------------------------------------------------------------- references


def _damped_linear_oscillator(mu, omega0_sq, theta0, omega0, t):
    """Exact solution of theta'' + mu theta' + omega0_sq theta = 0 (underdamped)."""
    decay = mu / 2
    omega_d = math.sqrt(omega0_sq - decay**2)
    a = theta0
    b = (omega0 + decay * theta0) / omega_d
    envelope = torch.exp(-decay * t)
    cos, sin = torch.cos(omega_d * t), torch.sin(omega_d * t)
    theta = envelope * (a * cos + b * sin)
    omega = envelope * ((b * omega_d - decay * a) * cos - (a * omega_d + decay * b) * sin)
    return theta, omega


def _complete_elliptic_k(m: float) -> float:
    """K(m) = pi / (2 AGM(1, sqrt(1 - m))), the arithmetic-geometric mean form."""
    a, b = 1.0, math.sqrt(1.0 - m)
    while abs(a - b) > 1e-16 * a:
        a, b = (a + b) / 2, math.sqrt(a * b)
    return math.pi / (2 * a)


def _simpson(values: torch.Tensor, step: float) -> torch.Tensor:
    """Composite Simpson rule along dim 0 (odd number of samples)."""
    weights = torch.ones(values.shape[0], dtype=values.dtype)
    weights[1:-1:2] = 4
    weights[2:-1:2] = 2
    return step / 3 * (weights.reshape(-1, *([1] * (values.dim() - 1))) * values).sum(0)


# ---------------------------------------------------------------- pendulum


def test_small_angle_pendulum_matches_damped_linear_oscillator():
    params = PendulumParams(mu=0.15, g_over_l=4.0)
    t = torch.linspace(0, 20, 401, dtype=F64)
    theta0 = torch.tensor([1e-3, 1e-3, -5e-4], dtype=F64)
    omega0 = torch.tensor([0.0, 1e-3, 2e-3], dtype=F64)
    states = simulate_pendulum(params, theta0, omega0, t)
    assert states.shape == (401, 3, 2)
    for i in range(3):
        theta, omega = _damped_linear_oscillator(
            params.mu, params.g_over_l, float(theta0[i]), float(omega0[i]), t
        )
        # sin(x) = x - x^3/6: the nonlinearity is ~1e-7 relative at these amplitudes.
        scale = theta.abs().max()
        assert (states[:, i, 0] - theta).abs().max() / scale < 1e-5
        assert (states[:, i, 1] - omega).abs().max() / omega.abs().max() < 1e-5


def test_large_angle_undamped_period_is_the_elliptic_integral():
    """theta(T/4) = 0 and theta(T/2) = -theta0 with T = 4 K(sin^2(theta0/2)) / sqrt(g/L)."""
    params = PendulumParams(mu=0.0, g_over_l=4.0)
    theta0 = 2.5  # far from linear: the period is ~1.6 times the small-angle one
    period = 4 * _complete_elliptic_k(math.sin(theta0 / 2) ** 2) / params.natural_frequency
    assert period > 1.5 * 2 * math.pi / params.natural_frequency
    t = torch.tensor([0.0, period / 4, period / 2, period], dtype=F64)
    states = simulate_pendulum(params, theta0, 0.0, t)[:, 0]
    assert abs(float(states[1, 0])) < 1e-8
    assert abs(float(states[2, 0]) + theta0) < 1e-8
    assert abs(float(states[3, 0]) - theta0) < 1e-8
    assert abs(float(states[2, 1])) < 1e-8


def test_undamped_pendulum_conserves_energy():
    params = PendulumParams(mu=0.0, g_over_l=4.0)
    t = torch.linspace(0, 20, 201, dtype=F64)
    states = simulate_pendulum(params, [0.5, 1.5, 2.8], [0.0, 1.0, -0.3], t)
    energy = pendulum_energy(params, states[..., 0], states[..., 1])
    relative_drift = (energy - energy[0]).abs().max(0).values / energy[0]
    assert relative_drift.max() < 1e-8


def test_damped_pendulum_energy_decays_monotonically_at_rate_mu_omega_squared():
    """E(t) = E(0) - mu * integral_0^t omega^2 ds, and so E never increases."""
    params = PendulumParams(mu=0.3, g_over_l=4.0)
    n = 2001
    t = torch.linspace(0, 10, n, dtype=F64)
    states = simulate_pendulum(params, [0.5, 1.5, 2.0], [0.0, 1.0, -1.0], t)
    energy = pendulum_energy(params, states[..., 0], states[..., 1])
    assert (energy.diff(dim=0) <= 1e-12).all()
    assert (energy[-1] < 0.2 * energy[0]).all()
    dissipated = params.mu * _simpson(states[..., 1] ** 2, step=float(t[1] - t[0]))
    assert torch.allclose(energy[0] - energy[-1], dissipated, rtol=1e-8, atol=0)


def test_vector_field_is_the_time_derivative_of_simulated_trajectories():
    params = PendulumParams()
    h = 1e-4
    centres = torch.tensor([1.3, 2.7, 6.1], dtype=F64)
    stencils = torch.stack([centres - h, centres, centres + h], dim=1).reshape(-1)
    t = torch.cat([torch.zeros(1, dtype=F64), stencils])
    states = simulate_pendulum(params, 1.2, -0.4, t)[1:, 0].reshape(3, 3, 2)
    finite_difference = (states[:, 2] - states[:, 0]) / (2 * h)
    dtheta, domega = pendulum_vector_field(params, states[:, 1, 0], states[:, 1, 1])
    assert torch.allclose(finite_difference[:, 0], dtheta, rtol=0, atol=1e-6)
    assert torch.allclose(finite_difference[:, 1], domega, rtol=0, atol=1e-6)


def test_vector_field_broadcasts_over_a_phase_plane_grid():
    params = PendulumParams(mu=0.2, g_over_l=9.0)
    theta, omega = torch.meshgrid(
        torch.linspace(-3, 3, 7, dtype=F64), torch.linspace(-2, 2, 5, dtype=F64), indexing="ij"
    )
    dtheta, domega = pendulum_vector_field(params, theta, omega)
    assert dtheta.shape == domega.shape == (7, 5)
    assert torch.equal(dtheta, omega)
    assert torch.allclose(domega, -0.2 * omega - 9.0 * torch.sin(theta))


def test_default_pendulum_oscillates_several_times_with_visible_decay():
    dataset = make_pendulum_dataset(4, noise_std=0.0, seed=0)
    theta = dataset.clean[..., 0]
    sign_changes = (theta[:, 1:].sign() != theta[:, :-1].sign()).sum(dim=1)
    assert (sign_changes >= 8).all()  # at least four full periods in the window
    first, last = theta[:, :25].abs().max(1).values, theta[:, -25:].abs().max(1).values
    assert (last < 0.5 * first).all()


@pytest.mark.parametrize("irregular", [False, True])
def test_pendulum_dataset_is_deterministic_per_seed_and_differs_across_seeds(irregular):
    make = lambda seed: make_pendulum_dataset(3, 10.0, 20, irregular=irregular, seed=seed)
    first, again, other = make(7), make(7), make(8)
    for name in ("times", "clean", "noisy", "theta0", "omega0"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert not torch.equal(first.theta0, other.theta0)
    assert not torch.equal(first.noisy, other.noisy)
    if irregular:
        assert not torch.equal(first.times, other.times)


def test_dataset_generation_leaves_the_global_rng_untouched():
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    make_pendulum_dataset(2, 5.0, 10, irregular=True, seed=3)
    make_spirals_dataset(4, 10, n_dense=100, n_window=40)
    make_concentric_circles(5, 5)
    make_negation_pairs(5)
    assert torch.equal(torch.rand(3), expected)


def test_pendulum_observation_noise_has_the_requested_std():
    noise_std = 0.07
    dataset = make_pendulum_dataset(20, 10.0, 100, noise_std=noise_std, seed=5)
    residual = (dataset.noisy - dataset.clean).reshape(-1)
    n = residual.numel()  # 4000 samples: the sample std has relative spread 1/sqrt(2n) ~ 1.1%
    assert abs(float(residual.std()) / noise_std - 1) < 0.05
    assert abs(float(residual.mean())) < 4 * noise_std / math.sqrt(n)
    noiseless = make_pendulum_dataset(2, 5.0, 10, noise_std=0.0, seed=5)
    assert torch.equal(noiseless.noisy, noiseless.clean)


def test_regular_pendulum_dataset_layout_and_time_split():
    dataset = make_pendulum_dataset(5, 20.0, 101, train_fraction=0.6, seed=2)
    assert not dataset.is_irregular
    assert dataset.times.shape == (101,)
    assert dataset.clean.shape == dataset.noisy.shape == (5, 101, 2)
    assert torch.equal(dataset.times, torch.linspace(0, 20, 101, dtype=F64))
    assert torch.equal(dataset.clean[:, 0], dataset.initial_states)
    train, extrapolation = dataset.train, dataset.extrapolation
    assert (train.times < dataset.t_split).all() and (extrapolation.times >= dataset.t_split).all()
    assert len(train.times) + len(extrapolation.times) == 101
    assert torch.equal(torch.cat([train.noisy, extrapolation.noisy], 1), dataset.noisy)
    reference = simulate_pendulum(dataset.params, dataset.theta0, dataset.omega0, dataset.times)
    assert torch.equal(dataset.clean, reference.transpose(0, 1))


def test_irregular_pendulum_times_are_strictly_increasing_and_split_by_window():
    dataset = make_pendulum_dataset(6, 12.0, 25, irregular=True, train_fraction=0.4, seed=4)
    assert dataset.is_irregular and dataset.times.shape == (6, 25)
    assert (dataset.times.diff(dim=1) > 0).all()
    assert (dataset.times >= 0).all() and (dataset.times <= 12.0).all()
    assert dataset.n_train == 10
    assert (dataset.train.times < dataset.t_split).all()
    assert (dataset.extrapolation.times >= dataset.t_split).all()
    assert dataset.train.clean.shape == (6, 10, 2)
    # The clean states are the pendulum at each trajectory's own times.
    for i in (0, 5):
        t_i = torch.cat([torch.zeros(1, dtype=F64), dataset.times[i]])
        own = simulate_pendulum(dataset.params, dataset.theta0[i], dataset.omega0[i], t_i)
        assert torch.allclose(dataset.clean[i], own[1:, 0], rtol=0, atol=1e-8)


def test_pendulum_masked_form_is_consistent_with_per_trajectory_values():
    dataset = make_pendulum_dataset(4, 8.0, 12, irregular=True, seed=9)
    masked = dataset.to_masked()
    assert isinstance(masked, MaskedSeries)
    assert (masked.times.diff() > 0).all()
    assert masked.values.shape == (4, len(masked.times), 2) and masked.mask.shape == (4, 48)
    assert torch.equal(masked.mask.sum(1), torch.full((4,), 12))
    for i in range(4):
        times_i, values_i = masked.series(i)
        assert torch.equal(times_i, dataset.times[i])
        assert torch.equal(values_i, dataset.noisy[i])
    assert (masked.values[~masked.mask] == 0).all()
    clean = dataset.to_masked(noisy=False)
    # Boolean indexing walks series by series, each in time order.
    assert torch.equal(clean.values[clean.mask], dataset.clean.reshape(-1, 2))


def test_regular_pendulum_masked_form_has_a_full_mask():
    dataset = make_pendulum_dataset(3, 5.0, 11, seed=1)
    masked = dataset.to_masked()
    assert masked.mask.all()
    assert torch.equal(masked.times, dataset.times)
    assert torch.equal(masked.values, dataset.noisy)


def test_pendulum_dtype_argument_controls_every_tensor():
    dataset = make_pendulum_dataset(2, 5.0, 12, irregular=True, seed=0, dtype=torch.float32)
    for name in ("times", "clean", "noisy", "theta0", "omega0"):
        assert getattr(dataset, name).dtype == torch.float32
    assert (dataset.times.diff(dim=1) > 0).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_trajectories=0),
        dict(n_trajectories=2.5),
        dict(n_trajectories=2, t_end=-1.0),
        dict(n_trajectories=2, n_points=1),
        dict(n_trajectories=2, noise_std=-0.1),
        dict(n_trajectories=2, noise_std=float("nan")),
        dict(n_trajectories=2, train_fraction=1.0),
        dict(n_trajectories=2, seed=-1),
        dict(n_trajectories=2, dtype=torch.int64),
        dict(n_trajectories=2, params=(0.1, 4.0)),
    ],
)
def test_bad_pendulum_dataset_arguments_raise_a_typed_error(kwargs):
    with pytest.raises(DatasetArgumentError) as info:
        make_pendulum_dataset(**kwargs)
    assert isinstance(info.value, NeurodeInputError)


@pytest.mark.parametrize("kwargs", [dict(mu=-0.1), dict(g_over_l=0.0), dict(mu=float("inf"))])
def test_bad_pendulum_params_raise_a_typed_error(kwargs):
    with pytest.raises(DatasetArgumentError):
        PendulumParams(**kwargs)


def test_simulate_pendulum_rejects_bad_times_and_initial_conditions():
    params = PendulumParams()
    with pytest.raises(DatasetArgumentError, match="strictly increasing"):
        simulate_pendulum(params, 0.1, 0.0, [0.0, 1.0, 1.0])
    with pytest.raises(DatasetArgumentError, match="same length"):
        simulate_pendulum(params, [0.1, 0.2], [0.0, 0.1, 0.2], [0.0, 1.0])
    with pytest.raises(DatasetArgumentError, match="finite"):
        simulate_pendulum(params, float("nan"), 0.0, [0.0, 1.0])


# ---------------------------------------------------------------- spirals


def test_spirals_are_half_clockwise_by_the_sign_of_angular_momentum():
    dataset = make_spirals_dataset(12, 30, n_dense=400, n_window=120, seed=3)
    x, y = dataset.dense[..., 0], dataset.dense[..., 1]
    dt = float(dataset.dense_times[1] - dataset.dense_times[0])
    dx, dy = torch.gradient(x, spacing=dt, dim=1)[0], torch.gradient(y, spacing=dt, dim=1)[0]
    angular_momentum = x * dy - y * dx
    clockwise = (angular_momentum < 0).all(dim=1)
    counter_clockwise = (angular_momentum > 0).all(dim=1)
    assert int(clockwise.sum()) == 6 and int(counter_clockwise.sum()) == 6
    assert torch.equal(clockwise, dataset.clockwise)
    # x y' - y x' = r^2 at unit angular speed; central differences lose h^2/6 ~ 4e-4.
    radius_sq = (x**2 + y**2)[:, 1:-1]
    assert torch.allclose(angular_momentum.abs()[:, 1:-1], radius_sq, rtol=1e-3)


def test_spirals_follow_the_archimedean_radius_law():
    dataset = make_spirals_dataset(6, 20, n_dense=300, n_window=100, a=0.2, b=0.5, seed=1)
    angle = dataset.start_angle.unsqueeze(1) + dataset.dense_times
    assert torch.allclose(dataset.dense.norm(dim=-1), 0.2 + 0.5 * angle, rtol=1e-12)
    assert ((dataset.start_angle >= 0) & (angle[:, -1] <= 6 * math.pi + 1e-12)).all()


def test_spiral_observations_are_noisy_irregular_subsamples_of_the_observed_part():
    dataset = make_spirals_dataset(40, 50, noise_std=0.2, n_dense=500, n_window=200, seed=2)
    assert dataset.observed.shape == (40, 50, 2) and dataset.observed_times.shape == (40, 50)
    assert (dataset.observed_indices.diff(dim=1) > 0).all()
    assert (dataset.observed_indices < dataset.n_observed_window).all()
    assert dataset.n_observed_window == 100
    assert torch.equal(dataset.observed_times, dataset.dense_times[dataset.observed_indices])
    assert not (dataset.observed_times == dataset.observed_times[0]).all()  # times differ
    residual = dataset.observed - take_along_time(dataset.dense, dataset.observed_indices)
    assert abs(float(residual.std()) / 0.2 - 1) < 0.05  # 4000 samples
    assert (dataset.extrapolation_times > dataset.observed_times.max()).all()
    assert torch.equal(torch.cat([dataset.observed_part, dataset.extrapolation], 1), dataset.dense)


def test_spiral_masked_form_matches_the_observations():
    dataset = make_spirals_dataset(5, 8, n_dense=100, n_window=40, seed=4)
    masked = dataset.to_masked()
    for i in range(5):
        times_i, values_i = masked.series(i)
        assert torch.equal(times_i, dataset.observed_times[i])
        assert torch.equal(values_i, dataset.observed[i])


def test_spirals_are_deterministic_per_seed():
    make = lambda seed: make_spirals_dataset(6, 10, n_dense=200, n_window=60, seed=seed)
    first, again, other = make(0), make(0), make(1)
    assert torch.equal(first.observed, again.observed)
    assert torch.equal(first.clockwise, again.clockwise)
    assert not torch.equal(first.observed, other.observed)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(n_spirals=1),
        dict(n_spirals=4, n_observations=200, n_window=300),
        dict(n_spirals=4, n_window=2000),
        dict(n_spirals=4, observed_fraction=0.0),
        dict(n_spirals=4, b=0.0),
    ],
)
def test_bad_spiral_arguments_raise_a_typed_error(kwargs):
    with pytest.raises(DatasetArgumentError):
        make_spirals_dataset(**kwargs)


# ---------------------------------------------------------------- augmented-ODE toys


def test_negation_pairs_are_exact_for_uniform_inputs():
    inputs, targets = make_negation_pairs(500, seed=1)
    assert inputs.shape == targets.shape == (500, 1)
    assert torch.equal(targets, -inputs)
    assert (inputs.abs() <= 1).all()
    assert (inputs > 0).any() and (inputs < 0).any()


def test_negation_pairs_on_the_endpoints_are_plus_and_minus_one():
    inputs, targets = make_negation_pairs(7, sampling="endpoints", seed=2)
    assert torch.equal(targets, -inputs)
    assert set(inputs.reshape(-1).tolist()) == {-1.0, 1.0}
    assert int((inputs == 1).sum()) == 4 and int((inputs == -1).sum()) == 3
    with pytest.raises(DatasetArgumentError, match="sampling"):
        make_negation_pairs(4, sampling="grid")


@pytest.mark.parametrize("dim", [2, 3])
def test_concentric_circles_respect_radii_and_labels(dim):
    inputs, targets = make_concentric_circles(
        300, 400, inner_radius=0.5, annulus_radii=(1.0, 1.5), dim=dim, seed=0
    )
    assert inputs.shape == (700, dim) and targets.shape == (700, 1)
    radius = inputs.norm(dim=1)
    inner = targets[:, 0] == -1
    assert int(inner.sum()) == 300 and int((targets[:, 0] == 1).sum()) == 400
    assert (radius[inner] <= 0.5).all()
    assert ((radius[~inner] >= 1.0) & (radius[~inner] <= 1.5)).all()


def test_concentric_circles_are_uniform_in_area():
    """For a disc of radius r1, P(|x| <= r1/sqrt(2)) = 1/2."""
    inputs, targets = make_concentric_circles(4000, 4000, seed=3)
    radius = inputs.norm(dim=1)
    inner_radius = radius[targets[:, 0] == -1]
    fraction = float((inner_radius <= 0.5 / math.sqrt(2)).double().mean())
    assert abs(fraction - 0.5) < 0.04  # ~5 standard deviations
    outer_radius = radius[targets[:, 0] == 1]
    # Annulus 1..1.5: P(|x| <= rho) = (rho^2 - 1) / (1.5^2 - 1); rho = 1.25 gives 0.45.
    assert abs(float((outer_radius <= 1.25).double().mean()) - 0.45) < 0.04


def test_bad_concentric_radii_raise_a_typed_error():
    with pytest.raises(DatasetArgumentError, match="inner_radius < r2 < r3"):
        make_concentric_circles(10, 10, inner_radius=1.2, annulus_radii=(1.0, 1.5))


# ---------------------------------------------------------------- irregular helpers


def test_subsample_grid_draws_sorted_distinct_indices_uniformly():
    grid = torch.linspace(0, 1, 10, dtype=F64)
    sample = subsample_grid(grid, 4000, 3, seed=0)
    assert sample.indices.shape == (4000, 3)
    assert (sample.indices.diff(dim=1) > 0).all()
    assert torch.equal(sample.times, grid[sample.indices])
    # Each grid point is in a uniform 3-subset of 10 with probability 3/10.
    frequency = torch.bincount(sample.indices.reshape(-1), minlength=10).double() / 4000
    assert (frequency - 0.3).abs().max() < 0.04


def test_subsample_grid_can_keep_the_first_point():
    grid = torch.arange(20, dtype=F64)
    sample = subsample_grid(grid, 50, 5, seed=1, include_first=True)
    assert (sample.indices[:, 0] == 0).all()
    assert (sample.indices.diff(dim=1) > 0).all()
    with pytest.raises(DatasetArgumentError, match="cannot exceed"):
        subsample_grid(grid, 2, 21)


def test_sorted_uniform_times_lie_in_the_window_and_strictly_increase():
    times = sample_sorted_uniform_times(300, 20, 2.0, 5.0, seed=0)
    assert times.shape == (300, 20)
    assert (times >= 2.0).all() and (times < 5.0).all()
    assert (times.diff(dim=1) > 0).all()
    # Mean of a uniform on [2, 5) is 3.5; 6000 draws have standard error ~0.011.
    assert abs(float(times.mean()) - 3.5) < 0.06
    # float16 has ~3000 values in [0, 1): 30 draws tie with probability ~15% and are redrawn.
    narrow = sample_sorted_uniform_times(40, 30, 0.0, 1.0, seed=1, dtype=torch.float16)
    assert (narrow.diff(dim=1) > 0).all() and (narrow < 1.0).all()
    with pytest.raises(DatasetArgumentError, match="distinct times"):
        sample_sorted_uniform_times(2, 300, 0.0, 1.0, dtype=torch.float16)


def test_union_time_grid_with_series_of_different_lengths():
    times = [
        torch.tensor([0.0, 1.0, 2.5], dtype=F64),
        torch.tensor([0.5, 1.0], dtype=F64),
        torch.tensor([3.0], dtype=F64),
    ]
    values = [torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[4.0], [5.0]]), torch.ones(1, 1)]
    masked = union_time_grid(times, values, fill_value=float("nan"))
    assert masked.times.tolist() == [0.0, 0.5, 1.0, 2.5, 3.0]
    expected_mask = [
        [True, False, True, True, False],
        [False, True, True, False, False],
        [False, False, False, False, True],
    ]
    assert masked.mask.tolist() == expected_mask
    assert torch.isnan(masked.values[~masked.mask]).all()
    for i in range(3):
        times_i, values_i = masked.series(i)
        assert torch.equal(times_i, times[i]) and torch.equal(values_i, values[i])


def test_union_time_grid_rejects_unsorted_times_and_mismatched_values():
    with pytest.raises(DatasetArgumentError, match="strictly increasing"):
        union_time_grid([torch.tensor([0.0, 2.0, 1.0])], [torch.zeros(3)])
    with pytest.raises(DatasetArgumentError, match="one row per time"):
        union_time_grid([torch.tensor([0.0, 1.0])], [torch.zeros(3)])


def test_take_along_time_matches_indexing_each_series():
    values = torch.randn(3, 10, 2, generator=torch.Generator().manual_seed(0))
    indices = torch.tensor([[0, 4, 9], [1, 2, 3], [5, 6, 8]])
    gathered = take_along_time(values, indices)
    for i in range(3):
        assert torch.equal(gathered[i], values[i, indices[i]])


# ---------------------------------------------------------------- CSV


def test_csv_round_trip_of_a_single_trajectory_is_exact(tmp_path):
    t = torch.linspace(0, 3, 31, dtype=F64)
    theta = torch.sin(t) * math.pi / 7
    path = tmp_path / "single.csv"
    save_pendulum_csv(path, t, theta)
    assert path.read_text().splitlines()[0] == "t,theta"
    loaded = load_pendulum_csv(path)
    assert loaded.trajectory_ids == (0,)
    assert torch.equal(loaded.times[0], t) and torch.equal(loaded.theta[0], theta)


def test_csv_round_trip_of_an_irregular_simulated_dataset_is_exact(tmp_path):
    dataset = make_pendulum_dataset(3, 6.0, 9, irregular=True, seed=11)
    path = tmp_path / "irregular.csv"
    save_pendulum_csv(path, dataset.times, dataset.noisy[..., 0], trajectory_ids=[4, 7, 2])
    loaded = load_pendulum_csv(path)
    assert loaded.trajectory_ids == (4, 7, 2)
    for i in range(3):
        assert torch.equal(loaded.times[i], dataset.times[i])
        assert torch.equal(loaded.theta[i], dataset.noisy[i, :, 0])
    masked = loaded.to_masked()
    assert masked.values.shape == (3, 27, 1) and int(masked.mask.sum()) == 27


def test_csv_groups_interleaved_rows_by_trajectory_id(tmp_path):
    path = tmp_path / "interleaved.csv"
    path.write_text(
        "theta,trajectory,t\n"
        "0.1,5,0.0\n0.2,3,0.0\n0.3,5,0.5\n0.4,3,1.0\n0.5,5,1.0\n0.6,3,2.0\n\n0.7,3,2.5\n"
    )
    loaded = load_pendulum_csv(path, dtype=torch.float32)
    assert loaded.trajectory_ids == (5, 3)
    assert loaded.times[0].tolist() == [0.0, 0.5, 1.0]
    assert loaded.theta[1].tolist() == pytest.approx([0.2, 0.4, 0.6, 0.7])
    assert loaded.theta[1].dtype == torch.float32


def _write(tmp_path, text: str):
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


def _format_error(path, match: str) -> str:
    with pytest.raises(DataFormatError, match=match) as info:
        load_pendulum_csv(path)
    message = str(info.value)
    assert isinstance(info.value, NeurodeInputError) and isinstance(info.value, ValueError)
    assert "\n" not in message and str(path) in message
    return message


def test_csv_missing_file_names_the_path(tmp_path):
    path = tmp_path / "absent.csv"
    with pytest.raises(FileNotFoundError, match="absent.csv") as info:
        load_pendulum_csv(path)
    assert info.value.filename == str(path)


def test_csv_empty_file_and_header_without_rows(tmp_path):
    _format_error(_write(tmp_path, ""), "is empty")
    _format_error(_write(tmp_path, "\n  \n"), "is empty")
    _format_error(_write(tmp_path, "t,theta\n"), "no data rows")


def test_csv_missing_or_wrong_columns_say_what_was_found_and_needed(tmp_path):
    message = _format_error(_write(tmp_path, "time,theta\n0,1\n1,2\n2,3\n"), "missing 't'")
    assert "['time', 'theta']" in message and "unexpected 'time'" in message
    message = _format_error(_write(tmp_path, "t,angle,extra\n0,1,2\n"), "missing 'theta'")
    assert "'angle', 'extra'" in message
    _format_error(_write(tmp_path, "t,theta,theta\n0,1,1\n"), "repeated 'theta'")


def test_csv_non_numeric_value_gives_line_and_value(tmp_path):
    path = _write(tmp_path, "t,theta\n0,0.1\n0.5,abc\n1.0,0.3\n")
    _format_error(path, r"line 3: column 'theta' holds 'abc', which is not a number")
    path = _write(tmp_path, "trajectory,t,theta\n0,0,0.1\nx,0.5,0.2\n")
    _format_error(path, r"line 3: column 'trajectory' holds 'x', which is not an integer")
    _format_error(_write(tmp_path, "t,theta\n0,0.1\n0.5\n"), r"line 3: expected 2 fields")


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity"])
def test_csv_non_finite_value_gives_line(tmp_path, bad):
    path = _write(tmp_path, f"t,theta\n0,0.1\n0.5,0.2\n1.0,{bad}\n1.5,0.3\n")
    _format_error(path, r"line 4: column 'theta' is .*values must be finite")


def test_csv_times_not_increasing_within_a_trajectory_give_line(tmp_path):
    path = _write(tmp_path, "trajectory,t,theta\n0,0,0.1\n1,0,0.1\n0,1,0.2\n1,2,0.1\n0,1,0.3\n")
    _format_error(path, r"line 6: time 1.0 of trajectory 0 does not exceed .*\(line 4\)")


def test_csv_trajectory_with_fewer_than_three_points(tmp_path):
    path = _write(tmp_path, "trajectory,t,theta\n0,0,0.1\n0,1,0.2\n0,2,0.3\n9,0,0.1\n9,1,0.2\n")
    _format_error(path, r"trajectory 9 has 2 point\(s\); each trajectory needs at least 3")


def test_save_rejects_data_that_could_not_be_read_back(tmp_path):
    path = tmp_path / "out.csv"
    with pytest.raises(DatasetArgumentError, match="at least 3"):
        save_pendulum_csv(path, torch.tensor([0.0, 1.0]), torch.tensor([0.1, 0.2]))
    with pytest.raises(DatasetArgumentError, match="strictly increasing"):
        save_pendulum_csv(path, torch.tensor([0.0, 2.0, 1.0]), torch.zeros(3))
    with pytest.raises(DatasetArgumentError, match="distinct"):
        save_pendulum_csv(path, torch.arange(3.0), torch.zeros(2, 3), trajectory_ids=[1, 1])
    assert not path.exists()
