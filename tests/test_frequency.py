"""Frequency and damping from samples: Lomb–Scargle, damped-sinusoid fit, pendulum constants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neurode.data import PendulumParams, simulate_pendulum
from neurode.data.errors import DatasetArgumentError
from neurode.data.frequency import (
    damped_sinusoid_fit,
    dominant_frequency,
    estimate_pendulum_constants,
    lomb_scargle,
)


def _irregular_times(n: int, span: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([[0.0], np.sort(rng.uniform(0.0, span, n - 1))])


def test_lomb_scargle_power_equals_scipys_floating_mean_periodogram():
    signal = pytest.importorskip("scipy.signal")
    t = _irregular_times(80, 12.0, 0)
    y = 0.7 * np.sin(2.3 * t + 0.4) + 0.2 + 0.05 * np.random.default_rng(1).standard_normal(80)
    w = np.linspace(0.3, 8.0, 200)
    reference = signal.lombscargle(t, y, w, floating_mean=True, normalize=True)
    np.testing.assert_allclose(lomb_scargle(t, y, w), reference, rtol=1e-9, atol=1e-12)


def test_dominant_frequency_of_irregular_samples_below_the_mean_nyquist_rate():
    t = _irregular_times(60, 20.0, 2)
    for omega in (0.6, 2.0, 5.5):
        y = np.cos(omega * t + 1.0)
        assert dominant_frequency([t], [y]) == pytest.approx(omega, rel=1e-4)


def test_damped_sinusoid_fit_recovers_the_rates_of_an_exact_damped_oscillation():
    t = _irregular_times(120, 15.0, 3)
    for decay, omega in ((0.02, 1.0), (0.25, 0.97), (0.3, 4.0)):
        series = [
            a * np.exp(-decay * t) * np.cos(omega * t + phase)
            for a, phase in ((1, 0.3), (0.5, 2.0))
        ]
        found_decay, found_omega = damped_sinusoid_fit([t, t], series)
        assert found_decay == pytest.approx(decay, rel=1e-4, abs=1e-6)
        assert found_omega == pytest.approx(omega, rel=1e-5)


@pytest.mark.parametrize("mu, g_over_l", [(0.05, 1.0), (0.5, 1.0), (0.2, 9.0), (0.5, 16.0)])
def test_pendulum_estimate_is_within_a_few_percent_on_clean_small_swings(mu, g_over_l):
    t = torch.linspace(0.0, 15.0, 151, dtype=torch.float64)
    states = simulate_pendulum(PendulumParams(mu=mu, g_over_l=g_over_l), [0.3, -0.2], [0.0, 0.1], t)
    estimate = estimate_pendulum_constants(
        [t.numpy()] * 2, [states[:, i, 0].numpy() for i in range(2)]
    )
    assert estimate.g_over_l == pytest.approx(g_over_l, rel=0.02)
    assert estimate.mu == pytest.approx(mu, rel=0.05)
    assert estimate.mu >= 0 and estimate.g_over_l > 0


def test_large_swings_are_corrected_for_the_amplitude():
    """At 1.4 rad the period is 13% longer than the small-angle one; the correction removes most."""
    t = torch.linspace(0.0, 12.0, 241, dtype=torch.float64)
    states = simulate_pendulum(PendulumParams(mu=0.0, g_over_l=4.0), [1.4], [0.0], t)
    estimate = estimate_pendulum_constants([t.numpy()], [states[:, 0, 0].numpy()])
    uncorrected = estimate.angular_frequency**2 + estimate.decay**2
    assert abs(uncorrected / 4.0 - 1) > 0.15
    assert estimate.g_over_l == pytest.approx(4.0, rel=0.05)


def test_less_than_one_period_still_gives_a_frequency():
    t = np.linspace(0.0, 4.0, 41)
    y = np.exp(-0.025 * t) * np.cos(1.0 * t)
    decay, omega = damped_sinusoid_fit([t], [y])
    assert omega == pytest.approx(1.0, rel=1e-3) and decay == pytest.approx(0.025, rel=0.05)


@pytest.mark.parametrize(
    "times, values, message",
    [
        ([np.arange(3.0)], [np.zeros(3)], "at least 4 points"),
        ([np.arange(5.0)], [np.zeros(4)], "as many values"),
        ([np.array([0.0, 1.0, 1.0, 2.0])], [np.zeros(4)], "strictly increasing"),
        ([np.arange(4.0)], [np.array([0.0, math.nan, 1.0, 2.0])], "NaN"),
        ([], [], "at least one"),
    ],
)
def test_bad_series_raise_a_typed_error(times, values, message):
    with pytest.raises(DatasetArgumentError, match=message):
        dominant_frequency(times, values)
