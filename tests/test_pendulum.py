"""Learning the damped pendulum: black-box and second-order fits, and `neurode pendulum`."""

from __future__ import annotations

import errno
import json
import os
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


@pytest.mark.slow
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


@pytest.mark.slow
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
        (["--resume"], "no run to resume"),
        (["--mu", "-0.1"], "--mu"),
        (["--g-over-l", "0"], "--g-over-l"),
        (["--g-over-l", "200"], "shorter than 4 samples"),
        (["--resume", "--overwrite"], "cannot be combined"),
    ],
)
def test_bad_options_exit_2_with_a_one_line_message(argv, message, tmp_path, capsys):
    code, _, err = _run([*argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("option", ["--noise", "--mu", "--g-over-l", "--n-trajectories"])
def test_simulation_options_are_refused_with_user_data(option, tmp_path, capsys):
    path = _write(tmp_path / "ok.csv", "t,theta\n0,1\n0.1,0.9\n0.2,0.8\n0.3,0.7\n")
    code, _, err = _run(["--data", str(path), option, "1"], capsys)
    assert code == 2 and option in err


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


@pytest.mark.slow
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
    assert metrics["models"]["blackbox"]["epochs"] == 4
    # The hybrid's Adam epochs lie between two Gauss-Newton fits; each begins a marked stage.
    stages = [name for name, _ in metrics["stages"]["hybrid"]]
    assert stages == ["whole", "Gauss-Newton"]
    for name, model in metrics["models"].items():
        assert model["nfe_forward"] == sum(metrics["history"][name]["nfe_forward"]) > 0
        assert isinstance(model["flags"], list)
        assert model["train_mse"] > 0 and model["extrapolation_mse"] > 0
    physics = metrics["models"]["physics"]
    low, high = physics["intervals"]["g_over_l"]
    assert low < physics["g_over_l"] < high and physics["standard_errors"]["mu"] > 0
    assert metrics["noise"] == {"variance": pytest.approx(0.02**2), "std": 0.02, "source": "known"}
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


@pytest.mark.slow
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


# ----------------------------------------------------------------------------- other pendulums


@pytest.mark.slow
def test_simulated_pendulum_of_other_constants_is_recovered_with_intervals(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--mu", "0.4", "--g-over-l", "12", "--n-trajectories", "4", "--noise", "0.01"]
    argv += ["--models", "physics", "--quiet", "--no-plots", "--out", str(out)]
    code, printed, _ = _run(argv, capsys)
    assert code == 0 and "mu = 0.4, g/L = 12" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["truth"]["mu"] == 0.4 and metrics["truth"]["g_over_l"] == 12.0
    physics = metrics["models"]["physics"]
    assert physics["mu"] == pytest.approx(0.4, rel=0.05)
    assert physics["g_over_l"] == pytest.approx(12.0, rel=0.05)
    for name in ("mu", "g_over_l"):
        low, high = physics["intervals"][name]
        assert low < metrics["truth"][name] < high, name
    assert physics["flags"] == []


# ----------------------------------------------------------------------------- never lose work


def _short_run(out: Path, *extra: str) -> list[str]:
    return ["--epochs", "4", "--n-trajectories", "2", "--models", "blackbox", "--quiet",
            "--out", str(out), *extra]  # fmt: skip


def test_a_plain_rerun_onto_an_existing_run_is_refused_and_leaves_it_intact(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(_short_run(out, "--no-plots"), capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = _run(_short_run(out, "--no-plots", "--seed", "1"), capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--resume" in err and "another --out" in err
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    code, _, _ = _run(_short_run(out, "--no-plots", "--seed", "1", "--overwrite"), capsys)
    assert code == 0
    assert json.loads((out / "run.json").read_text())["settings"]["seed"] == 1


def test_a_second_process_cannot_write_into_a_folder_in_use(tmp_path, capsys):
    from neurode.train.run_folder import RunFolder

    out = tmp_path / "run"
    with RunFolder(out, "pendulum", {}):
        code, _, err = _run(_short_run(out, "--no-plots", "--overwrite"), capsys)
    assert code == 2 and "in use by another neurode process" in err and err.count("\n") == 1
    assert json.loads((out / "run.json").read_text())["settings"] == {}  # untouched


def test_a_flipped_bit_in_a_checkpoint_is_refused_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(_short_run(out, "--no-plots"), capsys)[0] == 0
    checkpoint = out / "checkpoints" / "blackbox-whole.pt"
    content = bytearray(checkpoint.read_bytes())
    content[len(content) // 3] ^= 0x10
    checkpoint.write_bytes(bytes(content))
    code, _, err = _run(_short_run(out, "--no-plots", "--resume"), capsys)
    assert code == 2 and "SHA-256" in err and err.count("\n") == 1
    record = json.loads((out / "run.json").read_text())
    assert set(record["checkpoints"]) == {
        "checkpoints/blackbox-segments.pt",
        "checkpoints/blackbox-whole.pt",
    }


@pytest.mark.parametrize("content", ["{truncated", "null"])
def test_a_corrupt_run_json_is_a_one_line_error(tmp_path, capsys, content):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "run.json").write_text(content)
    (out / "checkpoints" / "run.json").write_text(content)  # where 0.1.0 kept it
    for extra in (["--resume"], []):
        code, _, err = _run(_short_run(out, "--no-plots", *extra), capsys)
        assert code == 2 and err.count("\n") == 1 and "run.json" in err, extra


def _write_some(target, content: bytes) -> None:
    """What a write cut short leaves: the first bytes, into a file handle or a named file."""
    if isinstance(target, str | os.PathLike):
        with open(target, "wb") as handle:
            handle.write(content)
    else:
        target.write(content)


def test_a_full_disk_while_drawing_keeps_the_metrics_and_leaves_no_empty_figure(
    tmp_path, capsys, monkeypatch
):
    from matplotlib.figure import Figure

    out = tmp_path / "run"

    def disk_fills(self, target, **kwargs):
        _write_some(target, b"\x89PNG\r\n")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_fills)
    code, _, err = _run(_short_run(out), capsys)
    assert code == 2 and err.count("\n") == 1 and "No space left" in err
    assert "trajectories.png" in err
    assert json.loads((out / "metrics.json").read_text())["models"]["blackbox"]["train_mse"] > 0
    assert not list(out.glob("*.png")) and not list(out.glob(".*.tmp"))


def test_a_full_disk_while_writing_metrics_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_replace = os.replace

    def no_space(source, destination):
        if str(destination).endswith("metrics.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", no_space)
    code, _, err = _run(_short_run(out, "--no-plots"), capsys)
    assert code == 2 and err.count("\n") == 1 and "metrics.json" in err and "space" in err
    assert "Traceback" not in err


def test_a_read_only_output_folder_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(out)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    code, _, err = _run(_short_run(out, "--no-plots"), capsys)
    assert code == 2 and err.count("\n") == 1 and "read-only" in err.lower()


def test_a_killed_run_leaves_no_partial_files(tmp_path, capsys, monkeypatch):
    """A kill (here, Ctrl-C) while a figure is drawn leaves the metrics and no 0-byte PNG."""
    from matplotlib.figure import Figure

    out = tmp_path / "run"
    real_savefig = Figure.savefig
    calls = {"n": 0}

    def killed_during_second(self, target, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            _write_some(target, b"\x89PNG")
            raise KeyboardInterrupt
        return real_savefig(self, target, **kwargs)

    monkeypatch.setattr(Figure, "savefig", killed_during_second)
    code, _, _ = _run(_short_run(out), capsys)
    assert code == 130
    assert [p.name for p in out.glob("*.png")] == ["trajectories.png"]
    assert (out / "trajectories.png").stat().st_size > 1000
    assert json.loads((out / "metrics.json").read_text())
    assert not list(out.glob(".*.tmp"))


# ----------------------------------------------------------------------------- poor models


def test_poor_model_flags_compare_with_the_noise_and_the_rest_baseline():
    from neurode.cli._pendulum_report import poor_model_flags

    noise = {"variance": 1e-4}
    rest = {"rest": {"extrapolation_mse": 0.03}}
    good = {"train_mse": 1.1e-4, "extrapolation_mse": 2e-4}
    assert poor_model_flags(good, rest, noise) == []
    misfit = {"train_mse": 5e-4, "extrapolation_mse": 2e-4}
    assert "5.0x the noise variance" in poor_model_flags(misfit, rest, noise)[0]
    drifting = {"train_mse": 1e-4, "extrapolation_mse": 0.05}
    assert "no better than the rest position" in poor_model_flags(drifting, rest, noise)[0]
    # Beyond the training window the data are at rest within the noise: no
    # model can beat the baseline there, so only an error above the noise counts.
    quiet = {"rest": {"extrapolation_mse": 1.05e-4}}
    assert poor_model_flags({"train_mse": 1e-4, "extrapolation_mse": 1.2e-4}, quiet, noise) == []
    moving = poor_model_flags({"train_mse": 1e-4, "extrapolation_mse": 9e-4}, quiet, noise)
    assert "at rest within the noise" in moving[0]


def test_an_undertrained_black_box_is_flagged_in_the_table_and_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--models", "blackbox", "--epochs", "2", "--n-trajectories", "2", "--quiet"]
    code, printed, _ = _run([*argv, "--no-plots", "--out", str(out)], capsys)
    assert code == 0
    assert "POOR" in printed and "warning: blackbox:" in printed
    flags = json.loads((out / "metrics.json").read_text())["models"]["blackbox"]["flags"]
    assert any("noise variance" in flag for flag in flags)
