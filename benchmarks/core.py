"""The solver loop against torchdiffeq and torchode: NFE, steps, accuracy, time, overhead.

The problem: ``dy/dt = f(t, y) = MLP(y)`` with layers ``[d, 64, 64, d]`` and
tanh (PyTorch's default initialisation, seed 0), a batch of ``B`` states drawn
from N(0, 1), ``t`` from 0 to 10 with 50 save points. Solvers:

- ``dopri5-f64``: dopri5 in float64, rtol 1e-6, atol 1e-8;
- ``dopri5-f32``: dopri5 in float32, rtol 1e-3, atol 1e-6;
- ``rk4-f64``: fixed-step rk4 (Kutta's 3/8 rule, torchdiffeq's ``rk4``) with
  1000 steps of 0.01 in float64.

Libraries, all in one run, their repetitions interleaved (one of each per
round, the order rotating) so that drifting machine load hits them alike:

- ``neurode``: ``neurode.odeint``;
- ``torchdiffeq``: ``torchdiffeq.odeint``;
- ``torchode``: its batched API as intended, every batch row its own problem
  with its own step sizes, error norm and accept/reject (an
  ``IntegralController``, the controller torchdiffeq and neurode use; for rk4
  a ``FixedStepController`` with the 3/8 rule given a first-same-as-last fifth
  stage, so that its cubic Hermite output uses ``f(t1, y1)`` and each step
  costs 4 evaluations like the others);
- ``torchode-joint``: torchode on the batch flattened into one system of
  ``B·d`` unknowns, as the other two solve it (omitted when ``B = 1``, where it
  is the batched run).

Columns:

- NFE: calls of ``f`` (for torchode-batched each call evaluates every row);
- steps: accepted / attempted (for torchode-batched the largest over the rows);
- max error: ``max |y - y_ref|`` over every save point and component, ``y_ref``
  from torchdiffeq's dopri8 at rtol = atol = 1e-12 in float64 (float32 runs
  are compared in float64);
- time: median seconds per solve;
- f: median seconds of one bare ``f(t, y)`` on the same batch, timed in the
  same rounds (a loop of calls, each with a fresh 0-dim time tensor);
- f in solve: time spent inside ``f`` per call during the library's own solve
  (three untimed solves, median). On large batches it differs from the bare
  ``f``: allocations of megabytes come back from the OS with a page fault per
  4 KiB or come from memory the allocator kept, depending on what else the
  process holds, so an overhead below 1.0 there means the bare loop paid more
  page faults than the solve did;
- overhead: ``time / (NFE × f)``; 1.0 means the solver costs nothing but its
  evaluations of ``f``.

Solves run under ``torch.no_grad()`` (inference). ``--grad-batch`` adds, for
each ``d``, one dopri5-f64 configuration with autograd recording (the MLP's
parameters require grad; forward solve only, its ``f`` timed with autograd
recording too).

Time is the process's CPU time by default (torch runs on one thread: on an
idle machine that is the wall time, on a shared one it leaves out waiting for
a core); ``--clock wall`` for wall time.

Run (the default takes a few minutes on two cores)::

    OMP_NUM_THREADS=1 python benchmarks/core.py
    OMP_NUM_THREADS=1 python benchmarks/core.py --dims 2 --batches 1 --solvers dopri5-f64 \
        --libraries neurode torchdiffeq --repeats 20
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    CountingField,
    bare_call_loop,
    markdown_table,
    median,
    mlp_dynamics,
    time_interleaved,
)

import neurode  # noqa: E402

T_END = 10.0
SAVE_POINTS = 50
RK4_STEP = 0.01


@dataclass(frozen=True)
class Solver:
    method: str
    dtype: torch.dtype
    rtol: float = 0.0
    atol: float = 0.0
    step_size: float | None = None

    @property
    def adaptive(self) -> bool:
        return self.step_size is None


SOLVERS = {
    "dopri5-f64": Solver("dopri5", torch.float64, rtol=1e-6, atol=1e-8),
    "dopri5-f32": Solver("dopri5", torch.float32, rtol=1e-3, atol=1e-6),
    "rk4-f64": Solver("rk4", torch.float64, step_size=RK4_STEP),
}
LIBRARIES = ("neurode", "torchdiffeq", "torchode", "torchode-joint")
EXTRA_LIBRARIES = ("neurode-tol1.5",)
"""``neurode-tol1.5``: neurode at 1.5 times the tolerances. torchdiffeq's dopri5 error
estimate uses other embedded weights than Hairer's (and neurode's, scipy's, diffrax's):
it is exactly 2/3 of theirs, so at equal tolerances torchdiffeq takes the steps neurode
takes at 1.5 times the tolerances. This row compares the two at equal accuracy."""
TOLERANCE_SCALE = {"neurode-tol1.5": 1.5}


@dataclass
class Config:
    dim: int
    batch: int
    solver_name: str
    grad: bool = False

    @property
    def solver(self) -> Solver:
        return SOLVERS[self.solver_name]


@dataclass
class Counts:
    nfe: int
    accepted: int
    attempted: int
    ys: torch.Tensor
    """Saved states, ``(len(t), B, d)``."""
    f_seconds: float = 0.0
    """Time spent inside ``f`` during the solve."""


# ------------------------------------------------------------------ library adapters
def _neurode(func, y0, t, solver: Solver) -> Callable[[], torch.Tensor]:
    if solver.adaptive:
        return lambda: neurode.odeint(
            func, y0, t, rtol=solver.rtol, atol=solver.atol, method=solver.method
        )
    options = {"step_size": solver.step_size}
    return lambda: neurode.odeint(func, y0, t, method=solver.method, options=options)


def _neurode_counts(func, y0, t, solver: Solver, clock: str) -> Counts:
    counter = CountingField(func, clock)
    kwargs: dict[str, Any] = {"method": solver.method}
    if solver.adaptive:
        kwargs.update(rtol=solver.rtol, atol=solver.atol)
    else:
        kwargs["options"] = {"step_size": solver.step_size}
    solution = neurode.solve(counter, y0, t, **kwargs)
    stats = solution.stats
    if stats["nfe"] != counter.nfe:
        print(f"  note: neurode reports nfe={stats['nfe']}, f was called {counter.nfe} times")
    return Counts(counter.nfe, stats["accepted"], stats["steps"], solution.ys, counter.seconds)


def _torchdiffeq(func, y0, t, solver: Solver) -> Callable[[], torch.Tensor]:
    import torchdiffeq

    if solver.adaptive:
        return lambda: torchdiffeq.odeint(
            func, y0, t, rtol=solver.rtol, atol=solver.atol, method=solver.method
        )
    options = {"step_size": solver.step_size}
    return lambda: torchdiffeq.odeint(func, y0, t, method=solver.method, options=options)


class _StepCountingField(CountingField):
    def __init__(self, func, clock: str):
        super().__init__(func, clock)
        self.attempted = 0

    def callback_step(self, t0: Any, y0: Any, dt: Any) -> None:
        self.attempted += 1


def _torchdiffeq_counts(func, y0, t, solver: Solver, clock: str) -> Counts:
    counter = _StepCountingField(func, clock)
    ys = _torchdiffeq(counter, y0, t, solver)()
    accepted = counter.accepted if solver.adaptive else counter.attempted
    return Counts(counter.nfe, accepted, counter.attempted, ys, counter.seconds)


def _rk4_tableau_with_fsal_stage():
    """Kutta's 3/8 rule plus a fifth stage ``f(t1, y1)`` (weight 0) for torchode.

    torchode then treats the method as first-same-as-last: four evaluations per
    step, and its cubic Hermite interpolation gets the true ``f(t1, y1)``.
    """
    from torchode.single_step_methods.runge_kutta import ButcherTableau as TorchodeTableau

    b = [1 / 8, 3 / 8, 3 / 8, 1 / 8, 0.0]
    return TorchodeTableau.from_lists(
        c=[0.0, 1 / 3, 2 / 3, 1.0, 1.0],
        a=[[], [1 / 3], [-1 / 3, 1.0], [1.0, -1.0, 1.0], b[:4]],
        b=b,
        b_err=[0.0] * 5,
    )


def _torchode_solver(func, solver: Solver):
    import torchode
    from torchode.interpolation import ThirdOrderPolynomialInterpolation
    from torchode.single_step_methods.runge_kutta import ExplicitRungeKutta

    term = torchode.ODETerm(func)
    if solver.adaptive:
        method = torchode.Dopri5(term=term)
        controller = torchode.IntegralController(atol=solver.atol, rtol=solver.rtol, term=term)
    else:

        class _RK4(ExplicitRungeKutta):
            def convergence_order(self):
                return 4

            def build_interpolation(self, data):
                return ThirdOrderPolynomialInterpolation.from_k(
                    data.t0, data.dt, data.y0, data.y1, data.k
                )

        method = _RK4(term, _rk4_tableau_with_fsal_stage())
        controller = torchode.FixedStepController()
    return torchode.AutoDiffAdjoint(method, controller)


def _torchode(func, y0, t, solver: Solver, *, joint: bool) -> Callable[[], torch.Tensor]:
    """A solve returning ``(len(t), B, d)`` like the others."""
    import torchode

    batch, dim = y0.shape
    if joint:
        field = lambda s, y: func(s, y.view(batch, dim)).view(1, batch * dim)
        start = y0.reshape(1, batch * dim)
    else:
        field, start = func, y0
    rows = start.shape[0]
    integrator = _torchode_solver(field, solver)
    t_eval = t.expand(rows, -1)
    dt0 = None if solver.adaptive else torch.full((rows,), solver.step_size, dtype=t.dtype)

    def run() -> torch.Tensor:
        problem = torchode.InitialValueProblem(y0=start, t_eval=t_eval)
        return _as_time_major(integrator.solve(problem, dt0=dt0).ys, batch, dim)

    run.integrator = integrator  # type: ignore[attr-defined]
    run.problem_args = (start, t_eval, dt0)  # type: ignore[attr-defined]
    return run


def _as_time_major(ys: torch.Tensor, batch: int, dim: int) -> torch.Tensor:
    """torchode's ``(rows, len(t), features)`` as ``(len(t), B, d)``."""
    if ys.shape[0] == batch:
        return ys.transpose(0, 1)
    return ys.reshape(ys.shape[1], batch, dim)


