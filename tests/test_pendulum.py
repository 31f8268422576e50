"""Learning the damped pendulum: black-box and second-order fits, and `neurode pendulum`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from neurode.cli import main
from neurode.data import make_pendulum_dataset, save_pendulum_csv
from neurode.nn import MLPDynamics, SecondOrder
from neurode.train import (
    TrainConfig,
    Trajectories,
    TrajectoryModel,
    TrajectoryObjective,
    fit,
    predict,
    squared_error,
)
from neurode.train import loop as loop_module

NOISE = 0.015  # 1% of the largest initial angle, 1.5 rad


def _pendulum_data():
    """8 noisy trajectories over 20 s; the first 10 s train, the last 10 s test extrapolation."""
    dataset = make_pendulum_dataset(8, t_end=20.0, n_points=100, noise_std=NOISE, seed=3)
    return Trajectories.from_tensors(dataset.times, dataset.noisy), dataset.t_split


def _fit_on_segments(dynamics: nn.Module, data: Trajectories, t_split: float) -> TrajectoryModel:
    train = data.window(end=t_split)
    model = TrajectoryModel(dynamics, train, rtol=1e-5, atol=1e-6)
    objective = TrajectoryObjective(
        model, train, segment_points=12, segments_per_step=4, autonomous=True
    )
    fit(model, objective, len(train), TrainConfig(epochs=150, lr=0.01, lr_final=0.001))
    return model


def _angle_mse(model: TrajectoryModel, data: Trajectories, **window) -> float:
    rollouts, _ = predict(model, data)
    total, count = squared_error(rollouts, data, component=0, **window)
    return total / count


def _extrapolation_baselines(data: Trajectories, t_split: float) -> tuple[float, float]:
    """MSE beyond t_split of holding the last training angle, and of predicting rest (theta = 0)."""
    last_value, rest = [], []
    for t, y in zip(data.times, data.values, strict=True):
        theta = y[:, 0]
        last_value.append((theta[t >= t_split] - theta[t < t_split][-1]) ** 2)
        rest.append(theta[t >= t_split] ** 2)
    return float(torch.cat(last_value).mean()), float(torch.cat(rest).mean())


def test_black_box_extrapolates_beyond_the_training_window():
    """Bound: a tenth of the mean squared angle in the window (90% of the signal explained).

    Predicting rest (theta = 0) scores exactly that mean square, so the bound
    demands a model that follows the oscillation, not just its decay; the
    noise floor (1.5e-2)^2 = 2.3e-4 is far below it.
    """
    data, t_split = _pendulum_data()
    torch.manual_seed(0)
    model = _fit_on_segments(MLPDynamics(2, hidden=64, depth=2).double(), data, t_split)
    extrapolation = _angle_mse(model, data, start=t_split)
    last_value, rest = _extrapolation_baselines(data, t_split)
    assert extrapolation < 0.1 * rest
    assert extrapolation < last_value / 10


class _Acceleration(nn.Module):
    """a(x, v) by a small MLP: the learned part of a second-order model."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 1)).double()

    def forward(self, t, x, v):
        return self.net(torch.cat([x, v], dim=-1))


def test_second_order_model_fits_and_extrapolates_the_pendulum():
    data, t_split = _pendulum_data()
    torch.manual_seed(0)
    model = _fit_on_segments(SecondOrder(_Acceleration()), data, t_split)
    _, rest = _extrapolation_baselines(data, t_split)
    assert _angle_mse(model, data, end=t_split) < 10 * NOISE**2  # rms error ~3 noise sd
    assert _angle_mse(model, data, start=t_split) < 0.1 * rest


