"""Stiff problems: neurode's implicit and Rosenbrock methods against scipy's Radau, BDF, LSODA.

Problems (``neurode.data.stiff_problems``), float64, one system each:

- ``robertson``: rate constants (0.04, 3e7, 1e4), ``t`` from 0 to 4e5;
- ``van_der_pol``: ``μ = 1000`` on [0, 3000] (about two relaxation periods);
- ``hires``: [0, 321.8122], the Bari test set's reference values.

Tolerances: ``rtol`` in ``--rtols`` (default 1e-4, 1e-6, 1e-8) and ``atol =
s · rtol`` with a per-problem scale ``s`` (1e-4 for Robertson and HIRES, whose
small components are ~1e-5 and ~1e-4; 1e-2 for van der Pol). Solvers, in one
run on the same problem objects:

- scipy's ``solve_ivp`` with ``Radau``, ``BDF`` and ``LSODA``, each given the
  problem's analytic Jacobian (``jac=``), twice (``--scipy-field both``, the
  default): with the vector field and Jacobian written in NumPy, as a scipy
  user would write them ("scipy LSODA"), and with the very torch functions
  neurode gets, converting arrays on every call ("scipy LSODA (torch f)"): the
  same function cost on both sides, so the difference is the solvers';
- neurode's ``kvaerno5`` (ESDIRK, Newton), ``rodas5p`` and ``rodas5``
  (Rosenbrock) and ``auto`` (tsit5 and rodas5p, switched by stiffness), each
  given the same analytic Jacobian (``options={"jacobian": ...}``; ``--neurode-jacobian
  reverse`` lets neurode differentiate ``func`` instead) and, for the methods
  that take it, ``autonomous=True`` (the problems do not depend on ``t``, which
  spares Rosenbrock methods an evaluation for ``∂f/∂t``). ``kvaerno3`` and
  ``kvaerno4`` are available through ``--methods`` and left out by default:
  at rtol 1e-8 kvaerno3 takes 2.3–5.8 times rodas5p's evaluations (18 s on van
  der Pol, against 1.9 s).

Columns:

- NFE: evaluations of ``f`` (scipy's ``nfev``, neurode's ``stats["nfe"]``);
  neither counts the analytic Jacobian's calls, which are the next column;
- Jac: Jacobian evaluations (``njev`` / ``jacobian_evaluations``);
- LU: LU factorisations (``nlu`` / ``factorizations``; scipy's Radau counts its
  real and its complex factorisation separately, two per Jacobian update);
- steps: accepted / attempted (scipy reports accepted steps only);
- error: ``max_i |y_i(T) − ref_i| / (s + |ref_i|)`` at the final time ``T``, a
  relative error with the floor ``s`` of the problem's ``atol``, the same
  measure at every tolerance. ``ref``: scipy's Radau at rtol 1e-12 (Robertson,
  van der Pol; ``reference_solution``) and the published HIRES values;
- time: minimum over ``--repeats`` solves of the wall time (``--clock cpu``
  for process CPU time), the solvers interleaved round by round.

Then the targets: neurode's NFE against Radau's *at equal accuracy* (Radau's
NFE interpolated log–log along its three tolerances to the error the neurode
solve reached; "—" where that error is outside Radau's measured range), and
wall time against scipy's fastest solver at the same rtol and at equal
accuracy, once against scipy with NumPy functions and once against scipy with
the torch functions. A last line per problem gives the floor of the first
comparison: the time a solver would take that did nothing but call the torch
``f`` as often as scipy's fastest method calls its NumPy ``f``.

Parameter sweep (``--sweep-rows``, default 1024): Robertson with one rate set
per row, ``k = (0.04, 3e7, 1e4) · exp(σ z)``, ``z ~ N(0, I)``, ``σ =
--sweep-spread`` (0.5), seed 0; rtol 1e-6, atol 1e-10, to ``t = 4e5``. neurode
solves the whole batch in one call: ``batch="per_sample"`` (every row its own
steps, per-row 3×3 Jacobians and LUs) and as one joint system of ``3·B``
unknowns (one step size for all rows; the Jacobian given as ``(B, 3, 3)`` row
blocks, so the iteration matrix is factored block by block), with rodas5p and
kvaerno5. scipy solves rows one by one; its loop is
timed on the first ``--sweep-scipy-rows`` rows (32) and extrapolated linearly to
all rows. Errors are checked on the first ``--sweep-check-rows`` rows against
scipy's Radau at rtol 1e-10, atol 1e-14. Solves whose first run takes longer
than ``--long`` seconds are not repeated.

torchdiffeq: the registry release (0.2.5) has no implicit solvers; its master
branch adds fixed-step ones (``implicit_euler``, ``radauIIA5``, ...). If the
installed torchdiffeq lists them the script says so; none is timed, since a
fixed grid cannot follow Robertson's time scales from 1e-5 to 1e5.

Run (the default takes about three minutes on one core)::

    OMP_NUM_THREADS=1 python benchmarks/stiff.py
    OMP_NUM_THREADS=1 python benchmarks/stiff.py --problems hires --rtols 1e-6 --sweep-rows 0
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CLOCKS  # noqa: E402
from stiff_numpy import (  # noqa: E402
    ROBERTSON_RATES,
    hires_numpy,
    robertson_numpy,
    van_der_pol_numpy,
)
from stiff_report import (  # noqa: E402
    SCIPY_METHODS,
    check_targets,
    format_single,
    format_sweep,
    format_targets,
)

import neurode  # noqa: E402
from neurode.data.stiff_problems import (  # noqa: E402
    HIRES_REFERENCE,
    StiffProblem,
    hires,
    reference_solution,
    robertson,
    van_der_pol,
)

F64 = torch.float64
NEURODE_METHODS = ("kvaerno5", "rodas5p", "rodas5", "auto")
OPTIONAL_METHODS = ("kvaerno3", "kvaerno4")
TAKES_AUTONOMOUS = ("rodas5", "rodas5p", "auto")
SCIPY_FIELDS = {"numpy": ("numpy",), "torch": ("torch",), "both": ("numpy", "torch")}
SCIPY_LABELS = {"numpy": "scipy", "torch": "scipy-torch"}
"""The ``library`` of a scipy row: its functions in NumPy, or neurode's torch functions."""
SWEEP_RTOL = 1e-6
SWEEP_ATOL_SCALE = 1e-4


