"""benchmarks/stiff.py: its NumPy fields for scipy, its interpolation, and a tiny run."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("scipy")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import stiff  # noqa: E402


@pytest.mark.parametrize("name", ["robertson", "van_der_pol", "hires"])
def test_scipy_gets_the_same_field_and_jacobian_in_numpy(name):
    case = stiff.make_cases()[name]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        y = case.problem.y0 + 0.1 * torch.rand(case.problem.y0.shape, generator=generator)
        y = y.to(torch.float64)
        np.testing.assert_allclose(
            case.numpy_field(0.0, y.numpy()), case.problem.func(0.0, y).numpy(), rtol=1e-13
        )
        np.testing.assert_allclose(
            case.numpy_jacobian(0.0, y.numpy()),
            case.problem.jacobian(0.0, y).numpy(),
            rtol=1e-13,
        )


def test_interpolation_at_equal_accuracy():
    points = [(1e-4, 100.0), (1e-6, 400.0), (1e-8, 1600.0)]
    assert stiff.at_accuracy(points, 1e-5) == pytest.approx(200.0)
    assert stiff.at_accuracy(points, 1e-6) == pytest.approx(400.0)
    assert stiff.at_accuracy(points, 1e-9) is None  # no extrapolation
    assert stiff.at_accuracy(points, 1e-3) is None


def test_a_tiny_run_writes_every_table(tmp_path):
    out = tmp_path / "stiff.md"
    args = [
        "--problems", "hires",
        "--rtols", "1e-4", "1e-5",
        "--methods", "Radau", "LSODA", "rodas5p",
        "--repeats", "1",
        "--sweep-rows", "4",
        "--sweep-scipy-rows", "2",
        "--sweep-check-rows", "1",
        "--sweep-modes", "per_sample", "joint",
        "--sweep-methods", "rodas5p",
        "--sweep-scipy", "LSODA",
        "--out", str(out),
    ]  # fmt: skip
    assert stiff.main(args) == 0
    report = out.read_text()
    for heading in ("## Targets", "## Sweep: Robertson, 4 rate sets", "## Target checks"):
        assert heading in report
    rows = [line for line in report.splitlines() if line.startswith("| hires |")]
    # Results at two rtols: two scipy solvers with NumPy and with torch functions, and
    # rodas5p; then two target rows.
    assert len(rows) == 2 * 5 + 2
    assert sum("(torch f) |" in line for line in rows) == 4
    # Every solve lands within a modest multiple of its tolerance (relative error, floor s).
    for line in rows[:10]:
        error = float(line.split("|")[9])
        assert error < 1e-3, line
    assert "rodas5p | per_sample" in report and "rodas5p | joint" in report
    assert "all given the torch f" in report and "Floor of the comparison" in report
