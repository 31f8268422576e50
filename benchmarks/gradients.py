"""Gradient methods side by side: wall time, evaluations, peak memory and accuracy.

One gradient of ``L = sum(y(t1)^2)`` with respect to ``y0`` and every parameter,
for ``dy/dt = MLP(y)`` (layers ``[d, 64, 64, d]``, tanh), a batch of ``B``
states, float64, ``t`` from 0 to 10. Compared in one run: neurode's gradient
methods (direct, backsolve with and without the seminorm, checkpoint, and
reversible / forward when registered), torchdiffeq's ``odeint`` (backprop) and
``odeint_adjoint`` (with and without the seminorm), and torchode
(``AutoDiffAdjoint``, backprop through the steps but not the step-size control).

Measurements:

- time: CPU seconds of the process (``time.process_time``; torch runs on one
  thread, so on an idle machine this is the wall time, and on a shared one it
  leaves out the time spent waiting for a core), median over ``--repeats``
  repetitions, the configurations interleaved (one of each per round) so that
  drifting machine load hits all alike;
- NFE: calls of the vector field during the forward solve and during backward;
- time ratio: ``wall / Σ N_k · c_k``, the evaluations a method makes times
  what each costs when done the cheapest way its scheme allows: ``c_bare``
  for an evaluation without a graph (forward solves of the adjoints), ``c_vjp``
  for one with its own vector-Jacobian product call (the adjoints' backward
  evaluations), ``c_chain`` for one whose graph is kept and backpropagated
  together with the others (direct backprop's forward, the checkpoint
  replay). Each ``c`` is timed over a loop of 40 evaluations, interleaved with
  the runs. 1.0 means the method costs exactly its evaluations; the excess
  is its own work. Undefined for forward-mode sensitivities;
- peak memory: a fresh subprocess per configuration runs a short warm-up solve,
  reads its resident set size, runs the gradient once and reports
  ``ru_maxrss - RSS before`` (CPU tensors are invisible to the CUDA allocator
  statistics; RSS counts everything the process touched);
- gradient error: ``|g - g_ref| / |g_ref|`` over ``(dL/dy0, dL/dθ)``, ``g_ref``
  from neurode's direct backprop at rtol 1e-12, atol 1e-14.

Then memory and time against the number of steps: fixed-step rk4 with
``--steps`` (default 100, 1000, 10000) steps, batch ``--sweep-batch``.

Run: ``python benchmarks/gradients.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

import neurode
from neurode import gradients as gradient_registry

T_END = 10.0
DTYPE = torch.float64


# ------------------------------------------------------------------------ the problem
class CountingField(torch.nn.Module):
    """``f(t, y) = MLP(y)``, counting its calls."""

    def __init__(self, dim: int, hidden: int = 64, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, dim),
        ).to(DTYPE)
        self._calls = [0]  # a list, so counting bypasses nn.Module.__setattr__

    @property
    def calls(self) -> int:
        return self._calls[0]

    def reset_calls(self) -> None:
        self._calls[0] = 0

    def forward(self, t, y):
        self._calls[0] += 1
        return self.net(y)


def make_problem(dim: int, batch: int) -> tuple[CountingField, torch.Tensor]:
    field = CountingField(dim)
    y0 = torch.randn(batch, dim, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    return field, y0


@dataclass(frozen=True)
class Solver:
    """dopri5 with tolerances, or rk4 with a number of steps."""

    rtol: float = 1e-7
    atol: float = 1e-9
    steps: int | None = None

    def neurode_kwargs(self) -> dict:
        if self.steps is None:
            return dict(method="dopri5", rtol=self.rtol, atol=self.atol)
        return dict(method="rk4", options=dict(step_size=T_END / self.steps))

    def label(self) -> str:
        return "dopri5" if self.steps is None else f"rk4:{self.steps}"

    @staticmethod
    def parse(text: str) -> Solver:
        if text == "dopri5":
            return Solver()
        return Solver(steps=int(text.split(":")[1]))


# --------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class Config:
    name: str
    solve: Callable[[CountingField, torch.Tensor, torch.Tensor, Solver], torch.Tensor]
    """Returns ``y(t1)`` with whatever graph or hook the method's backward needs."""
    forward_cost: str
    """How a forward evaluation is costed: "bare" (no graph) or "chain" (graph kept, backprop)."""
    backward_cost: str = "vjp"
    """How a backward evaluation is costed: "vjp" (its own vjp call) or "chain"."""
    ratio_defined: bool = True


