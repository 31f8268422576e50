r"""Oscillation frequency and damping read off sampled data, before any training.

A model of an oscillator trained from an uninformed start falls easily into a
wrong basin: a frequency off by half an oscillation over the fitted window
scores no better than one off by much more. This module estimates the
physical constants of a damped pendulum from its angles alone, so training
starts near the right basin.

1. **Dominant frequency** by the generalised Lomb–Scargle periodogram
   (Zechmeister & Kürster 2009; a sinusoid plus a constant fitted by weighted
   least squares at every trial frequency), which needs no regular sampling.
   The powers of all trajectories are summed (each trajectory normalised by
   its variance), and the peak is refined by golden-section search.
2. **Damping** by a damped-sinusoid fit, shared by every trajectory,

   .. math::

       \theta_i(t) \approx e^{-\gamma (t - t_{i0})}\bigl(a_i \cos\omega (t - t_{i0})
       + b_i \sin\omega (t - t_{i0})\bigr) + c_i ,

   with the linear coefficients :math:`a_i, b_i, c_i` eliminated (variable
   projection): a grid of :math:`\gamma`, then golden-section refinement of
   :math:`\gamma` and of :math:`\omega` near the periodogram peak, which uses
   every sample rather than only the extrema (robust to noise and to
   irregular times).
3. **Constants**: for the damped linear oscillator
   :math:`\ddot\theta = -\mu\dot\theta - \omega_0^2\theta`,
   :math:`\gamma = \mu/2` and :math:`\omega^2 = \omega_0^2 - \gamma^2`. The
   pendulum's frequency also falls with the amplitude :math:`A`,
   :math:`\omega(A) \approx \omega_0 (1 - A^2/16)`; the estimate divides by
   that factor at the data's RMS amplitude (:math:`\sqrt2` times the RMS
   angle about the offset).

The estimates are starting points for fitting, good to a few percent on
clean oscillations and always physically valid (:math:`\mu \ge 0`,
:math:`g/L > 0`); they are not the fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from neurode.data.errors import DatasetArgumentError

__all__ = [
    "PendulumEstimate",
    "damped_sinusoid_fit",
    "dominant_frequency",
    "estimate_pendulum_constants",
    "lomb_scargle",
]

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def lomb_scargle(t: np.ndarray, y: np.ndarray, angular_frequencies: np.ndarray) -> np.ndarray:
    r"""Generalised Lomb–Scargle power of one series at the given angular frequencies.

    At each :math:`\omega` the series is fitted by least squares with
    :math:`a\cos\omega t + b\sin\omega t + c`; the power is the fraction of the
    variance about the mean that the fit explains, in :math:`[0, 1]`
    (Zechmeister & Kürster 2009, equal weights). ``t`` may be irregular.
    """
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    w = np.asarray(angular_frequencies, dtype=float)
    y = y - y.mean()
    total = float(y @ y)
    if total == 0.0:
        return np.zeros_like(w)
    phase = np.outer(w, t)  # (F, T)
    cos, sin = np.cos(phase), np.sin(phase)
    n = t.size
    c_mean, s_mean = cos.mean(axis=1), sin.mean(axis=1)
    # Centred sums (the constant term of the fit).
    yc = cos @ y / n
    ys = sin @ y / n
    cc = (cos * cos).mean(axis=1) - c_mean**2
    ss = (sin * sin).mean(axis=1) - s_mean**2
    cs = (cos * sin).mean(axis=1) - c_mean * s_mean
    det = cc * ss - cs**2
    with np.errstate(divide="ignore", invalid="ignore"):
        power = (ss * yc**2 + cc * ys**2 - 2.0 * cs * yc * ys) / det * n / total
    return np.where(det > 1e-12 * np.maximum(cc * ss, 1e-300), power, 0.0)


def _checked(
    times: Sequence[np.ndarray], values: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    series = []
    for i, (t, y) in enumerate(zip(times, values, strict=True)):
        t = np.asarray(t, dtype=float).reshape(-1)
        y = np.asarray(y, dtype=float).reshape(-1)
        if t.size != y.size or t.size < 4:
            raise DatasetArgumentError(
                f"series {i}: need at least 4 points and as many values as times, "
                f"got {t.size} times and {y.size} values"
            )
        if not (np.all(np.isfinite(t)) and np.all(np.isfinite(y))):
            raise DatasetArgumentError(f"series {i} holds NaN or infinite values")
        if not np.all(np.diff(t) > 0):
            raise DatasetArgumentError(f"series {i}: times must be strictly increasing")
        series.append((t, y))
    if not series:
        raise DatasetArgumentError("need at least one series")
    return series


def _golden_minimum(f, low: float, high: float, tolerance: float) -> float:
    """The minimiser of a unimodal ``f`` on ``[low, high]`` to ``tolerance``."""
    a, b = low, high
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tolerance:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(d)
    return 0.5 * (a + b)


def _periodogram_peaks(
    series: list[tuple[np.ndarray, np.ndarray]], count: int
) -> tuple[list[float], float]:
    """The ``count`` highest local maxima of the summed periodogram, refined; and its resolution."""
    span = max(float(t[-1] - t[0]) for t, _ in series)
    step = float(np.median(np.concatenate([np.diff(t) for t, _ in series])))
    # Down to a quarter of an oscillation over the span: a window shorter than
    # one period still fixes the frequency through the curvature of the data.
    low, high = 0.25 * 2.0 * math.pi / span, math.pi / step
    if not high > low:
        raise DatasetArgumentError(
            "the series are too short for a frequency: fewer than two samples per oscillation "
            "over the whole span"
        )
    resolution = 2.0 * math.pi / span
    grid = np.arange(low, high, resolution / 10.0)

    def summed_power(w: np.ndarray) -> np.ndarray:
        return sum(lomb_scargle(t, y, w) for t, y in series)

    power = summed_power(grid)
    interior = np.flatnonzero((power[1:-1] >= power[:-2]) & (power[1:-1] >= power[2:])) + 1
    maxima = sorted([*interior.tolist(), int(np.argmax(power))], key=lambda k: -power[k])
    peaks: list[float] = []
    for best in dict.fromkeys(maxima):
        if len(peaks) == count:
            break
        lo = grid[max(best - 1, 0)]
        hi = grid[min(best + 1, grid.size - 1)]
        peaks.append(
            _golden_minimum(
                lambda w: -float(summed_power(np.array([w]))[0]), lo, hi, resolution * 1e-4
            )
        )
    return peaks, resolution


def dominant_frequency(times: Sequence[np.ndarray], values: Sequence[np.ndarray]) -> float:
    """Angular frequency (rad per unit of ``t``) of the highest summed Lomb–Scargle peak.

    The trial frequencies run from a quarter of an oscillation over the
    longest series to the Nyquist frequency of the median sampling step, ten
    per periodogram resolution element; the best is refined by golden-section
    search.
    """
    peaks, _ = _periodogram_peaks(_checked(times, values), 1)
    return peaks[0]


def _projection_residual(
    series: list[tuple[np.ndarray, np.ndarray]], decay: float, omega: float
) -> float:
    """Residual sum of squares of the best damped sinusoid with these rates (all series).

    With basis :math:`u = e^{-\\gamma s}\\cos\\omega s`, :math:`v = e^{-\\gamma s}\\sin\\omega s`
    the least-squares residual is :math:`y\\cdot y - b^\\top G^{-1} b` with the Gram
    matrix :math:`G` of :math:`(u, v)` and :math:`b = (u\\cdot y, v\\cdot y)`.
    """
    total = 0.0
    for t, y in series:
        s = t - t[0]
        envelope = np.exp(-decay * s)
        u, v = envelope * np.cos(omega * s), envelope * np.sin(omega * s)
        uu, vv, uv = u @ u, v @ v, u @ v
        uy, vy = u @ y, v @ y
        det = uu * vv - uv * uv
        explained = (vv * uy * uy + uu * vy * vy - 2.0 * uv * uy * vy) / det if det > 0 else 0.0
        total += float(y @ y - explained)
    return total


def _residual_of_decay(
    series: list[tuple[np.ndarray, np.ndarray]], omega: float, decay: float
) -> float:
    return _projection_residual(series, decay, omega)


def damped_sinusoid_fit(
    times: Sequence[np.ndarray], values: Sequence[np.ndarray], omega: float | None = None
) -> tuple[float, float]:
    r"""``(decay, omega)``: the shared :math:`\gamma \ge 0` and :math:`\omega` of the best fit.

    Trial frequencies: around ``omega`` (within 30%) if given; else a
    logarithmic grid over the periodogram's whole range together with the
    neighbourhoods of its three highest peaks (a strongly damped oscillation
    puts its periodogram peak at too low a frequency, so the peak alone is not
    trusted). For each, decay rates on a logarithmic grid from
    :math:`10^{-3}\omega` to :math:`2\omega` (and zero) are tried; the best
    pair is refined by alternating golden-section searches.
    """
    series = _checked(times, values)
    if omega is None:
        peaks, _ = _periodogram_peaks(series, 3)
        span = max(float(t[-1] - t[0]) for t, _ in series)
        step = float(np.median(np.concatenate([np.diff(t) for t, _ in series])))
        trials = np.geomspace(0.25 * 2.0 * math.pi / span, math.pi / step, 60)
        trials = np.concatenate([trials, *(p * np.linspace(0.8, 1.2, 9) for p in peaks)])
    else:
        if not (math.isfinite(omega) and omega > 0):
            raise DatasetArgumentError(f"omega must be positive, got {omega}")
        trials = omega * np.linspace(0.7, 1.3, 13)
    best = (math.inf, 0.0, 0.0)
    for w in trials:
        for g in np.concatenate([[0.0], w * np.logspace(-3, math.log10(2.0), 30)]):
            residual = _projection_residual(series, g, w)
            if residual < best[0]:
                best = (residual, g, w)
    _, decay, omega = best
    for _ in range(3):
        decay = _golden_minimum(
            partial(_residual_of_decay, series, omega),
            max(0.0, 0.7 * decay - 1e-3 * omega),
            1.3 * decay + 1e-3 * omega,
            1e-6 * omega,
        )
        omega = _golden_minimum(
            partial(_projection_residual, series, decay), 0.95 * omega, 1.05 * omega, 1e-7 * omega
        )
    return max(decay, 0.0), omega


@dataclass(frozen=True)
class PendulumEstimate:
    r"""Constants of a damped pendulum estimated from its angles.

    Attributes:
        g_over_l: :math:`g/L` (1/s²), corrected for the amplitude.
        mu: friction :math:`\mu = 2\gamma` (1/s).
        angular_frequency: the damped angular frequency :math:`\omega` of the data (rad/s).
        decay: the envelope's decay rate :math:`\gamma` (1/s).
        amplitude: the RMS amplitude used for the correction (rad).
    """

    g_over_l: float
    mu: float
    angular_frequency: float
    decay: float
    amplitude: float

    @property
    def time_scale(self) -> float:
        """:math:`1/\\omega_0`, the time in which the phase advances by one radian."""
        return 1.0 / math.sqrt(self.g_over_l)


def estimate_pendulum_constants(
    times: Sequence[np.ndarray], theta: Sequence[np.ndarray]
) -> PendulumEstimate:
    """Starting values of ``g/L`` and ``mu`` from angle series (module docstring)."""
    series = _checked(times, theta)
    decay, omega = damped_sinusoid_fit(times, theta)
    # RMS amplitude of an oscillation = sqrt(2) x RMS of the angle about its mean.
    squares = np.concatenate([(y - y.mean()) ** 2 for _, y in series])
    amplitude = float(math.sqrt(2.0 * squares.mean()))
    factor = max(1.0 - min(amplitude, 2.0) ** 2 / 16.0, 0.5)
    omega0_squared = (omega / factor) ** 2 + decay**2
    return PendulumEstimate(
        g_over_l=float(omega0_squared),
        mu=float(2.0 * decay),
        angular_frequency=float(omega),
        decay=float(decay),
        amplitude=amplitude,
    )
