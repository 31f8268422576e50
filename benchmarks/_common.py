"""Helpers shared by the benchmark scripts.

- :func:`mlp_dynamics`: the standard neural vector field ``f(t, y) = MLP(y)``;
- :class:`CountingField`: a wrapper that counts evaluations and (through
  torchdiffeq's callback hooks) accepted and rejected steps;
- :func:`time_interleaved`: repeated timings of several cases, one of each per
  round, so that drifting machine load hits every case alike; summarise with
  :func:`median`;
- :func:`time_bare_calls`: the cost of one evaluation of ``f`` alone, the unit
  of the overhead ratio ``time / (NFE × cost of f)``;
- :func:`run_isolated`: run a function in a fresh Python process and get its
  result together with the peak resident memory it added (the peak is reset
  just before the call where Linux allows it);
- :func:`markdown_table`.

Timings default to the process's CPU time (``time.process_time``): with torch
on one thread it equals the wall time on an idle machine, and on a shared one
it leaves out the time spent waiting for a core. ``clock="wall"`` switches to
``time.perf_counter``.
"""

from __future__ import annotations

import importlib
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

CLOCKS: dict[str, Callable[[], float]] = {
    "cpu": time.process_time,
    "wall": time.perf_counter,
}


class MLPDynamics(nn.Module):
    """``f(t, y) = MLP(y)``: linear layers with tanh between them, ``t`` ignored."""

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        widths = [dim, *hidden, dim]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            if i > 0:
                layers.append(nn.Tanh())
            layers.append(nn.Linear(n_in, n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def mlp_dynamics(
    dim: int,
    hidden: Sequence[int] = (64, 64),
    *,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    requires_grad: bool = False,
) -> MLPDynamics:
    """The MLP vector field with layers ``[dim, *hidden, dim]``, seeded and in ``dtype``."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        module = MLPDynamics(dim, hidden).to(dtype)
    finally:
        torch.random.set_rng_state(generator_state)
    module.requires_grad_(requires_grad)
    return module


class CountingField(nn.Module):
    """Wraps a vector field and counts its evaluations and the solver's steps.

    torchdiffeq calls ``callback_accept_step`` / ``callback_reject_step`` on the
    function it is given; other libraries report steps themselves. With a
    ``clock`` (a key of :data:`CLOCKS`) it also adds up the time spent inside
    ``func`` (``seconds``): what an evaluation costs inside a solve, where
    memory traffic and allocation differ from a loop of bare calls.
    """

    def __init__(
        self,
        func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        clock: str | None = None,
    ):
        super().__init__()
        self.func = func
        self.nfe = 0
        self.accepted = 0
        self.rejected = 0
        self.seconds = 0.0
        self._now = None if clock is None else CLOCKS[clock]

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        if self._now is None:
            return self.func(t, y)
        start = self._now()
        out = self.func(t, y)
        self.seconds += self._now() - start
        return out

    def callback_accept_step(self, t0: Any, y0: Any, dt: Any) -> None:
        self.accepted += 1

    def callback_reject_step(self, t0: Any, y0: Any, dt: Any) -> None:
        self.rejected += 1


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def time_interleaved(
    cases: dict[str, Callable[[], Any]],
    repeats: int,
    *,
    warmup: int = 1,
    clock: str = "cpu",
) -> dict[str, list[float]]:
    """Seconds per call of each case, ``repeats`` times, one call of every case per round.

    The order of the cases rotates from round to round so that no case always
    runs right after the same neighbour.
    """
    now = CLOCKS[clock]
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = now()
            cases[name]()
            times[name].append(now() - start)
    return times


def bare_call_loop(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    t: torch.Tensor | None = None,
    calls: int = 50,
) -> Callable[[], None]:
    """A case for :func:`time_interleaved`: ``calls`` evaluations of ``func(t, y)``.

    Divide its time by ``calls`` for the cost of one evaluation. Each call gets
    a fresh 0-dim time tensor, as solvers hand out.
    """
    t_value = 0.0 if t is None else float(t)
    dtype = y.dtype if t is None else t.dtype

    def run() -> None:
        for _ in range(calls):
            func(torch.tensor(t_value, dtype=dtype), y)

    return run


def time_bare_calls(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    *,
    calls: int = 50,
    repeats: int = 7,
    clock: str = "cpu",
) -> float:
    """Median seconds of one evaluation ``func(t, y)`` alone."""
    times = time_interleaved(
        {"f": bare_call_loop(func, y, calls=calls)}, repeats, warmup=1, clock=clock
    )
    return median(times["f"]) / calls


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``), else its peak so far."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize()
    except OSError:
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (``VmHWM`` on Linux, else ``ru_maxrss``)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> None:
    """Restart the peak at the current resident size (Linux ``clear_refs``; else a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


_WORKER = """
import json, sys
sys.path[:0] = {paths!r}
from _common import _run_worker
print(json.dumps(_run_worker({target!r}, json.loads(sys.argv[1]))))
"""


def run_isolated(target: str, kwargs: dict[str, Any], *, timeout: float | None = None) -> dict:
    """Call ``module:function(**kwargs)`` in a fresh Python process.

    The function returns a JSON-serialisable dict; it comes back with
    ``peak_rss_added_bytes`` (peak resident memory during the call minus the
    resident memory before it) added. ``module`` is looked up on the
    benchmarks folder first, then on the usual path.
    """
    paths = [str(Path(__file__).resolve().parent)]
    code = _WORKER.format(paths=paths, target=target)
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{target}({kwargs}) failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _run_worker(target: str, kwargs: dict[str, Any]) -> dict:
    module_name, function_name = target.split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    reset_peak_rss()
    before = current_rss_bytes()
    output = dict(function(**kwargs))
    output["peak_rss_added_bytes"] = max(peak_rss_bytes() - before, 0)
    return output


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are turned into strings as they are."""
    lines = [
        "| " + " | ".join(str(h) for h in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