# ------------------------------------------------------------------------ problems
@dataclass(frozen=True)
class Case:
    """A problem with its tolerance scale, reference and NumPy field for scipy."""

    name: str
    problem: StiffProblem
    atol_scale: float
    numpy_field: Callable[[float, np.ndarray], np.ndarray]
    numpy_jacobian: Callable[[float, np.ndarray], np.ndarray]
    reference: Callable[[], torch.Tensor]

    @property
    def t_end(self) -> float:
        return self.problem.t_span[1]


def _final_reference(problem: StiffProblem) -> Callable[[], torch.Tensor]:
    return lambda: reference_solution(problem, [problem.t_span[1]])[-1]


def make_cases() -> dict[str, Case]:
    rober = robertson(ROBERTSON_RATES, t_end=4e5)
    vdp = van_der_pol(1000.0, t_end=3000.0)
    hi = hires()
    return {
        "robertson": Case(
            "robertson", rober, 1e-4, *robertson_numpy(), reference=_final_reference(rober)
        ),
        "van_der_pol": Case(
            "van_der_pol", vdp, 1e-2, *van_der_pol_numpy(1000.0), reference=_final_reference(vdp)
        ),
        "hires": Case(
            "hires",
            hi,
            1e-4,
            *hires_numpy(hi),
            reference=lambda: torch.tensor(HIRES_REFERENCE, dtype=F64),
        ),
    }


