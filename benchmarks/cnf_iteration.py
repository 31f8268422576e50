"""One FFJORD training iteration: neurode against torchdiffeq on the same model.

The model is the 2-D CNF of :mod:`neurode.models.cnf`: a concatsquash MLP
``2 -> 64 -> 64 -> 64 -> 2`` (tanh), Hutchinson trace with Rademacher probes,
batch 512, dopri5 at ``rtol = atol = 1e-5``, ``T = 1``. Both libraries solve
the very same augmented vector field (the CNF's own module, so the NFE counts
come from one counter), from the same weights and the same probes; only the
ODE solver and the gradient machinery differ:

- ``direct``: backpropagation through the solver steps
  (``neurode.solve(gradient="direct")`` vs ``torchdiffeq.odeint``);
- ``adjoint``: the backsolve adjoint, re-solving backwards in time
  (``neurode.solve(gradient="backsolve")`` vs ``torchdiffeq.odeint_adjoint``).

Each runs with and without the RNODE terms (kinetic energy and Jacobian
Frobenius norm, weight 0.01 each). Before timing, the weights are trained for
``--train-steps`` iterations on ``8gaussians`` so the flow is not the
near-identity of a fresh initialisation.

Repetitions are interleaved (every configuration once per round) and the table
shows medians. Memory: on CUDA, ``torch.cuda.max_memory_allocated`` over an
iteration; on CPU, the rise of the resident set size over a second iteration (polled
every 0.5 ms by a thread), each configuration in a fresh Python process started from the
same saved weights, batch and probes, with glibc's mmap threshold fixed at
16 KiB so that freed buffers go back to the system and the resident size
follows what torch holds.

Run::

    python benchmarks/cnf_iteration.py            # CPU, 5 rounds
    python benchmarks/cnf_iteration.py --device cuda --rounds 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchdiffeq

import neurode
from neurode.data.toy_densities import sample_toy_density
from neurode.models.cnf import CNF, standard_normal_log_prob
from neurode.models.concatsquash import ConcatSquashMLP
from neurode.models.divergence import sample_probe

BATCH = 512
TOL = 1e-5
REGULARISER_WEIGHT = 0.01


@dataclass
class _Measurement:
    seconds: float
    nfe_forward: int
    nfe_backward: int
    memory_bytes: int
    loss: float


def _solver(library: str, gradient: str) -> Callable:
    """``solve(func, y0, t) -> ys`` for one library and gradient method."""
    if library == "neurode":
        name = "direct" if gradient == "direct" else "backsolve"
        return lambda func, y0, t: (
            neurode.solve(func, y0, t, method="dopri5", rtol=TOL, atol=TOL, gradient=name).ys
        )
    if gradient == "direct":
        return lambda func, y0, t: torchdiffeq.odeint(
            func, y0, t, method="dopri5", rtol=TOL, atol=TOL
        )
    return lambda func, y0, t: torchdiffeq.odeint_adjoint(
        func, y0, t, method="dopri5", rtol=TOL, atol=TOL, adjoint_params=tuple(func.parameters())
    )


def _loss(cnf: CNF, solve: Callable, x: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """The CNF training loss of ``CNF.loss``, with the ODE solved by ``solve``."""
    field = cnf.field.for_solve(probe, cnf.regularised)
    extra = 3 if cnf.regularised else 1
    state = torch.cat([x, x.new_zeros(len(x), extra)], -1)
    times = torch.tensor([cnf.t1, 0.0], dtype=x.dtype, device=x.device)
    end = solve(field, state, times)[-1]
    loss = -(standard_normal_log_prob(end[:, :2]) - end[:, 2]).mean()
    if cnf.regularised:
        loss = loss - cnf.kinetic_weight * end[:, 3].mean() - cnf.jacobian_weight * end[:, 4].mean()
    return loss


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _ResidentPeak:
    """Highest resident size seen by a thread polling ``/proc/self/statm`` every 0.5 ms."""

    def __init__(self) -> None:
        self.peak = _resident_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _resident_bytes())
            time.sleep(5e-4)

    def __enter__(self) -> _ResidentPeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _resident_bytes())


def _iteration(cnf: CNF, solve: Callable, x: torch.Tensor, probe: torch.Tensor) -> _Measurement:
    cnf.zero_grad(set_to_none=True)
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start_nfe = cnf.nfe
    start = time.perf_counter()
    loss = _loss(cnf, solve, x, probe)
    forward_nfe = cnf.nfe - start_nfe
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated() if cuda else 0
    backward_nfe = cnf.nfe - start_nfe - forward_nfe
    return _Measurement(seconds, forward_nfe, backward_nfe, memory, float(loss.detach()))


def _train(cnf: CNF, steps: int) -> None:
    device = next(cnf.parameters()).device
    optimizer = torch.optim.Adam(cnf.parameters(), lr=5e-3)
    for _ in range(steps):
        x = sample_toy_density("8gaussians", BATCH).to(device)
        loss, _ = cnf.loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _configurations() -> list[tuple[str, str, bool]]:
    return [
        (library, gradient, regularised)
        for regularised in (False, True)
        for gradient in ("direct", "adjoint")
        for library in ("neurode", "torchdiffeq")
    ]


def _set_regularisers(cnf: CNF, regularised: bool) -> None:
    cnf.kinetic_weight = cnf.jacobian_weight = REGULARISER_WEIGHT if regularised else 0.0


def _new_cnf(device: torch.device) -> CNF:
    return CNF(ConcatSquashMLP(2, (64, 64, 64)), 2, rtol=TOL, atol=TOL).to(device)


def _cpu_peak_memory(setup: str, configuration: tuple[str, str, bool]) -> int:
    """Peak resident-size rise of one iteration, measured in a fresh process."""
    library, gradient, regularised = configuration
    command = [sys.executable, __file__, "--memory-probe", setup, library, gradient]
    command.append(str(int(regularised)))
    # A fixed mmap threshold makes glibc return every freed buffer above it to the
    # system at once, so the resident size follows the memory torch actually holds.
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "16384"}
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=environment)
    return int(result.stdout.split()[-1])


def _memory_probe(setup: str, library: str, gradient: str, regularised: bool) -> None:
    saved = torch.load(setup)
    cnf = _new_cnf(torch.device("cpu"))
    cnf.load_state_dict(saved["state"])
    _set_regularisers(cnf, regularised)
    solve = _solver(library, gradient)
    # A first iteration does the one-time initialisation (lazy imports, thread pools,
    # kernel caches); the second is measured.
    _iteration(cnf, solve, saved["x"], saved["probe"])
    before = _resident_bytes()
    with _ResidentPeak() as resident:
        _iteration(cnf, solve, saved["x"], saved["probe"])
    print(max(resident.peak - before, 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--train-steps", type=int, default=100, help="training before timing")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--memory-probe", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        setup, library, gradient, regularised = args.memory_probe
        _memory_probe(setup, library, gradient, bool(int(regularised)))
        return
    device = torch.device(args.device)

    torch.manual_seed(0)
    cnf = _new_cnf(device)
    _train(cnf, args.train_steps)
    generator = torch.Generator().manual_seed(1)
    x = sample_toy_density("8gaussians", BATCH, generator=generator)
    probe = sample_probe(x, "rademacher", generator)
    configurations = _configurations()
    results: dict[tuple, list[_Measurement]] = {c: [] for c in configurations}
    for round_index in range(args.rounds + 1):  # round 0 warms up and is discarded
        for configuration in configurations:
            library, gradient, regularised = configuration
            _set_regularisers(cnf, regularised)
            measurement = _iteration(
                cnf, _solver(library, gradient), x.to(device), probe.to(device)
            )
            if round_index:
                results[configuration].append(measurement)
    memory: dict[tuple, float] = {}
    for configuration in configurations:
        if device.type == "cuda":
            memory[configuration] = statistics.median(
                m.memory_bytes for m in results[configuration]
            )
        else:
            with tempfile.TemporaryDirectory() as folder:
                setup = os.path.join(folder, "setup.pt")
                torch.save({"state": cnf.state_dict(), "x": x, "probe": probe}, setup)
                memory[configuration] = _cpu_peak_memory(setup, configuration)

    print(
        f"CNF training iteration, 2-D, batch {BATCH}, Hutchinson (Rademacher), dopri5 "
        f"rtol=atol={TOL:g}, torch {torch.__version__}, device {device}, "
        f"median of {args.rounds} interleaved rounds\n"
    )
    memory_label = "peak CUDA MiB" if device.type == "cuda" else "peak RSS rise MiB"
    print(
        f"| RNODE | gradient | library | time ms | ratio to torchdiffeq | NFE fwd | NFE bwd | "
        f"{memory_label} | loss |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for configuration in configurations:
        library, gradient, regularised = configuration
        runs = results[configuration]
        reference = results[("torchdiffeq", gradient, regularised)]
        seconds = statistics.median(m.seconds for m in runs)
        ratio = seconds / statistics.median(m.seconds for m in reference)
        print(
            f"| {'yes' if regularised else 'no'} | {gradient} | {library} | {1e3 * seconds:.1f} | "
            f"{ratio:.2f} | {statistics.median(m.nfe_forward for m in runs):.0f} | "
            f"{statistics.median(m.nfe_backward for m in runs):.0f} | "
            f"{memory[configuration] / 2**20:.1f} | {runs[-1].loss:.4f} |"
        )


if __name__ == "__main__":
    main()