def _neurode(gradient: str, gradient_options: dict | None = None):
    def solve(field, y0, t, solver):
        return neurode.solve(
            field,
            y0,
            t,
            gradient=gradient,
            gradient_options=gradient_options,
            **solver.neurode_kwargs(),
        ).ys[-1]

    return solve


def _torchdiffeq(adjoint: bool, seminorm: bool = False):
    def solve(field, y0, t, solver):
        import torchdiffeq

        kwargs = solver.neurode_kwargs()
        if adjoint:
            if seminorm:
                kwargs["adjoint_options"] = dict(norm="seminorm")
            return torchdiffeq.odeint_adjoint(field, y0, t, **kwargs)[-1]
        return torchdiffeq.odeint(field, y0, t, **kwargs)[-1]

    return solve


def _torchode(field, y0, t, solver):
    import torchode

    term = torchode.ODETerm(field)
    step_method = torchode.Dopri5(term=term)
    controller = torchode.IntegralController(atol=solver.atol, rtol=solver.rtol, term=term)
    adjoint = torchode.AutoDiffAdjoint(
        step_method, controller, backprop_through_step_size_control=False
    )
    problem = torchode.InitialValueProblem(y0=y0, t_eval=t.expand(y0.shape[0], -1))
    return adjoint.solve(problem).ys[:, -1]


def configurations(solver: Solver) -> list[Config]:
    registered = set(gradient_registry.names())
    configs = [
        Config("neurode direct", _neurode("direct"), forward_cost="chain"),
        Config("neurode backsolve", _neurode("backsolve"), forward_cost="bare"),
    ]
    if solver.steps is None:
        configs.append(
            Config(
                "neurode backsolve seminorm",
                _neurode("backsolve", {"adjoint_options": {"norm": "seminorm"}}),
                forward_cost="bare",
            )
        )
    configs.append(
        Config(
            "neurode checkpoint",
            _neurode("checkpoint"),
            forward_cost="bare",
            backward_cost="chain",
        )
    )
    if "reversible" in registered:
        configs.append(Config("neurode reversible", _neurode("reversible"), forward_cost="bare"))
    if "forward" in registered and solver.steps is None:
        configs.append(
            Config("neurode forward", _neurode("forward"), forward_cost="bare", ratio_defined=False)
        )
    if solver.steps is not None:
        return configs
    configs += [
        Config("torchdiffeq odeint", _torchdiffeq(adjoint=False), forward_cost="chain"),
        Config("torchdiffeq odeint_adjoint", _torchdiffeq(adjoint=True), forward_cost="bare"),
        Config(
            "torchdiffeq odeint_adjoint seminorm",
            _torchdiffeq(adjoint=True, seminorm=True),
            forward_cost="bare",
        ),
        Config("torchode autodiff", _torchode, forward_cost="chain"),
    ]
    return configs


# ------------------------------------------------------------------------- measuring
@dataclass
class Run:
    seconds: float
    nfe_forward: int
    nfe_backward: int
    gradient: list[torch.Tensor]


def run_once(config: Config, field: CountingField, y0: torch.Tensor, solver: Solver) -> Run:
    t = torch.tensor([0.0, T_END], dtype=DTYPE)
    y = y0.clone().requires_grad_(True)
    params = list(field.parameters())
    field.reset_calls()
    start = time.process_time()
    y_end = config.solve(field, y, t, solver)
    forward_calls = field.calls
    gradient = torch.autograd.grad((y_end**2).sum(), [y, *params])
    seconds = time.process_time() - start
    return Run(seconds, forward_calls, field.calls - forward_calls, list(gradient))


@dataclass
class Costs:
    """Seconds per evaluation of ``f``, three ways."""

    bare: float
    """No graph."""
    vjp: float
    """With its graph and its own vector-Jacobian product call for ``(y, θ)``."""
    chain: float
    """With its graph, inside a chain of evaluations backpropagated once."""

    def of(self, kind: str) -> float:
        return getattr(self, kind)