def _torchode_counts(func, y0, t, solver: Solver, clock: str, *, joint: bool) -> Counts:
    import torchode

    counter = CountingField(func, clock)
    run = _torchode(counter, y0, t, solver, joint=joint)
    start, t_eval, dt0 = run.problem_args
    solution = run.integrator.solve(torchode.InitialValueProblem(y0=start, t_eval=t_eval), dt0=dt0)
    ys = _as_time_major(solution.ys, *y0.shape)
    accepted = int(solution.stats["n_accepted"].max())
    attempted = int(solution.stats["n_steps"].max())
    return Counts(counter.nfe, accepted, attempted, ys, counter.seconds)


def _scaled(solver: Solver, library: str) -> Solver:
    scale = TOLERANCE_SCALE.get(library, 1.0)
    if scale == 1.0 or not solver.adaptive:
        return solver
    return Solver(solver.method, solver.dtype, rtol=scale * solver.rtol, atol=scale * solver.atol)


def _runner(library: str, func, y0, t, solver: Solver) -> Callable[[], torch.Tensor]:
    if library.startswith("neurode"):
        return _neurode(func, y0, t, _scaled(solver, library))
    if library == "torchdiffeq":
        return _torchdiffeq(func, y0, t, solver)
    return _torchode(func, y0, t, solver, joint=library == "torchode-joint")


