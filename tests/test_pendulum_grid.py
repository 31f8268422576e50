"""`neurode pendulum` on simulated lab data of many pendulums (benchmarks/pendulum_grid.py).

The data come from scipy's ``solve_ivp`` (DOP853, rtol 1e-11), independent of
neurode's solvers, written as the CSV a user brings. Bounds at noise 0.01 rad:
the physics fit within 5% of the true mu and g/L with intervals that contain
them, the hybrid within 10%, the black box extrapolating better than the rest
position. Four cases of the grid are a slow test (all twelve with
NEURODE_FULL_GRID=1); two physics fits run by default.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pendulum_grid  # noqa: E402

CASES = {case.name: case for case in pendulum_grid.GRID}


def _check_physics(result: dict) -> None:
    case, physics = result["case"], result["models"]["physics"]
    for name in ("mu", "g_over_l"):
        assert physics[name] == pytest.approx(case[name], rel=0.05), (case["name"], name)
        low, high = physics["intervals"][name]
        assert low <= case[name] <= high, (case["name"], name, low, high)
    assert physics["flags"] == [], physics["flags"]


def _check_hybrid(result: dict) -> None:
    case, hybrid = result["case"], result["models"]["hybrid"]
    for name in ("mu", "g_over_l"):
        assert hybrid[name] == pytest.approx(case[name], rel=0.10), (case["name"], name)


# Irregularly sampled windows of 10-15 s where the black box's multiple shooting
# stalls at 100-500x the noise variance (README, "Many pendulums"); there it must
# at least be flagged as poor.
BLACK_BOX_FAILURES = {"fast-heavy-long", "slow-mid-mid"}


def _check_blackbox(result: dict) -> None:
    name = result["case"]["name"]
    rest = result["baselines"]["rest"]["extrapolation_mse"]
    blackbox = result["models"]["blackbox"]
    if name in BLACK_BOX_FAILURES:
        assert blackbox["flags"], name
    else:
        assert blackbox["extrapolation_mse"] < rest, name


@pytest.mark.parametrize("name", ["issue-9-0.2", "slow-light-short"])
def test_physics_fit_recovers_the_constants_of_representative_pendulums(name, tmp_path):
    result = pendulum_grid.run_case(CASES[name], tmp_path, ["--models", "physics", "--no-plots"])
    _check_physics(result)


@pytest.mark.slow
def test_all_three_models_on_the_shortest_slowest_pendulum(tmp_path):
    """Less than one oscillation in the training window; every model must still do its job."""
    result = pendulum_grid.run_case(CASES["slow-light-short"], tmp_path, ["--no-plots"])
    _check_physics(result)
    _check_hybrid(result)
    _check_blackbox(result)


# The whole grid takes about an hour on two busy cores. The slow run (CI) takes four
# cases, the short windows of every kind and the pendulum; NEURODE_FULL_GRID=1
# takes all twelve, as benchmarks/pendulum_grid.py does to write the README's table.
SLOW_RUN_CASES = ["issue-9-0.2", "fast-light-short", "fast-heavy-short", "mid-heavy-short"]
GRID_CASES = sorted(CASES) if os.environ.get("NEURODE_FULL_GRID") else SLOW_RUN_CASES


@pytest.mark.slow
@pytest.mark.parametrize("name", GRID_CASES)
def test_the_whole_grid(name, tmp_path):
    result = pendulum_grid.run_case(CASES[name], tmp_path, ["--no-plots"])
    _check_physics(result)
    _check_hybrid(result)
    _check_blackbox(result)


def test_the_generator_is_scipy_and_reproducible(tmp_path):
    case = CASES["mid-mid-mid"]
    first = pendulum_grid.write_csv(case, tmp_path / "a.csv").read_text()
    assert first == pendulum_grid.write_csv(case, tmp_path / "b.csv").read_text()
    times, clean, noisy = pendulum_grid.simulate(case)
    assert len(times) == case.n_trajectories and all(t[0] == 0 for t in times)
    residual = [n - c for n, c in zip(noisy, clean, strict=True)]
    spread = sum(float((r**2).sum()) for r in residual) / sum(r.size for r in residual)
    assert spread**0.5 == pytest.approx(case.noise, rel=0.1)