def evaluation_costs(field: CountingField, y0: torch.Tensor, calls: int = 40) -> Costs:
    """Seconds per evaluation, each timed over a loop of ``calls`` evaluations."""
    t = torch.zeros((), dtype=DTYPE)
    params = list(field.parameters())
    y = y0.detach().requires_grad_(True)
    torch.autograd.grad(field(t, y), [y, *params], y0)  # first-call allocations
    start = time.process_time()
    with torch.no_grad():
        for _ in range(calls):
            field(t, y0)
    bare = (time.process_time() - start) / calls

    y = y0.detach().requires_grad_(True)
    start = time.process_time()
    for _ in range(calls):
        out = field(t, y)
        torch.autograd.grad(out, [y, *params], out)
    vjp = (time.process_time() - start) / calls

    start = time.process_time()
    state = y
    for _ in range(calls):
        state = state + 1e-3 * field(t, state)
    torch.autograd.grad(state, [y, *params], state.detach())
    chain = (time.process_time() - start) / calls
    return Costs(bare, vjp, chain)


def reference_gradient(field: CountingField, y0: torch.Tensor) -> list[torch.Tensor]:
    tight = Config("reference", _neurode("direct"), forward_cost="chain")
    return run_once(tight, field, y0, Solver(rtol=1e-12, atol=1e-14)).gradient


