r"""The pendulum test grid: simulated lab data of many pendulums, fitted by `neurode pendulum`.

Each case is a damped pendulum :math:`\ddot\theta = -\mu\dot\theta - (g/L)\sin\theta`
with its own constants, span, sampling, number of trajectories and noise,
simulated by scipy's ``solve_ivp`` (DOP853 at ``rtol=1e-11``, ``atol=1e-12``):
an implementation independent of neurode's solvers. The angles are written as
the CSV file a user would bring (``trajectory,t,theta``) and fitted by the
command exactly as a user runs it (``neurode pendulum --data FILE.csv``).

Initial conditions per trajectory: :math:`|\theta_0|` uniform in [0.6, 1.4]
rad with a random sign and :math:`\omega_0` uniform in
:math:`\pm 0.5\sqrt{g/L}`, always below the separatrix. Regular sampling is
``round(rate * span)`` points on ``[0, span]``; irregular sampling draws as
many sorted uniform times in ``[0, span]`` per trajectory (and keeps ``t = 0``).

Usage::

    python benchmarks/pendulum_grid.py                  # the whole grid, ~15 min on 2 cores
    python benchmarks/pendulum_grid.py --cases slow-light-short fast-heavy-long
    python benchmarks/pendulum_grid.py --out runs/grid --markdown grid.md

Writes one folder per case under ``--out`` (the CSV and the command's outputs) and
prints the Markdown table of the README (``--markdown`` also saves it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Case:
    """One simulated experiment of the grid."""

    name: str
    g_over_l: float
    mu: float
    span: float
    n_trajectories: int
    irregular: bool
    noise: float = 0.01
    rate: float = 10.0  # observations per second
    seed: int = 0

    @property
    def n_points(self) -> int:
        return int(round(self.rate * self.span)) + 1


# Corners and middle of the range: g/L 1..16, mu 0.05..0.5, spans 8..30 s,
# regular and irregular sampling, 3..8 trajectories, at noise 0.01 rad.
GRID = (
    Case("issue-9-0.2", 9.0, 0.2, 20.0, 4, False),
    Case("slow-light-short", 1.0, 0.05, 8.0, 3, False),
    Case("slow-light-long", 1.0, 0.05, 30.0, 5, True),
    Case("slow-heavy-mid", 1.0, 0.5, 15.0, 6, False),
    Case("fast-light-short", 16.0, 0.05, 8.0, 4, True),
    Case("fast-heavy-short", 16.0, 0.5, 8.0, 8, False),
    Case("fast-heavy-long", 16.0, 0.5, 30.0, 3, True),
    Case("mid-mid-mid", 4.0, 0.2, 15.0, 5, True),
    Case("mid-light-long", 4.0, 0.05, 30.0, 3, False),
    Case("mid-heavy-short", 9.0, 0.5, 8.0, 5, True),
    Case("brisk-mid-long", 9.0, 0.1, 30.0, 8, True),
    Case("slow-mid-mid", 2.0, 0.2, 20.0, 4, True),
)


def simulate(case: Case) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Times, clean angles and noisy angles of every trajectory of ``case`` (scipy)."""
    from scipy.integrate import solve_ivp

    rng = np.random.default_rng(case.seed + 7_919 * _name_number(case))
    times, clean, noisy = [], [], []
    for _ in range(case.n_trajectories):
        theta0 = rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.4)
        omega0 = rng.uniform(-0.5, 0.5) * math.sqrt(case.g_over_l)
        if case.irregular:
            t = np.concatenate([[0.0], np.sort(rng.uniform(0.0, case.span, case.n_points - 1))])
        else:
            t = np.linspace(0.0, case.span, case.n_points)
        solution = solve_ivp(
            lambda _t, y: [y[1], -case.mu * y[1] - case.g_over_l * math.sin(y[0])],
            (0.0, case.span),
            [theta0, omega0],
            method="DOP853",
            t_eval=t,
            rtol=1e-11,
            atol=1e-12,
        )
        if not solution.success:
            raise RuntimeError(f"{case.name}: scipy failed: {solution.message}")
        theta = solution.y[0]
        times.append(t)
        clean.append(theta)
        noisy.append(theta + case.noise * rng.standard_normal(theta.shape))
    return times, clean, noisy


def _name_number(case: Case) -> int:
    """A stable number from a case's name, so each case has its own data (hash() is salted)."""
    return sum((k + 1) * ord(c) for k, c in enumerate(case.name)) % 10_007


