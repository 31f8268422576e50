"""`neurode latent` and `neurode cnf`: interrupted runs resume to the uninterrupted result."""

from __future__ import annotations

import json

import pytest
import torch

from neurode.cli import main

CNF = ["cnf", "--dataset", "moons", "--epochs", "3", "--train-size", "128", "--test-size", "64"]
CNF += ["--batch-size", "64", "--hidden", "8", "8", "--tol", "1e-3", "--grid", "10", "--quiet"]
LATENT = ["latent", "--dataset", "pendulum", "--epochs", "3", "--train-size", "8"]
LATENT += ["--test-size", "4", "--batch-size", "4", "--n-obs", "10", "--hidden", "6"]
LATENT += ["--width", "6", "--quiet"]


def _interrupt_after(monkeypatch, calls: int) -> None:
    """Ctrl-C at the given call of Adam's step."""
    real_step = torch.optim.Adam.step
    count = {"n": 0}

    def step(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)


@pytest.mark.parametrize(
    "argv, drop",
    [(CNF, ("train_seconds", "arguments")), (LATENT, ("arguments",))],
    ids=["cnf", "latent"],
)
@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(argv, drop, tmp_path, monkeypatch):
    assert main([*argv, "--out", str(tmp_path / "straight")]) == 0
    _interrupt_after(monkeypatch, 4)
    assert main([*argv, "--out", str(tmp_path / "resumed")]) == 130
    monkeypatch.undo()
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    assert main([*argv, "--out", str(tmp_path / "resumed")]) == 2  # a plain rerun is refused
    assert main([*argv, "--out", str(tmp_path / "resumed"), "--resume"]) == 0

    def metrics(folder: str) -> dict:
        content = json.loads((tmp_path / folder / "metrics.json").read_text())
        for key in drop:
            content.pop(key)
        for row in content.get("results", []):
            row.pop("train_seconds")
        return content

    assert metrics("resumed") == metrics("straight")


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    assert main([*CNF, "--out", str(tmp_path)]) == 0
    assert main([*CNF, "--out", str(tmp_path), "--resume", "--lr", "0.1"]) == 2
    assert "other settings" in capsys.readouterr().err
