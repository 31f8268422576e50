"""benchmarks/mnist_iteration.py: a tiny run prints its table with the measured NFE."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import mnist_iteration  # noqa: E402


def test_a_tiny_run_prints_one_row_per_model(capsys, tmp_path):
    code = mnist_iteration.main(
        ["--models", "resnet", "odenet-direct-bosh3", "--repeats", "1", "--batch-size", "2",
         "--data-dir", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| model") and len(rows) == 3
    resnet, odenet = rows[1].split(" | "), rows[2].split(" | ")
    assert resnet[-1].strip(" |") == "0/0"
    forward, backward = map(int, odenet[-1].strip(" |").split("/"))
    assert forward >= 4 and backward == 0  # bosh3: at least one step of 3 new stages + start