def write_csv(case: Case, path: Path) -> Path:
    """The noisy angles of ``case`` as a user's CSV file (``trajectory,t,theta``)."""
    times, _, noisy = simulate(case)
    lines = ["trajectory,t,theta"]
    for trajectory, (t, theta) in enumerate(zip(times, noisy, strict=True)):
        lines += [f"{trajectory},{ti!r},{yi!r}" for ti, yi in zip(t.tolist(), theta.tolist())]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_case(case: Case, out: Path, extra: list[str] | None = None) -> dict:
    """Fit ``case`` with `neurode pendulum` (in this process); returns its metrics.json."""
    from neurode.cli import main

    folder = out / case.name
    csv = write_csv(case, folder / "data.csv")
    argv = ["pendulum", "--data", str(csv), "--out", str(folder / "run"), "--quiet"]
    argv += ["--overwrite", *(extra or [])]
    started = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise RuntimeError(f"{case.name}: neurode pendulum exited with {code}")
    metrics = json.loads((folder / "run" / "metrics.json").read_text(encoding="utf-8"))
    metrics["case"] = asdict(case)
    metrics["wall_seconds"] = time.perf_counter() - started
    return metrics


def relative_error(estimate: float | None, truth: float) -> float | None:
    return None if estimate is None else abs(estimate - truth) / truth


def _interval(model: dict, name: str) -> str:
    value = model.get(name)
    low_high = (model.get("intervals") or {}).get(name)
    if value is None:
        return "—"
    if not low_high:
        return f"{value:.4g}"
    return f"{value:.4g} [{low_high[0]:.4g}, {low_high[1]:.4g}]"


def _short_flags(models: dict) -> str:
    """The poor-model flags in a few words: training MSE / noise variance, or extrapolation."""
    parts = []
    for name, model in models.items():
        reasons = []
        for flag in model.get("flags") or []:
            if flag.startswith("training residuals"):
                reasons.append("fit " + flag.split()[2] + " noise")
            elif "rest position" in flag:
                reasons.append("extrap. no better than rest")
            else:
                reasons.append("moves where data rest")
        if reasons:
            parts.append(f"{name.replace('blackbox', 'black box')}: {', '.join(reasons)}")
    return "; ".join(parts) or "—"


def markdown_table(results: list[dict]) -> str:
    header = (
        "| case | g/L | μ | span s | traj. | sampling | physics g/L [95%] | physics μ [95%] "
        "| hybrid g/L | hybrid μ | black box extrap. / rest | flagged as poor |"
    )
    rule = "|" + "---|" * (header.count("|") - 1)
    rows = [header, rule]
    for result in results:
        case = result["case"]
        models = result["models"]
        physics, hybrid = models.get("physics", {}), models.get("hybrid", {})
        blackbox = models.get("blackbox", {})
        rest = result["baselines"]["rest"]["extrapolation_mse"]
        ratio = f"{blackbox['extrapolation_mse'] / rest:.2f}" if blackbox and rest else "—"
        rows.append(
            f"| {case['name']} | {case['g_over_l']:g} | {case['mu']:g} | {case['span']:g} "
            f"| {case['n_trajectories']} | {'irregular' if case['irregular'] else 'regular'} "
            f"| {_interval(physics, 'g_over_l')} | {_interval(physics, 'mu')} "
            f"| {_percent(hybrid.get('g_over_l'), case['g_over_l'])} "
            f"| {_percent(hybrid.get('mu'), case['mu'])} | {ratio} | {_short_flags(models)} |"
        )
    return "\n".join(rows)


def _percent(estimate: float | None, truth: float) -> str:
    if estimate is None:
        return "—"
    return f"{estimate:.4g} ({100 * (estimate - truth) / truth:+.1f}%)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=None, help="case names (default: all)")
    parser.add_argument("--out", type=Path, default=Path("runs/pendulum-grid"))
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument("--json", type=Path, default=None, help="also write all metrics here")
    parser.add_argument(
        "--table-from",
        type=Path,
        default=None,
        help="print the table of an earlier --json file instead of running",
    )
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="more `neurode pendulum` options")
    args = parser.parse_args(argv)
    if args.table_from is not None:
        print(markdown_table(json.loads(args.table_from.read_text(encoding="utf-8"))))
        return 0
    cases = GRID if args.cases is None else [c for c in GRID if c.name in args.cases]
    unknown = set(args.cases or ()) - {c.name for c in cases}
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    results = []
    for case in cases:
        result = run_case(case, args.out, [a for a in args.extra if a != "--"])
        results.append(result)
        print(f"{case.name}: {result['wall_seconds']:.0f} s", file=sys.stderr, flush=True)
        table = markdown_table(results)
        if args.markdown:
            args.markdown.write_text(table + "\n", encoding="utf-8")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