def relative_error(gradient: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    g = torch.cat([x.reshape(-1) for x in gradient])
    r = torch.cat([x.reshape(-1) for x in reference])
    return float((g - r).norm() / r.norm())


class _TooSlow(Exception):
    pass


def _with_time_limit(seconds: float, fn: Callable[[], Run]) -> Run | None:
    def alarm(signum, frame):
        raise _TooSlow

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(max(1, int(seconds)))
    try:
        return fn()
    except _TooSlow:
        return None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def measure_memory(config_name: str, dim: int, batch: int, solver: Solver) -> float:
    """Peak resident-memory growth (MiB) of one gradient, in a fresh subprocess."""
    command = [
        sys.executable,
        __file__,
        "--memory-probe",
        config_name,
        "--probe-dim",
        str(dim),
        "--probe-batch",
        str(batch),
        "--probe-solver",
        solver.label(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        return math.nan
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(config_name: str, dim: int, batch: int, solver: Solver) -> None:
    """Print the growth of the resident set's high-water mark over one gradient.

    Linux resets the high-water mark (VmHWM) to the current resident set when
    ``5`` is written to ``/proc/self/clear_refs``.
    """
    torch.set_num_threads(1)
    field, y0 = make_problem(dim, batch)
    config = next(c for c in configurations(solver) if c.name == config_name)
    # Warm-up on a short span: lazy initialisation is not the method's memory.
    warm_solver = Solver(steps=2) if solver.steps is not None else solver
    t_short = torch.tensor([0.0, 0.01], dtype=DTYPE)
    y = y0.clone().requires_grad_(True)
    torch.autograd.grad((config.solve(field, y, t_short, warm_solver) ** 2).sum(), y)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = _status_mib("VmRSS")
    run_once(config, field, y0, solver)
    print(json.dumps({"peak_mib": max(_status_mib("VmHWM") - before, 0.0)}))


# --------------------------------------------------------------------------- reports
@dataclass
class Row:
    name: str
    seconds: float
    nfe_forward: int
    nfe_backward: int
    ratio: float
    memory_mib: float
    error: float
    note: str = ""


def compare(
    dim: int,
    batch: int,
    solver: Solver,
    repeats: int,
    memory: bool,
    time_limit: float,
    reference: list[torch.Tensor] | None = None,
) -> list[Row]:
    torch.set_num_threads(1)
    field, y0 = make_problem(dim, batch)
    configs = configurations(solver)
    if reference is None:
        reference = reference_gradient(field, y0)
    runs: dict[str, list[Run]] = {c.name: [] for c in configs}
    costs: list[Costs] = []
    active = list(configs)
    # Round 0 warms up (first-call allocations, lazy imports) and is not kept. Costs
    # are timed in every round, between the runs, so they see the same load.
    for round_index in range(repeats + 1):
        if round_index:
            costs.append(evaluation_costs(field, y0))
        for config in list(active):
            run = _with_time_limit(time_limit, lambda c=config: run_once(c, field, y0, solver))
            if run is None:
                active.remove(config)
            elif round_index:
                runs[config.name].append(run)
    cost = Costs(
        *(statistics.median(c.of(kind) for c in costs) for kind in ("bare", "vjp", "chain"))
    )
    print(
        f"\n(d={dim}, B={batch}, {solver.label()}: per evaluation c_bare "
        f"{cost.bare * 1e6:.0f} us, c_vjp {cost.vjp * 1e6:.0f} us, "
        f"c_chain {cost.chain * 1e6:.0f} us)"
    )
    rows = []
    for config in configs:
        done = runs[config.name]
        if not done:
            note = f"> {time_limit:.0f} s, stopped"
            rows.append(Row(config.name, math.nan, 0, 0, math.nan, math.nan, math.nan, note))
            continue
        seconds = statistics.median(r.seconds for r in done)
        last = done[-1]
        work = last.nfe_forward * cost.of(config.forward_cost)
        work += last.nfe_backward * cost.of(config.backward_cost)
        ratio = seconds / work if config.ratio_defined and work > 0 else math.nan
        peak = measure_memory(config.name, dim, batch, solver) if memory else math.nan
        rows.append(
            Row(
                config.name,
                seconds,
                last.nfe_forward,
                last.nfe_backward,
                ratio,
                peak,
                relative_error(last.gradient, reference),
            )
        )
    return rows


def _format(value: float, spec: str) -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def print_table(title: str, rows: list[Row], extra: tuple[str, list[str]] | None = None) -> None:
    print(f"\n### {title}\n")
    head = [
        "method",
        "time (ms)",
        "NFE fwd",
        "NFE bwd",
        "time ratio",
        "peak mem (MiB)",
        "grad rel. error",
    ]
    if extra:
        head.insert(1, extra[0])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for k, row in enumerate(rows):
        cells = [
            row.name,
            row.note or _format(row.seconds * 1e3, ".1f"),
            "n/a" if row.note else str(row.nfe_forward),
            "n/a" if row.note else str(row.nfe_backward),
            _format(row.ratio, ".2f"),
            _format(row.memory_mib, ".1f"),
            _format(row.error, ".1e"),
        ]
        if extra:
            cells.insert(1, extra[1][k])
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 32])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--sweep-batch", type=int, default=16)
    parser.add_argument("--sweep-dim", type=int, default=2)
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per gradient")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--quick", action="store_true", help="smoke run: small and few")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    parser.add_argument("--probe-dim", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--probe-batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--probe-solver", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.memory_probe:
        memory_probe(
            args.memory_probe, args.probe_dim, args.probe_batch, Solver.parse(args.probe_solver)
        )
        return
    if args.quick:
        args.dims, args.repeats, args.steps = [2], 2, [100, 1000]

    print(f"torch {torch.__version__}, threads 1, float64, t in [0, {T_END}]")
    for dim in args.dims:
        rows = compare(dim, args.batch, Solver(), args.repeats, not args.no_memory, args.time_limit)
        print_table(f"d={dim}, B={args.batch}, dopri5 rtol=1e-7 atol=1e-9", rows)

    if args.no_sweep:
        return
    field, y0 = make_problem(args.sweep_dim, args.sweep_batch)
    reference = reference_gradient(field, y0)
    sweep: list[Row] = []
    steps_column: list[str] = []
    for steps in args.steps:
        repeats = max(1, args.repeats // 3) if steps >= 10000 else max(1, args.repeats // 2)
        rows = compare(
            args.sweep_dim,
            args.sweep_batch,
            Solver(steps=steps),
            repeats,
            not args.no_memory,
            args.time_limit,
            reference,
        )
        sweep += rows
        steps_column += [str(steps)] * len(rows)
    order = sorted(range(len(sweep)), key=lambda k: (sweep[k].name, int(steps_column[k])))
    print_table(
        f"Fixed-step rk4 against the number of steps, d={args.sweep_dim}, B={args.sweep_batch}",
        [sweep[k] for k in order],
        ("steps", [steps_column[k] for k in order]),
    )


if __name__ == "__main__":
    main()