# ----------------------------------------------------------------------------- the command


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(["pendulum", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


BAD_FILES = {
    "wrong_columns": "time,angle\n0,1\n1,2\n2,3\n",
    "non_numeric": "t,theta\n0,1.0\n0.1,abc\n0.2,0.9\n",
    "non_increasing": "t,theta\n0,1.0\n0.2,0.9\n0.1,0.8\n",
    "nan": "t,theta\n0,1.0\n0.1,nan\n0.2,0.8\n",
    "empty": "",
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_csv_files_exit_2_with_a_one_line_message(case, tmp_path, capsys):
    path = _write(tmp_path / f"{case}.csv", BAD_FILES[case])
    code, out, err = _run(["--data", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert err.startswith("neurode pendulum: error:") and err.count("\n") == 1
    assert "Traceback" not in err and out == ""


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "missing.csv"], "no such file"),
        (["--epochs", "0"], "--epochs"),
        (["--lr", "-1"], "--lr"),
        (["--noise", "-0.1"], "--noise"),
        (["--n-trajectories", "0"], "--n-trajectories"),
        (["--train-fraction", "1.5"], "--train-fraction"),
        (["--method", "nope"], "--method"),
        (["--gradient", "nope"], "--gradient"),
        (["--models", "blackbox,nope"], "--models"),
        (["--rtol", "0"], "--rtol"),
        (["--resume"], "no checkpoints"),
    ],
)
def test_bad_options_exit_2_with_a_one_line_message(argv, message, tmp_path, capsys):
    code, _, err = _run([*argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_simulation_options_are_refused_with_user_data(tmp_path, capsys):
    path = _write(tmp_path / "ok.csv", "t,theta\n0,1\n0.1,0.9\n0.2,0.8\n0.3,0.7\n")
    code, _, err = _run(["--data", str(path), "--noise", "0.1"], capsys)
    assert code == 2 and "--noise" in err


def test_bad_input_in_a_real_process_prints_no_traceback(tmp_path):
    path = _write(tmp_path / "bad.csv", BAD_FILES["non_increasing"])
    process = subprocess.run(
        [sys.executable, "-m", "neurode", "pendulum", "--data", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert process.returncode == 2
    assert process.stderr.count("\n") == 1 and "strictly increase" in process.stderr


def test_short_run_writes_metrics_and_figures(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--epochs", "4", "--n-trajectories", "2", "--quiet", "--out", str(out)]
    code, printed, _ = _run(argv, capsys)
    assert code == 0
    for row in ("| model", "| blackbox", "| hybrid", "| physics", "| truth", "| last value"):
        assert row in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"blackbox", "hybrid", "physics"}
    assert metrics["truth"]["mu"] == 0.15 and metrics["truth"]["g_over_l"] == 4.0
    for name, model in metrics["models"].items():
        assert model["epochs"] == 4, name
        assert model["nfe_forward"] == sum(metrics["history"][name]["nfe_forward"]) > 0
        assert model["train_mse"] > 0 and model["extrapolation_mse"] > 0
    assert metrics["models"]["blackbox"]["mu"] is None
    assert metrics["models"]["physics"]["g_over_l"] > 0
    # The truth row's error is the noise variance, 0.02^2 by default, up to sampling.
    assert metrics["truth"]["train_mse"] == pytest.approx(0.02**2, rel=0.3)
    for figure in ("trajectories.png", "phase_portrait.png", "training.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure


def test_run_on_angle_only_csv_learns_initial_velocities(tmp_path, capsys):
    dataset = make_pendulum_dataset(4, t_end=10.0, n_points=40, noise_std=0.01, seed=2)
    path = tmp_path / "angles.csv"
    save_pendulum_csv(path, dataset.times, dataset.noisy[..., 0])
    out = tmp_path / "csv"
    argv = ["--data", str(path), "--epochs", "3", "--models", "physics", "--quiet", "--no-plots"]
    code, printed, _ = _run([*argv, "--out", str(out)], capsys)
    assert code == 0 and "theta only" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["truth"] is None
    assert metrics["models"]["physics"]["heldout_mse"] is not None  # 4 trajectories: 1 held out
    assert not list(out.glob("*.png"))


def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(
    tmp_path, capsys, monkeypatch
):
    common = ["--epochs", "6", "--n-trajectories", "2", "--models", "hybrid", "--quiet"]
    common += ["--no-plots"]
    assert _run([*common, "--out", str(tmp_path / "a")], capsys)[0] == 0

    real_epoch = loop_module._run_epoch
    calls = {"n": 0}

    def interrupted_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(loop_module, "_run_epoch", interrupted_epoch)
    assert _run([*common, "--out", str(tmp_path / "b")], capsys)[0] == 130
    monkeypatch.undo()
    assert _run([*common, "--out", str(tmp_path / "b"), "--resume"], capsys)[0] == 0

    first = json.loads((tmp_path / "a" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "b" / "metrics.json").read_text())
    for metrics in (first, resumed):
        metrics["models"]["hybrid"].pop("seconds")
    assert resumed["models"] == first["models"]
    assert resumed["history"] == first["history"]

    code, _, err = _run([*common, "--out", str(tmp_path / "b"), "--resume", "--seed", "1"], capsys)
    assert code == 2 and "other settings" in err
