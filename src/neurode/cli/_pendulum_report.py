"""What `neurode pendulum` reports: the experiment and fit records, errors on the
training, held-out and extrapolation windows, baselines, the summary table, figures
and metrics.json."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..train.least_squares import interval_95, softplus
from ..train.trajectories import Trajectories, TrajectoryModel, predict, squared_error
from ._pendulum_training import MODELS, TrainedModel

_DENSE_POINTS = 400
# A model is flagged when its mean squared error exceeds this multiple of the
# noise variance: for n >= 50 observations the MSE of a correct model is
# sigma^2 (chi^2_n / n), whose spread sqrt(2/n) <= 0.2 keeps it below 2 sigma^2
# by more than five standard deviations.
_NOISE_MULTIPLE = 2.0


@dataclass
class Experiment:
    """Training and held-out trajectories, the split times, and what is known of the truth."""

    train: Trajectories
    heldout: Trajectories | None
    train_split: list[float]
    heldout_split: list[float]
    source: str
    true_mu: float | None = None
    true_g_over_l: float | None = None
    noise: float | None = None
    truth: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    clean_train: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def _mse(rollouts, data: Trajectories, **window) -> float | None:
    total, count = squared_error(rollouts, data, component=0, **window)
    return total / count if count else None


def _uncertainty(fitted: TrainedModel) -> dict[str, Any]:
    """Standard errors and 95% intervals of g/L and mu from the least-squares fit (physics)."""
    fit = fitted.least_squares
    empty = {"standard_errors": None, "intervals": None, "residual_noise_std": None}
    if fit is None:
        return empty
    empty["residual_noise_std"] = math.sqrt(fit.noise_variance)
    errors = fit.standard_errors()
    if errors is None:
        return empty
    dynamics = fitted.model.dynamics
    a, b = float(dynamics.log_g_over_l.detach()), float(dynamics.raw_mu.detach())
    se_a, se_b = float(errors[0]), float(errors[1])
    sigmoid = 1.0 / (1.0 + math.exp(-b))
    return {
        # Delta method: d(g/L)/da = g/L, d(mu)/db = sigmoid(b).
        "standard_errors": {"g_over_l": math.exp(a) * se_a, "mu": sigmoid * se_b},
        # The Laplace interval of the fitted parametrisation, mapped through its
        # monotone transform: it never leaves g/L > 0 and mu >= 0.
        "intervals": {
            "g_over_l": list(interval_95(a, se_a, math.exp)),
            "mu": list(interval_95(b, se_b, softplus)),
        },
        "residual_noise_std": math.sqrt(fit.noise_variance),
    }


def evaluate(fitted: TrainedModel, experiment: Experiment) -> dict[str, Any]:
    model = fitted.model
    rollouts, _ = predict(model, experiment.train)
    metrics: dict[str, Any] = {
        "train_mse": _mse(rollouts, experiment.train, end=experiment.train_split),
        "extrapolation_mse": _mse(rollouts, experiment.train, start=experiment.train_split),
        "heldout_mse": None,
        "heldout_extrapolation_mse": None,
    }
    if experiment.heldout is not None:
        heldout_rollouts, _ = predict(model, experiment.heldout, learned=False)
        metrics["heldout_mse"] = _mse(
            heldout_rollouts, experiment.heldout, end=experiment.heldout_split
        )
        metrics["heldout_extrapolation_mse"] = _mse(
            heldout_rollouts, experiment.heldout, start=experiment.heldout_split
        )
    dynamics = model.dynamics
    metrics["g_over_l"] = (
        float(dynamics.g_over_l.detach()) if hasattr(dynamics, "g_over_l") else None
    )
    if fitted.name == "physics":
        metrics["mu"] = float(dynamics.mu.detach())
    elif fitted.name == "hybrid":
        # The learned friction is read off where the model was trained: the
        # training-window states of its own rollouts (omega may be unobserved).
        states = torch.cat(
            [
                r[t < s]
                for r, t, s in zip(
                    rollouts, experiment.train.times, experiment.train_split, strict=True
                )
            ]
        )
        metrics["mu"] = float(dynamics.friction_coefficient(states))
    else:
        metrics["mu"] = None
    metrics.update(_uncertainty(fitted))
    history = fitted.history()
    metrics.update(
        epochs=len(history["loss"]),
        final_loss=history["loss"][-1],
        nfe_forward=int(sum(history["nfe_forward"])),
        nfe_backward=int(sum(history["nfe_backward"])),
        nfe_forward_last_epoch=int(history["nfe_forward"][-1]),
        seconds=round(fitted.seconds, 2),
        stopped_early=any(stage.stopped_early for stage in fitted.stages),
    )
    return metrics


def baselines(experiment: Experiment) -> dict[str, dict[str, float | None]]:
    """Extrapolation MSE of naive predictors of the angle beyond the training window."""
    data, splits = experiment.train, experiment.train_split
    last_value, rest = [], []
    for t, y, split in zip(data.times, data.values, splits, strict=True):
        theta = y[:, 0]
        before, after = theta[t < split], theta[t >= split]
        last_value.append((after - before[-1]).pow(2))
        rest.append(after.pow(2))
    mean = lambda errors: (
        float(torch.cat(errors).mean()) if sum(e.numel() for e in errors) else None
    )
    return {
        "last_value": {"extrapolation_mse": mean(last_value)},
        "rest": {"extrapolation_mse": mean(rest)},
    }


def truth_metrics(experiment: Experiment) -> dict[str, Any] | None:
    if experiment.clean_train is None:
        return None
    clean = [
        torch.stack([theta, torch.zeros_like(theta)], dim=-1) for _, theta in experiment.clean_train
    ]
    return {
        "train_mse": _mse(clean, experiment.train, end=experiment.train_split),
        "extrapolation_mse": _mse(clean, experiment.train, start=experiment.train_split),
        "mu": experiment.true_mu,
        "g_over_l": experiment.true_g_over_l,
    }


def noise_level(experiment: Experiment, metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    r"""The noise variance of the angles: known (simulated data) or estimated.

    Estimated from the residuals of the best model on the training window:
    the smallest training MSE, where the physics fit's residual variance
    :math:`\lVert r\rVert^2/(n - m)` counts the constants and initial states
    it fitted. (A model that does not fit leaves residuals above the noise,
    so the best one bounds the noise from above.)
    """
    if experiment.noise is not None:
        return {"variance": experiment.noise**2, "std": experiment.noise, "source": "known"}
    candidates = {}
    for name, m in metrics.items():
        value = m["train_mse"]
        if m.get("residual_noise_std") is not None and math.isfinite(m["residual_noise_std"]):
            value = m["residual_noise_std"] ** 2
        if value is not None:
            candidates[name] = value
    best = min(candidates, key=candidates.get)
    return {
        "variance": candidates[best],
        "std": math.sqrt(candidates[best]),
        "source": "residuals",
        "model": best,
    }


def poor_model_flags(
    m: dict[str, Any], reference: dict[str, dict[str, float | None]], noise: dict[str, Any]
) -> list[str]:
    """Why a model is poor, in words; empty when it is not.

    A model is poor when its training residuals are far above the noise
    (MSE over ``_NOISE_MULTIPLE`` times the noise variance), or when it
    extrapolates no better than predicting the rest position. Where the data
    beyond the training window are themselves at rest within the noise (the
    rest baseline's MSE is below that multiple of the noise variance), no
    model can beat the baseline except by chance, so the model is instead
    flagged if its extrapolation error rises above that multiple.
    """
    flags = []
    variance = noise["variance"]
    limit = _NOISE_MULTIPLE * variance
    if m["train_mse"] is not None and m["train_mse"] > limit:
        flags.append(
            f"training residuals {m['train_mse'] / variance:.1f}x the noise variance "
            f"({m['train_mse']:.3g} vs {variance:.3g}): it does not fit the data"
        )
    rest = reference["rest"]["extrapolation_mse"]
    extrapolation = m["extrapolation_mse"]
    if rest is None or extrapolation is None:
        return flags
    if rest > limit and extrapolation >= rest:
        flags.append(
            f"extrapolates no better than the rest position theta = 0 "
            f"(MSE {extrapolation:.3g} vs {rest:.3g})"
        )
    elif rest <= limit and extrapolation > limit:
        flags.append(
            f"extrapolation MSE {extrapolation:.3g} is {extrapolation / variance:.1f}x the noise "
            "variance where the data are at rest within the noise"
        )
    return flags


# ----------------------------------------------------------------------------- report
def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.{digits + 1}g}"
    return f"{value:.{digits - 1}e}"


def _with_interval(m: dict[str, Any], name: str) -> str:
    value = m[name]
    intervals = m.get("intervals")
    if value is None or not intervals:
        return _number(value, 4)
    low, high = intervals[name]
    return f"{_number(value, 4)} [{_number(low, 4)}, {_number(high, 4)}]"


def summary_table(
    metrics: dict[str, dict[str, Any]],
    truth: dict[str, Any] | None,
    reference: dict[str, dict[str, float | None]],
) -> str:
    """The printed comparison: errors, constants with 95% intervals, cost, and a verdict."""
    header = (
        "model",
        "train MSE",
        "held-out MSE",
        "extrap. MSE",
        "mu [95%]",
        "g/L [95%]",
        "NFE fwd",
        "NFE bwd",
        "time s",
        "verdict",
    )
    rows = []
    for name, m in metrics.items():
        rows.append(
            (
                name,
                _number(m["train_mse"]),
                _number(m["heldout_mse"]),
                _number(m["extrapolation_mse"]),
                _with_interval(m, "mu"),
                _with_interval(m, "g_over_l"),
                str(m["nfe_forward"]),
                str(m["nfe_backward"]),
                f"{m['seconds']:.1f}",
                "POOR (see warnings)" if m.get("flags") else "ok",
            )
        )
    if truth is not None:
        rows.append(
            (
                "truth",
                _number(truth["train_mse"]),
                "—",
                _number(truth["extrapolation_mse"]),
                _number(truth["mu"], 4),
                _number(truth["g_over_l"], 4),
                *("—",) * 4,
            )
        )
    for name, label in (("last_value", "last value"), ("rest", "rest (theta=0)")):
        rows.append((label, "—", "—", _number(reference[name]["extrapolation_mse"]), *("—",) * 6))
    widths = [max(len(row[k]) for row in (header, *rows)) for k in range(len(header))]
    line = lambda row: (
        "| "
        + " | ".join(
            cell.ljust(width) if k in (0, len(row) - 1) else cell.rjust(width)
            for k, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        + " |"
    )
    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])


# ----------------------------------------------------------------------------- plots
def _field_of(model: TrajectoryModel):
    def field(theta: np.ndarray, omega: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        states = torch.stack(
            [
                torch.as_tensor(theta, dtype=torch.float64),
                torch.as_tensor(omega, dtype=torch.float64),
            ],
            dim=-1,
        )
        with torch.no_grad():
            rates = model.dynamics(torch.zeros((), dtype=torch.float64), states.reshape(-1, 2))
        rates = rates.reshape(states.shape).numpy()
        return rates[..., 0], rates[..., 1]

    return field


def write_plots(out: Path, fits: list[TrainedModel], experiment: Experiment) -> list[Path]:
    from ..plot import plot_phase_portrait, plot_training_history, plot_trajectories

    train = experiment.train
    shown = min(4, len(train))
    observations = [(train.times[i], train.values[i][:, 0]) for i in range(shown)]
    predictions = {}
    # Without measured omega, the phase plane shows the rollouts of the most
    # constrained model: in a black box the second state need not be dtheta/dt.
    phase_model = max(fits, key=lambda fitted: MODELS.index(fitted.name))
    phase_states = []
    for fitted in fits:
        curves = []
        y0 = fitted.model.initial_state(train, range(shown))
        with torch.no_grad():
            for i in range(shown):
                t = train.times[i]
                dense = torch.linspace(float(t[0]), float(t[-1]), _DENSE_POINTS, dtype=t.dtype)
                ys = fitted.model(y0[i : i + 1], dense)[:, 0]
                curves.append((dense, ys[:, 0]))
                if fitted is phase_model:
                    phase_states.append(ys)
        predictions[fitted.name] = curves
    if train.fully_observed:
        phase_states = list(train.values[:shown])
    paths = [
        plot_trajectories(
            out / "trajectories.png",
            observations,
            predictions,
            t_split=experiment.train_split[0] if len(set(experiment.train_split)) == 1 else None,
            truth=experiment.clean_train[:shown] if experiment.clean_train else None,
        )
    ]
    extent_theta = max(float(s[:, 0].abs().max()) for s in phase_states) * 1.15
    extent_omega = max(float(s[:, 1].abs().max()) for s in phase_states) * 1.15
    paths.append(
        plot_phase_portrait(
            out / "phase_portrait.png",
            {fitted.name: _field_of(fitted.model) for fitted in fits},
            reference=experiment.truth,
            trajectories=phase_states,
            trajectory_label="observed trajectories"
            if train.fully_observed
            else f"{phase_model.name} model's rollouts of the first {shown} trajectories",
            theta_range=(-extent_theta, extent_theta),
            omega_range=(-extent_omega, extent_omega),
        )
    )
    paths.append(
        plot_training_history(
            out / "training.png",
            {fitted.name: fitted.history() for fitted in fits},
            stages={fitted.name: fitted.stage_boundaries() for fitted in fits},
        )
    )
    return paths
