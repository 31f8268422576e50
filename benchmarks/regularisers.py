"""Function evaluations during training, with and without the RNODE regularisers.

Finlay et al. (2020) add to the loss the kinetic energy
:math:`\\int \\lVert f \\rVert^2 dt` and the Jacobian Frobenius norm
:math:`\\int \\lVert \\partial f/\\partial y \\rVert_F^2 dt` of the learned vector
field; both favour simple, slowly varying dynamics that an adaptive solver
integrates in few steps. This script trains the same black-box neural ODE
(MLP ``2 -> 64 -> 64 -> 2``, tanh, float64, dopri5) with and without them on
two problems and reports how the cost of a solve evolves:

- ``pendulum``: 16 damped-pendulum trajectories (``neurode.data``, noise
  0.02), state ``(theta, omega)``, training window 0-10 s;
- ``spirals``: the counter-clockwise spirals of ``make_spirals_dataset``
  (one orientation: an autonomous 2-D field cannot carry both), 60 regular
  samples of each spiral's observed part plus noise 0.05.

Training: :func:`neurode.train.fit` with Adam, segments of 12 observations,
4 per trajectory and step, full batch. After every epoch the model solves the
whole training window of every trajectory (no gradient); its NFE is the
"rollout NFE", the cost a user pays to evaluate the model, and its mean
squared error against the data (without the regulariser) is the reported
loss. ``NFE/step`` is the training solves' forward NFE per step.

Run::

    python benchmarks/regularisers.py                  # 200 epochs, weight 0.01
    python benchmarks/regularisers.py --epochs 400 --weight 0.003
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from neurode import solve
from neurode.data import make_pendulum_dataset, make_spirals_dataset
from neurode.nn import MLPDynamics
from neurode.train import (
    TrainConfig,
    Trajectories,
    TrajectoryModel,
    TrajectoryObjective,
    fit,
)


def pendulum_data(seed: int) -> Trajectories:
    dataset = make_pendulum_dataset(16, noise_std=0.02, seed=seed)
    return Trajectories.from_tensors(dataset.times, dataset.noisy).window(end=dataset.t_split)


def spiral_data(seed: int) -> Trajectories:
    dataset = make_spirals_dataset(16, n_observations=50, noise_std=0.05, seed=seed)
    counter_clockwise = (~dataset.clockwise).nonzero().flatten()
    observed = dataset.dense[counter_clockwise, : dataset.n_observed_window]
    times = dataset.dense_times[: dataset.n_observed_window]
    every = max(1, observed.shape[1] // 60)
    generator = torch.Generator().manual_seed(seed)
    samples = observed[:, ::every]
    noisy = samples + 0.05 * torch.randn(samples.shape, generator=generator, dtype=samples.dtype)
    return Trajectories.from_tensors(times[::every], noisy)


PROBLEMS: dict[str, Callable[[int], Trajectories]] = {
    "pendulum": pendulum_data,
    "spirals": spiral_data,
}


@dataclass
class Run:
    problem: str
    regularised: bool
    step_nfe: list[int]
    rollout_nfe: list[int]
    rollout_mse: list[float]
    seconds: float


def train(problem: str, data: Trajectories, weight: float, args: argparse.Namespace) -> Run:
    torch.manual_seed(args.seed)
    dynamics = MLPDynamics(2, hidden=64, depth=2).to(torch.float64)
    regularisation = {"kinetic": weight, "jacobian": weight} if weight else None
    model = TrajectoryModel(
        dynamics, data, rtol=args.rtol, atol=args.atol, regularisation=regularisation
    )
    objective = TrajectoryObjective(
        model, data, segment_points=12, segments_per_step=4, autonomous=True
    )
    rollout_nfe: list[int] = []
    ((times, members),) = data.time_groups()
    y0 = data.first_values(members)
    target = torch.stack([data.values[i] for i in members])

    def evaluate(trained: TrajectoryModel) -> float:
        # The plain dynamics, without the regulariser's extra state and its
        # share of the error control: the solve a user of the model runs.
        solution = solve(trained.dynamics, y0, times, rtol=args.rtol, atol=args.atol)
        rollout_nfe.append(int(solution.stats["nfe"]))
        return float((solution.ys.transpose(0, 1) - target).pow(2).mean())

    started = time.process_time()
    result = fit(
        model,
        objective,
        len(data),
        TrainConfig(epochs=args.epochs, lr=args.lr, lr_final=args.lr / 10, seed=args.seed),
        validation=evaluate,
    )
    return Run(
        problem=problem,
        regularised=bool(weight),
        step_nfe=result.history.nfe_forward,
        rollout_nfe=rollout_nfe[1:],  # the first evaluation is of the untrained model
        rollout_mse=[loss for loss in result.history.validation_loss if loss is not None],
        seconds=time.process_time() - started,
    )


def _window_mean(values: list[float], fraction: float, where: str) -> float:
    size = max(1, round(fraction * len(values)))
    chosen = values[:size] if where == "first" else values[-size:]
    return statistics.fmean(chosen)


def markdown(runs: list[Run], weight: float) -> str:
    header = (
        "| problem | regulariser | NFE/step first 10% | NFE/step last 10% "
        "| rollout NFE first 10% | rollout NFE middle | rollout NFE last 10% "
        "| final MSE | CPU s |"
    )
    lines = [header, "|" + "---|" * 9]
    for run in runs:
        middle = run.rollout_nfe[len(run.rollout_nfe) // 2]
        lines.append(
            f"| {run.problem} | {f'kinetic + Jacobian, {weight:g}' if run.regularised else 'none'} "
            f"| {_window_mean(run.step_nfe, 0.1, 'first'):.0f} "
            f"| {_window_mean(run.step_nfe, 0.1, 'last'):.0f} "
            f"| {_window_mean(run.rollout_nfe, 0.1, 'first'):.0f} | {middle} "
            f"| {_window_mean(run.rollout_nfe, 0.1, 'last'):.0f} "
            f"| {run.rollout_mse[-1]:.3g} | {run.seconds:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=200, help="training epochs per run")
    parser.add_argument("--weight", type=float, default=0.01, help="weight of each regulariser")
    parser.add_argument("--lr", type=float, default=0.01, help="initial Adam learning rate")
    parser.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance")
    parser.add_argument("--atol", type=float, default=1e-8, help="absolute tolerance")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and weights")
    parser.add_argument(
        "--problems", default="pendulum,spirals", help="comma-separated: pendulum, spirals"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = []
    for problem in args.problems.split(","):
        data = PROBLEMS[problem](args.seed)
        for weight in (0.0, args.weight):
            runs.append(train(problem, data, weight, args))
            print(
                f"{problem:9s} weight {weight:<6g} rollout NFE per epoch:",
                " ".join(str(n) for n in runs[-1].rollout_nfe[:: max(1, args.epochs // 20)]),
                flush=True,
            )
    print()
    print(markdown(runs, args.weight))


if __name__ == "__main__":
    main()
