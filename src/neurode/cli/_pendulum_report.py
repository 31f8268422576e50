"""What `neurode pendulum` reports: the experiment and fit records, errors on the
training, held-out and extrapolation windows, baselines, the summary table, figures
and metrics.json."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..train.loop import TrainResult
from ..train.trajectories import (
    Trajectories,
    TrajectoryModel,
    predict,
    squared_error,
)

MODELS = ("blackbox", "hybrid", "physics")
_DENSE_POINTS = 400


@dataclass
class _Experiment:
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


@dataclass
class _Fit:
    name: str
    model: TrajectoryModel
    results: list[TrainResult] = field(default_factory=list)
    seconds: float = 0.0

    def history(self) -> dict[str, list]:
        merged: dict[str, list] = {}
        for result in self.results:
            for key, values in result.history.state_dict().items():
                merged.setdefault(key, []).extend(values)
        return merged


def _mse(rollouts, data: Trajectories, **window) -> float | None:
    total, count = squared_error(rollouts, data, component=0, **window)
    return total / count if count else None


def _evaluate(fitted: _Fit, experiment: _Experiment) -> dict[str, Any]:
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
    history = fitted.history()
    metrics.update(
        epochs=len(history["loss"]),
        final_loss=history["loss"][-1],
        nfe_forward=int(sum(history["nfe_forward"])),
        nfe_backward=int(sum(history["nfe_backward"])),
        nfe_forward_last_epoch=int(history["nfe_forward"][-1]),
        seconds=round(fitted.seconds, 2),
        stopped_early=any(result.stopped_early for result in fitted.results),
    )
    return metrics


def _baselines(experiment: _Experiment) -> dict[str, dict[str, float | None]]:
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


def _truth_metrics(experiment: _Experiment) -> dict[str, Any] | None:
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


# ----------------------------------------------------------------------------- report
def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.{digits + 1}g}"
    return f"{value:.{digits - 1}e}"


def _summary_table(
    metrics: dict[str, dict[str, Any]],
    truth: dict[str, Any] | None,
    baselines: dict[str, dict[str, float | None]],
) -> str:
    header = (
        "model",
        "train MSE",
        "held-out MSE",
        "extrap. MSE",
        "mu",
        "g/L",
        "NFE fwd",
        "NFE bwd",
        "time s",
    )
    rows = []
    for name, m in metrics.items():
        rows.append(
            (
                name,
                _number(m["train_mse"]),
                _number(m["heldout_mse"]),
                _number(m["extrapolation_mse"]),
                _number(m["mu"], 4),
                _number(m["g_over_l"], 4),
                str(m["nfe_forward"]),
                str(m["nfe_backward"]),
                f"{m['seconds']:.1f}",
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
                "—",
                "—",
                "—",
            )
        )
    for name, label in (("last_value", "last value"), ("rest", "rest (theta=0)")):
        rows.append((label, "—", "—", _number(baselines[name]["extrapolation_mse"]), *("—",) * 5))
    widths = [max(len(row[k]) for row in (header, *rows)) for k in range(len(header))]
    line = lambda row: (
        "| "
        + " | ".join(
            cell.ljust(width) if k == 0 else cell.rjust(width)
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


def _write_plots(out: Path, fits: list[_Fit], experiment: _Experiment) -> list[Path]:
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
            theta_range=(-extent_theta, extent_theta),
            omega_range=(-extent_omega, extent_omega),
        )
    )
    paths.append(
        plot_training_history(
            out / "training.png", {fitted.name: fitted.history() for fitted in fits}
        )
    )
    return paths


# ----------------------------------------------------------------------------- files
def _write_json(path: Path, content: dict[str, Any]) -> None:
    """Write JSON atomically: a temporary file in the same directory, then ``os.replace``."""
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