def scaled_error(y: torch.Tensor, reference: torch.Tensor, floor: float) -> float:
    """``max |y − ref| / (floor + |ref|)`` (per row: the maximum over rows too)."""
    y = torch.as_tensor(y, dtype=F64)
    return float(((y - reference).abs() / (floor + reference.abs())).max())


# ------------------------------------------------------------------------ solvers
def scipy_runner(case: Case, method: str, rtol: float, scipy_field: str) -> Callable[[], dict]:
    from scipy.integrate import solve_ivp

    atol = case.atol_scale * rtol
    if scipy_field == "numpy":
        field, jacobian = case.numpy_field, case.numpy_jacobian
    else:
        problem = case.problem

        def field(t, y):
            return problem.func(t, torch.from_numpy(y)).numpy()

        def jacobian(t, y):
            return problem.jacobian(t, torch.from_numpy(y)).numpy()

    y0 = case.problem.y0.numpy().copy()
    span = case.problem.t_span

    def run() -> dict:
        result = solve_ivp(field, span, y0, method=method, rtol=rtol, atol=atol, jac=jacobian)
        if not result.success:
            raise RuntimeError(f"scipy {method} on {case.name}: {result.message}")
        return {
            "y": torch.from_numpy(result.y[:, -1].copy()),
            "nfe": int(result.nfev),
            "jac": int(result.njev),
            "lu": int(result.nlu),
            "accepted": len(result.t) - 1,
            "attempted": None,
        }

    return run