def _counts(library: str, func, y0, t, solver: Solver, clock: str, runs: int = 3) -> Counts:
    """NFE, steps and states of one solve; the time inside ``f``, median over ``runs`` solves."""
    results = []
    for _ in range(runs):
        if library.startswith("neurode"):
            results.append(_neurode_counts(func, y0, t, _scaled(solver, library), clock))
        elif library == "torchdiffeq":
            with warnings.catch_warnings():
                # Its fixed-grid solvers call callback_step only and say so.
                warnings.filterwarnings("ignore", message="Solver .* does not support callbacks")
                results.append(_torchdiffeq_counts(func, y0, t, solver, clock))
        else:
            joint = library == "torchode-joint"
            results.append(_torchode_counts(func, y0, t, solver, clock, joint=joint))
    counts = results[-1]
    counts.f_seconds = median(r.f_seconds for r in results)
    return counts


# -------------------------------------------------------------------------- running
def _reference(func: torch.nn.Module, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    import torchdiffeq

    func64 = copy.deepcopy(func).to(torch.float64)
    with torch.no_grad():
        return torchdiffeq.odeint(
            func64, y0.double(), t.double(), rtol=1e-12, atol=1e-12, method="dopri8"
        )


def _bare_calls_for(batch: int, dim: int) -> int:
    """Evaluations per timed bare-f sample: enough to be well above the clock's resolution."""
    return max(2, min(100, 40_000 // (batch * max(dim, 8))))


def run_config(config: Config, libraries: list[str], repeats: int, clock: str) -> list[dict]:
    solver = config.solver
    func = mlp_dynamics(config.dim, dtype=solver.dtype, requires_grad=config.grad)
    generator = torch.Generator().manual_seed(1)
    y0 = torch.randn(config.batch, config.dim, generator=generator, dtype=torch.float64)
    y0 = y0.to(solver.dtype)
    t = torch.linspace(0.0, T_END, SAVE_POINTS, dtype=solver.dtype)
    libraries = [
        lib
        for lib in libraries
        if not (lib == "torchode-joint" and config.batch == 1)
        and not (lib in TOLERANCE_SCALE and not solver.adaptive)
    ]
    reference = _reference(func, y0, t)
    grad_mode = torch.enable_grad() if config.grad else torch.no_grad()
    with grad_mode:
        counts = {lib: _counts(lib, func, y0, t, solver, clock) for lib in libraries}
        calls = _bare_calls_for(config.batch, config.dim)
        cases = {lib: _runner(lib, func, y0, t, solver) for lib in libraries}
        cases["f"] = bare_call_loop(func, y0, t[0], calls=calls)
        times = time_interleaved(cases, repeats, clock=clock)
    f_time = median(times["f"]) / calls
    rows = []
    for lib in libraries:
        c = counts[lib]
        error = float((c.ys.detach().double() - reference).abs().max())
        wall = median(times[lib])
        rows.append(
            {
                "d": config.dim,
                "B": config.batch,
                "solver": config.solver_name,
                "grad": config.grad,
                "library": lib,
                "nfe": c.nfe,
                "accepted": c.accepted,
                "attempted": c.attempted,
                "error": error,
                "time": wall,
                "f_time": f_time,
                "f_in_solve": c.f_seconds / c.nfe,
                "overhead": wall / (c.nfe * f_time),
            }
        )
    return rows


def _format(rows: list[dict]) -> str:
    headers = [
        "d",
        "B",
        "solver",
        "autograd",
        "library",
        "NFE",
        "steps acc/att",
        "max error",
        "time (ms)",
        "f (µs)",
        "f in solve (µs)",
        "overhead",
    ]
    table = [
        [
            r["d"],
            r["B"],
            r["solver"],
            "yes" if r["grad"] else "no",
            r["library"],
            r["nfe"],
            f"{r['accepted']}/{r['attempted']}",
            f"{r['error']:.2e}",
            f"{1e3 * r['time']:.2f}",
            f"{1e6 * r['f_time']:.1f}",
            f"{1e6 * r['f_in_solve']:.1f}",
            f"**{r['overhead']:.2f}**"
            if r["library"].startswith("neurode")
            else f"{r['overhead']:.2f}",
        ]
        for r in rows
    ]
    return markdown_table(headers, table)


def _configs(args: argparse.Namespace) -> list[Config]:
    configs = []
    for dim in args.dims:
        for batch in args.batches:
            for solver in args.solvers:
                if solver.startswith("rk4") and batch not in args.rk4_batches:
                    continue
                configs.append(Config(dim, batch, solver))
        if args.grad_batch:
            configs.append(Config(dim, args.grad_batch, "dopri5-f64", grad=True))
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 32])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 128, 4096])
    parser.add_argument("--solvers", nargs="+", choices=list(SOLVERS), default=list(SOLVERS))
    parser.add_argument(
        "--rk4-batches",
        type=int,
        nargs="+",
        default=[1, 128],
        help="batch sizes at which rk4 runs (1000 steps at B=4096 take minutes)",
    )
    parser.add_argument(
        "--libraries",
        nargs="+",
        choices=LIBRARIES + EXTRA_LIBRARIES,
        default=list(LIBRARIES),
        help="neurode-tol1.5: neurode at 1.5x the tolerances, torchdiffeq's accuracy",
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed solves per library")
    parser.add_argument(
        "--grad-batch",
        type=int,
        default=128,
        help="batch of the autograd rows (one per d; 0 to skip them)",
    )
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parent / "results" / "core.md"),
        help="where to write the markdown table ('' to skip)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows: list[dict] = []
    started = time.perf_counter()
    for config in _configs(args):
        label = f"d={config.dim} B={config.batch} {config.solver_name}" + (
            " autograd" if config.grad else ""
        )
        print(f"running {label} ...", file=sys.stderr, flush=True)
        config_rows = run_config(config, args.libraries, args.repeats, args.clock)
        for r in config_rows:
            print(
                f"  {r['library']:15s} NFE {r['nfe']:5d}  err {r['error']:.1e}  "
                f"{1e3 * r['time']:9.2f} ms  overhead {r['overhead']:.2f}",
                file=sys.stderr,
                flush=True,
            )
        rows += config_rows
    elapsed = time.perf_counter() - started

    command = "OMP_NUM_THREADS=1 python benchmarks/core.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    report = "\n".join(
        [
            "# Core solver benchmark",
            "",
            f"`{command.strip()}` — torch {torch.__version__}, {args.threads} thread(s), "
            f"{args.clock} time, median of {args.repeats} interleaved repetitions, "
            f"{elapsed:.0f} s in all.",
            "",
            "`f(t, y) = MLP(y)`, layers `[d, 64, 64, d]`, tanh; t in [0, 10], 50 save points. "
            "overhead = time / (NFE × time of one bare f call on the same batch); "
            "f in solve: time inside f per call during that library's solve. "
            "torchode solves each batch row with its own step sizes (NFE counts calls of f, "
            "each over the whole batch; steps are the largest over the rows); torchode-joint "
            "solves the batch as one system like the others. Max error against torchdiffeq's "
            "dopri8 at rtol = atol = 1e-12 in float64.",
            "",
            _format(rows),
            "",
        ]
    )
    print(report)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
