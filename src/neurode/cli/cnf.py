"""``neurode cnf``: train a continuous normalizing flow (FFJORD) on a 2-D toy density.

The flow's vector field is a concatsquash MLP; training minimises the negative
log-likelihood of a fixed training sample (Hutchinson trace by default), plus
the RNODE kinetic and Jacobian terms when their weights are positive. The test
log-likelihood is computed with the exact trace. Writes to ``--out``:

- ``metrics.json``: arguments, test log-likelihood (and the true density's
  for ``8gaussians``), NFE per training iteration forward and backward, NFE of
  a test evaluation, loss history;
- ``density.png``: the learned density on a grid next to a histogram of the data;
- ``samples.png``: model samples next to data samples;
- ``flow.png``: base samples carried by the flow from ``t = 0`` to ``T``.

Examples::

    neurode cnf --dataset 8gaussians
    neurode cnf --dataset checkerboard --epochs 200 --kinetic 0.01 --jacobian 0.01
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..data.toy_densities import TOY_DENSITIES, eight_gaussians_log_density, sample_toy_density
from ..errors import NeurodeInputError, UnknownMethodError
from ..gradients import names as gradient_names
from ..models.cnf import CNF, TRACE_ESTIMATORS
from ..models.concatsquash import ConcatSquashMLP
from ..models.divergence import PROBE_DISTRIBUTIONS
from ..train.progress import ProgressBar
from ._common import (
    add_run_options,
    arguments_record,
    require_at_least_one,
    require_method,
    require_positive,
    write_metrics,
)

__all__ = ["add_parser", "run"]

_PLOT_LIMIT = 4.5


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "cnf",
        help="train a continuous normalizing flow (FFJORD) on a 2-D toy density",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dataset", choices=TOY_DENSITIES, default="8gaussians", help="toy density to learn"
    )
    parser.add_argument("--epochs", type=int, default=30, help="passes over the training sample")
    parser.add_argument("--train-size", type=int, default=4096, help="training sample size")
    parser.add_argument("--test-size", type=int, default=2048, help="test sample size")
    parser.add_argument("--batch-size", type=int, default=512, help="samples per iteration")
    parser.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate")
    parser.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=[64, 64, 64],
        help="widths of the concatsquash hidden layers",
    )
    parser.add_argument(
        "--activation",
        choices=("tanh", "softplus", "elu"),
        default="tanh",
        help="activation between concatsquash layers",
    )
    parser.add_argument("--t1", type=float, default=1.0, help="integration time T of the flow")
    parser.add_argument(
        "--trace", choices=TRACE_ESTIMATORS, default="hutchinson", help="divergence in training"
    )
    parser.add_argument(
        "--noise", choices=PROBE_DISTRIBUTIONS, default="rademacher", help="Hutchinson probes"
    )
    parser.add_argument("--method", default="dopri5", help="ODE solver (neurode method name)")
    parser.add_argument("--tol", type=float, default=1e-5, help="rtol = atol of the solver")
    parser.add_argument(
        "--gradient",
        default="direct",
        help="gradient method: direct, backsolve, checkpoint, ... (see neurode.solve)",
    )
    parser.add_argument(
        "--kinetic", type=float, default=0.0, help="RNODE weight of ∫‖f‖² dt (0: off)"
    )
    parser.add_argument(
        "--jacobian", type=float, default=0.0, help="RNODE weight of ∫‖∂f/∂z‖_F² dt (0: off)"
    )
    parser.add_argument("--grid", type=int, default=100, help="resolution of the density plot")
    add_run_options(parser, "cnf", run)
    return parser


def _check_arguments(args: argparse.Namespace) -> None:
    require_at_least_one(args, ("epochs", "train_size", "test_size", "batch_size"))
    if args.grid < 2:
        raise NeurodeInputError("--grid must be at least 2")
    if any(width < 1 for width in args.hidden):
        raise NeurodeInputError("--hidden widths must be positive")
    require_positive(args, ("lr", "t1", "tol"))
    for name in ("kinetic", "jacobian"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0):
            raise NeurodeInputError(f"--{name} must be a non-negative number, got {value}")
    require_method(args, "method")
    if args.gradient not in gradient_names():
        raise UnknownMethodError(
            f"unknown --gradient {args.gradient!r}; choose from {', '.join(gradient_names())}"
        )


def build_model(args: argparse.Namespace) -> CNF:
    """The CNF described by the command-line arguments."""
    dynamics = ConcatSquashMLP(2, args.hidden, activation=args.activation)
    return CNF(
        dynamics,
        2,
        t1=args.t1,
        trace=args.trace,
        noise=args.noise,
        method=args.method,
        rtol=args.tol,
        atol=args.tol,
        gradient=args.gradient,
        kinetic_weight=args.kinetic,
        jacobian_weight=args.jacobian,
    )


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    data_generator = torch.Generator().manual_seed(args.seed)
    train = sample_toy_density(args.dataset, args.train_size, generator=data_generator)
    test = sample_toy_density(args.dataset, args.test_size, generator=data_generator)
    model = build_model(args).to(train.dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    batches_per_epoch = math.ceil(args.train_size / args.batch_size)
    history: dict[str, list[float]] = {"loss": [], "nfe_forward": [], "nfe_backward": []}
    progress = ProgressBar(
        args.epochs * batches_per_epoch, description=args.dataset, enabled=not args.no_progress
    )
    start = time.perf_counter()
    for _ in range(args.epochs):
        order = torch.randperm(args.train_size)
        for first in range(0, args.train_size, args.batch_size):
            batch = train[order[first : first + args.batch_size]]
            before = model.nfe
            loss, _ = model.loss(batch)
            after_forward = model.nfe
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history["loss"].append(float(loss.detach()))
            history["nfe_forward"].append(after_forward - before)
            history["nfe_backward"].append(model.nfe - after_forward)
            progress.update(1, loss=f"{float(loss.detach()):.3f}", nfe=after_forward - before)
    progress.close()
    train_seconds = time.perf_counter() - start

    before = model.nfe
    test_log_likelihood = _mean_log_likelihood(model, test, args.batch_size)
    nfe_test = model.nfe - before
    reference = (
        float(eight_gaussians_log_density(test.double()).mean())
        if args.dataset == "8gaussians"
        else None
    )
    last = history["nfe_forward"][-batches_per_epoch:]
    last_backward = history["nfe_backward"][-batches_per_epoch:]
    metrics: dict[str, Any] = {
        "arguments": arguments_record(args),
        "test_log_likelihood": test_log_likelihood,
        "reference_log_likelihood": reference,
        "nfe_forward": sum(last) / len(last),
        "nfe_backward": sum(last_backward) / len(last_backward),
        "nfe_test_evaluation": nfe_test,
        "train_seconds": train_seconds,
        "history": history,
    }
    metrics_path = write_metrics(args.out, metrics)
    _plot(model, train, test, args)
    _print_summary(metrics, args)
    print(f"wrote {metrics_path} and plots")
    return 0


def _mean_log_likelihood(model: CNF, x: torch.Tensor, batch_size: int) -> float:
    total = 0.0
    with torch.no_grad():
        for first in range(0, len(x), batch_size):
            total += float(model.log_prob(x[first : first + batch_size], trace="exact").sum())
    return total / len(x)


def _print_summary(metrics: dict[str, Any], args: argparse.Namespace) -> None:
    reference = metrics["reference_log_likelihood"]
    rows = [
        ("dataset", args.dataset),
        ("test log-likelihood (nats)", f"{metrics['test_log_likelihood']:.4f}"),
        ("true density's log-likelihood", "n/a" if reference is None else f"{reference:.4f}"),
        ("NFE per iteration, forward", f"{metrics['nfe_forward']:.1f}"),
        ("NFE per iteration, backward", f"{metrics['nfe_backward']:.1f}"),
        ("NFE of one test evaluation", str(metrics["nfe_test_evaluation"])),
        ("training time (s)", f"{metrics['train_seconds']:.1f}"),
    ]
    print("| quantity | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def _plot(model: CNF, train: torch.Tensor, test: torch.Tensor, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    limit = _PLOT_LIMIT
    axis = torch.linspace(-limit, limit, args.grid)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)
    with torch.no_grad():
        log_density = torch.cat(
            [model.log_prob(chunk, trace="exact") for chunk in grid.split(args.batch_size)]
        )
        samples = model.sample(len(test), generator=torch.Generator().manual_seed(args.seed))
        base = torch.randn(len(test), 2, generator=torch.Generator().manual_seed(args.seed + 1))
        times = torch.linspace(0.0, model.t1, 5)
        path = model.flow(base, times)

    figure, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    axes[0].hist2d(
        train[:, 0].numpy(),
        train[:, 1].numpy(),
        bins=args.grid,
        range=[[-limit, limit], [-limit, limit]],
        cmap="viridis",
    )
    axes[0].set_title(f"data ({args.dataset})")
    axes[1].imshow(
        log_density.exp().reshape(args.grid, args.grid).numpy(),
        origin="lower",
        extent=(-limit, limit, -limit, limit),
        cmap="viridis",
    )
    axes[1].set_title("learned density")
    _save(figure, args.out / "density.png", axes)

    figure, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    axes[0].scatter(test[:, 0], test[:, 1], s=2)
    axes[0].set_title("data samples")
    axes[1].scatter(samples[:, 0], samples[:, 1], s=2, color="C1")
    axes[1].set_title("model samples")
    _save(figure, args.out / "samples.png", axes)

    figure, axes = plt.subplots(1, len(times), figsize=(3 * len(times), 3.2))
    for panel, t, points in zip(axes, times, path, strict=True):
        panel.scatter(points[:, 0], points[:, 1], s=2, c=base[:, 0], cmap="coolwarm")
        panel.set_title(f"t = {float(t):.2f}")
    _save(figure, args.out / "flow.png", axes)
    plt.close("all")


def _save(figure: Any, path: Path, axes: Any) -> None:
    for axis in axes:
        axis.set_xlim(-_PLOT_LIMIT, _PLOT_LIMIT)
        axis.set_ylim(-_PLOT_LIMIT, _PLOT_LIMIT)
        axis.set_aspect("equal")
        axis.set_xticks([])
        axis.set_yticks([])
    figure.tight_layout()
    figure.savefig(path, dpi=100)