def neurode_options(method: str, jacobian, neurode_jacobian: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if neurode_jacobian == "analytic":
        options["jacobian"] = jacobian
    else:
        options["jacobian"] = neurode_jacobian
    if method in TAKES_AUTONOMOUS:
        options["autonomous"] = True
    return options


def neurode_runner(
    case: Case, method: str, rtol: float, neurode_jacobian: str
) -> Callable[[], dict]:
    problem = case.problem
    atol = case.atol_scale * rtol
    t = torch.tensor(problem.t_span, dtype=F64)
    options = neurode_options(method, problem.jacobian, neurode_jacobian)

    def run() -> dict:
        with torch.no_grad():
            solution = neurode.solve(
                problem.func, problem.y0, t, method=method, rtol=rtol, atol=atol, options=options
            )
        stats = solution.stats
        return {
            "y": solution.ys[-1],
            "nfe": int(stats["nfe"]),
            "jac": int(stats["jacobian_evaluations"]),
            "lu": int(stats["factorizations"]),
            "accepted": int(stats["accepted"]),
            "attempted": int(stats["steps"]),
        }

    return run


def time_cases(
    cases: dict[str, Callable[[], Any]], repeats: int, clock: str, long: float
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Seconds of each case, interleaved round by round (the order rotating), and its result.

    Every case runs in the first round; a case whose first run took longer than
    ``long`` seconds is not repeated.
    """
    now = CLOCKS[clock]
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, Any] = {}
    for round_index in range(max(repeats, 1)):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if round_index and times[name][0] > long:
                continue
            start = now()
            results[name] = cases[name]()
            times[name].append(now() - start)
    return times, results


# ------------------------------------------------------------------------ single systems
def run_problem(case: Case, rtols, methods, args) -> list[dict]:
    reference = case.reference()
    cases: dict[tuple, Callable[[], dict]] = {}
    for rtol in rtols:
        for method in methods:
            if method in SCIPY_METHODS:
                for field in SCIPY_FIELDS[args.scipy_field]:
                    label = SCIPY_LABELS[field]
                    cases[(label, method, rtol)] = scipy_runner(case, method, rtol, field)
            else:
                cases[("neurode", method, rtol)] = neurode_runner(
                    case, method, rtol, args.neurode_jacobian
                )
    times, results = time_cases(cases, args.repeats, args.clock, args.long)
    rows = []
    for key, result in results.items():
        library, method, rtol = key
        rows.append(
            {
                "problem": case.name,
                "rtol": rtol,
                "atol": case.atol_scale * rtol,
                "library": library,
                "method": method,
                **{k: v for k, v in result.items() if k != "y"},
                "error": scaled_error(result["y"], reference, case.atol_scale),
                "time": min(times[key]),
                "runs": len(times[key]),
            }
        )
    return rows


def at_accuracy(points: list[tuple[float, float]], error: float) -> float | None:
    """``value`` at ``error`` by log–log interpolation of ``(error, value)`` points; None outside.

    The points are one solver's runs at several tolerances; they are sorted by
    error, and an error outside their range gives None (no extrapolation).
    """
    points = sorted(p for p in points if p[0] > 0 and math.isfinite(p[0]))
    if not points or error <= 0:
        return None
    errors = [math.log(p[0]) for p in points]
    values = [math.log(p[1]) for p in points]
    x = math.log(error)
    if x < errors[0] or x > errors[-1]:
        return None
    return math.exp(float(np.interp(x, errors, values)))


def _curve(rows, problem, method, column, library="scipy"):
    return [
        (r["error"], r[column])
        for r in rows
        if r["problem"] == problem and r["method"] == method and r["library"] == library
    ]


def _time_against(rows, problem, ours, theirs, library, scipy_methods) -> dict:
    """Wall time of neurode's runs against one scipy variant's (``library``), same rtol and
    at equal accuracy (every neurode run against the fastest scipy method interpolated to
    that run's error; the best such ratio)."""
    fastest_ours = min(ours, key=lambda r: r["time"])
    fastest_theirs = min(theirs, key=lambda r: r["time"])
    best = None
    for r in ours:
        scipy_times = [
            at_accuracy(_curve(rows, problem, m, "time", library), r["error"])
            for m in scipy_methods
        ]
        scipy_times = [t for t in scipy_times if t is not None]
        if scipy_times:
            ratio = r["time"] / min(scipy_times)
            if best is None or ratio < best[0]:
                best = (ratio, r["method"])
    return {
        "ours": fastest_ours,
        "theirs": fastest_theirs,
        "same_tol": fastest_ours["time"] / fastest_theirs["time"],
        "equal_acc": best,
    }


def target_rows(rows: list[dict], rtols, field_costs: dict[str, float]) -> list[dict]:
    """Per problem and rtol: NFE against Radau at equal accuracy, time against scipy's best.

    ``field_costs``: seconds per call of each problem's torch ``f``, for the floor.
    """
    out = []
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    scipy_methods = [m for m in SCIPY_METHODS if any(r["method"] == m for r in rows)]
    libraries = [lib for lib in SCIPY_LABELS.values() if any(r["library"] == lib for r in rows)]
    for problem in problems:
        for rtol in rtols:
            here = [r for r in rows if r["problem"] == problem and r["rtol"] == rtol]
            ours = [r for r in here if r["library"] == "neurode"]
            if not ours:
                continue
            entry: dict[str, Any] = {
                "problem": problem,
                "rtol": rtol,
                "nfe": {},
                "scipy_methods": scipy_methods,
                "time": {},
            }
            radau = next(
                (r for r in here if r["library"] == "scipy" and r["method"] == "Radau"), None
            )
            radau_curve = _curve(rows, problem, "Radau", "nfe")
            for r in ours:
                same_tol = r["nfe"] / radau["nfe"] if radau else None
                radau_nfe = at_accuracy(radau_curve, r["error"]) if radau else None
                equal_acc = r["nfe"] / radau_nfe if radau_nfe else None
                entry["nfe"][r["method"]] = (same_tol, equal_acc)
            for library in libraries:
                theirs = [r for r in here if r["library"] == library]
                if theirs:
                    entry["time"][library] = _time_against(
                        rows, problem, ours, theirs, library, scipy_methods
                    )
            if not entry["time"]:
                continue
            numpy_runs = [r for r in here if r["library"] == "scipy"]
            if numpy_runs and problem in field_costs:
                fastest = min(numpy_runs, key=lambda r: r["time"])
                entry["floor"] = {
                    "method": fastest["method"],
                    "scipy_time": fastest["time"],
                    "nfe": fastest["nfe"],
                    "f_only": fastest["nfe"] * field_costs[problem],
                }
            out.append(entry)
    return out


def field_cost(case: Case, calls: int = 2000) -> float:
    """Seconds per call of the problem's torch ``f`` at its initial state (best of 5)."""
    func, y = case.problem.func, case.problem.y0
    best = math.inf
    with torch.no_grad():
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls):
                func(0.0, y)
            best = min(best, (time.perf_counter() - start) / calls)
    return best


# ------------------------------------------------------------------------ sweep
def sweep_rates(rows: int, spread: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, 3, generator=generator, dtype=F64)
    return torch.tensor(ROBERTSON_RATES, dtype=F64) * torch.exp(spread * z)


def run_sweep(args) -> dict:
    rows = args.sweep_rows
    rates = sweep_rates(rows, args.sweep_spread)
    problem = robertson(rates, t_end=4e5)
    rtol, atol = SWEEP_RTOL, SWEEP_ATOL_SCALE * SWEEP_RTOL
    t = torch.tensor(problem.t_span, dtype=F64)
    scipy_rows = min(args.sweep_scipy_rows, rows)
    check_rows = min(args.sweep_check_rows, rows)
    reference = torch.stack(
        [
            reference_solution(problem.row(i), [problem.t_span[1]], rtol=1e-10, atol=1e-14)[-1]
            for i in range(check_rows)
        ]
    )

    def neurode_case(method: str, mode: str):
        # Row blocks (B, 3, 3) in both modes: joint mode factors them block by block.
        jacobian = problem.jacobian
        options = neurode_options(method, jacobian, args.neurode_jacobian)

        def run():
            with torch.no_grad():
                solution = neurode.solve(
                    problem.func,
                    problem.y0,
                    t,
                    method=method,
                    rtol=rtol,
                    atol=atol,
                    options=options,
                    batch=mode,
                )
            stats = solution.stats
            steps = torch.as_tensor(stats["steps"], dtype=F64)
            return {
                "y": solution.ys[-1][:check_rows],
                "nfe": int(stats["nfe"]),
                "jac": int(stats["jacobian_evaluations"]),
                "lu": int(stats["factorizations"]),
                "steps_mean": float(steps.mean()),
                "steps_max": int(steps.max()),
            }

        return run

    def scipy_case(method: str):
        from scipy.integrate import solve_ivp

        fields = [robertson_numpy(rates[i].tolist()) for i in range(scipy_rows)]
        y0 = problem.y0[0].numpy().copy()

        def run():
            finals, nfe, jac, lu, steps = [], 0, 0, 0, []
            for field, jacobian in fields:
                result = solve_ivp(
                    field, problem.t_span, y0, method=method, rtol=rtol, atol=atol, jac=jacobian
                )
                if not result.success:
                    raise RuntimeError(f"scipy {method}: {result.message}")
                finals.append(torch.from_numpy(result.y[:, -1].copy()))
                nfe, jac, lu = nfe + result.nfev, jac + result.njev, lu + result.nlu
                steps.append(len(result.t) - 1)
            return {
                "y": torch.stack(finals)[:check_rows],
                "nfe": nfe / scipy_rows,
                "jac": jac / scipy_rows,
                "lu": lu / scipy_rows,
                "steps_mean": sum(steps) / len(steps),
                "steps_max": max(steps),
            }

        return run

    cases: dict[tuple, Callable[[], dict]] = {}
    for mode in args.sweep_modes:
        for method in args.sweep_methods:
            cases[("neurode", mode, method)] = neurode_case(method, mode)
    for method in args.sweep_scipy:
        cases[("scipy", "loop", method)] = scipy_case(method)
    times, results = time_cases(cases, args.repeats, args.clock, args.long)
    out = []
    for key, result in results.items():
        library, mode, method = key
        seconds = min(times[key])
        if library == "scipy":
            seconds = seconds * rows / scipy_rows
        out.append(
            {
                "library": library,
                "mode": mode,
                "method": method,
                **{k: v for k, v in result.items() if k != "y"},
                "error": scaled_error(result["y"], reference, SWEEP_ATOL_SCALE)
                if check_rows
                else float("nan"),
                "time": seconds,
                "runs": len(times[key]),
            }
        )
    return {
        "rows": rows,
        "scipy_rows": scipy_rows,
        "check_rows": check_rows,
        "spread": args.sweep_spread,
        "results": out,
    }


def torchdiffeq_note() -> str:
    try:
        import torchdiffeq
        from torchdiffeq._impl.odeint import SOLVERS
    except ImportError:
        return "torchdiffeq: not installed."
    implicit = sorted(name for name in SOLVERS if name in ("implicit_euler", "radauIIA5", "trbdf2"))
    if implicit:
        return (
            f"torchdiffeq {torchdiffeq.__version__} lists fixed-step implicit solvers "
            f"({', '.join(implicit)}); not timed (fixed grids only)."
        )
    return (
        f"torchdiffeq {torchdiffeq.__version__}: no implicit solvers (its SOLVERS has no "
        "implicit_euler); its master branch adds fixed-step ones only."
    )


# ------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    all_cases = make_cases()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", nargs="*", choices=list(all_cases), default=list(all_cases))
    parser.add_argument("--rtols", type=float, nargs="+", default=[1e-4, 1e-6, 1e-8])
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=SCIPY_METHODS + NEURODE_METHODS + OPTIONAL_METHODS,
        default=list(SCIPY_METHODS + NEURODE_METHODS),
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed solves per case (min)")
    parser.add_argument(
        "--long", type=float, default=10.0, help="a case whose first run takes longer runs once"
    )
    parser.add_argument("--scipy-field", choices=tuple(SCIPY_FIELDS), default="both")
    parser.add_argument(
        "--neurode-jacobian", choices=("analytic", "reverse", "forward"), default="analytic"
    )
    parser.add_argument("--sweep-rows", type=int, default=1024, help="0 skips the sweep")
    parser.add_argument("--sweep-spread", type=float, default=0.5, help="σ of log(rates)")
    parser.add_argument("--sweep-scipy-rows", type=int, default=32)
    parser.add_argument("--sweep-check-rows", type=int, default=8)
    parser.add_argument(
        "--sweep-modes", nargs="+", choices=("per_sample", "joint"), default=["per_sample", "joint"]
    )
    parser.add_argument("--sweep-methods", nargs="+", default=["rodas5p", "kvaerno5"])
    parser.add_argument(
        "--sweep-scipy", nargs="*", choices=SCIPY_METHODS, default=list(SCIPY_METHODS)
    )
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parent / "results" / "stiff.md"),
        help="where to write the markdown report ('' to skip)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = list(dict.fromkeys(args.methods))
    started = time.perf_counter()

    rows: list[dict] = []
    for name in args.problems:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        problem_rows = run_problem(all_cases[name], args.rtols, methods, args)
        for r in problem_rows:
            print(
                f"  {r['rtol']:.0e} {r['library']:11s} {r['method']:9s} NFE {r['nfe']:6d}  "
                f"err {r['error']:.1e}  {1e3 * r['time']:9.1f} ms",
                file=sys.stderr,
                flush=True,
            )
        rows += problem_rows
    field_costs = {name: field_cost(all_cases[name]) for name in args.problems}
    entries = target_rows(rows, args.rtols, field_costs)

    sweep = None
    if args.sweep_rows > 0:
        print(f"running the {args.sweep_rows}-row Robertson sweep ...", file=sys.stderr, flush=True)
        sweep = run_sweep(args)
        for r in sweep["results"]:
            print(
                f"  {r['library']:11s} {r['mode']:10s} {r['method']:9s} {r['time']:8.2f} s  "
                f"err {r['error']:.1e}",
                file=sys.stderr,
                flush=True,
            )
    elapsed = time.perf_counter() - started

    command = "OMP_NUM_THREADS=1 python benchmarks/stiff.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    if args.neurode_jacobian == "analytic":
        jacobian_note = "the analytic Jacobian"
    else:
        jacobian_note = f"its {args.neurode_jacobian}-mode autodiff Jacobian"
    parts = [
        "# Stiff problems benchmark",
        "",
        f"`{command.strip()}` — torch {torch.__version__}, scipy {scipy.__version__}, "
        f"{args.threads} torch thread(s), {args.clock} time, minimum of {args.repeats} "
        f"interleaved runs, {elapsed:.0f} s in all.",
        "",
        "scipy gets the analytic Jacobian (`jac=`) and the field "
        + {
            "numpy": "in NumPy",
            "torch": "as the torch functions (scipy (torch f))",
            "both": "in NumPy (scipy) and as the torch functions (scipy (torch f))",
        }[args.scipy_field]
        + "; "
        f"neurode gets {jacobian_note} "
        "(`options={'jacobian': ...}`) and `autonomous=True` where the method takes it. "
        "atol = 1e-4·rtol (Robertson, HIRES), 1e-2·rtol (van der Pol). "
        "error = max_i |y_i(T) − ref_i| / (s + |ref_i|) at the final time, s = atol/rtol. "
        "NFE excludes Jacobian evaluations (column Jac) for both libraries. "
        "steps = accepted/attempted (scipy reports accepted only). " + torchdiffeq_note(),
        "",
    ]
    if rows:
        parts += [format_single(rows), ""]
    if entries:
        parts += [
            "## Targets",
            "",
            "NFE ratios: neurode's NFE ÷ Radau's at the same rtol, and ÷ Radau's NFE "
            "interpolated (log–log over its rtols) to the error neurode reached "
            "(— : outside Radau's measured error range). Time ratios: neurode's fastest "
            "method ÷ scipy's fastest at the same rtol; and, at equal accuracy, the best "
            "over neurode's runs of its time ÷ the fastest scipy method's time "
            "interpolated to that run's error (among the scipy methods whose measured "
            "errors bracket it; — if none does).",
            "",
            format_targets(entries, methods),
            "",
        ]
    if sweep:
        parts += [
            f"## Sweep: Robertson, {sweep['rows']} rate sets",
            "",
            f"k = (0.04, 3e7, 1e4)·exp({sweep['spread']}·z), z ~ N(0, I), seed 0; rtol "
            f"{SWEEP_RTOL:g}, atol {SWEEP_ATOL_SCALE * SWEEP_RTOL:g}, t to 4e5. neurode: one "
            "call for the whole batch (NFE = calls of f on the batch; per_sample Jac/LU = "
            "batched per-row evaluations/factorisations; joint: one 3B-unknown system, one step "
            "size, its Jacobian as (B, 3, 3) row blocks factored block by block). "
            f"scipy: rows one by one, timed on {sweep['scipy_rows']} rows and extrapolated "
            f"linearly to {sweep['rows']} (NFE, Jac, LU per row). Error on the first "
            f"{sweep['check_rows']} rows against Radau at rtol 1e-10 (same measure, "
            f"s = {SWEEP_ATOL_SCALE:g}). Cases taking over {args.long:g} s ran once.",
            "",
            format_sweep(sweep),
            "",
        ]
    targets = check_targets(entries, sweep)
    if targets:
        parts += ["## Target checks", "", *targets, ""]
    report = "\n".join(parts)
    print(report)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
