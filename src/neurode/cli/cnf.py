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

``--quick`` trains a smaller sample for fewer epochs (a few minutes on two
CPU cores); every epoch is checkpointed, and ``--resume`` continues an
interrupted run.

Examples::

    neurode cnf --dataset 8gaussians --quick
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
from ..train.run_folder import RunFolder
from ._common import (
    HelpFormatter,
    add_run_options,
    apply_quick,
    apply_threads,
    arguments_record,
    plain_text,
    require_at_least_one,
    require_method,
    require_positive,
    write_metrics,
)

__all__ = ["add_parser", "run"]

_PLOT_LIMIT = 4.5
_OUTPUTS = ("metrics.json", "density.png", "samples.png", "flow.png")
# --quick: half the sample and two thirds of the epochs (measured times in the README).
QUICK = {"epochs": 20, "train_size": 2048, "test_size": 1024, "batch_size": 256}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "cnf",
        help="train a continuous normalizing flow (FFJORD) on a 2-D toy density",
        description=plain_text(__doc__),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--dataset", choices=TOY_DENSITIES, default="8gaussians", help="toy density to learn"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few minutes' run: "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
        + " unless given",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="passes over the training sample (default 30)"
    )
    parser.add_argument(
        "--train-size", type=int, default=None, help="training sample size (default 4096)"
    )
    parser.add_argument(
        "--test-size", type=int, default=None, help="test sample size (default 2048)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="samples per iteration (default 512)"
    )
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


_DEFAULTS = {"epochs": 30, "train_size": 4096, "test_size": 2048, "batch_size": 512}


def _check_arguments(args: argparse.Namespace) -> None:
    apply_quick(args, QUICK, _DEFAULTS)
    apply_threads(args)
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
    settings = arguments_record(args)
    for key in ("out", "resume", "overwrite", "quiet", "threads"):
        settings.pop(key)
    with RunFolder(
        args.out, "cnf", settings, resume=args.resume, overwrite=args.overwrite, outputs=_OUTPUTS
    ) as folder:
        _train_and_report(args, folder)
        folder.finish()
    return 0


def _train_and_report(args: argparse.Namespace, folder: RunFolder) -> None:
    torch.manual_seed(args.seed)
    data_generator = torch.Generator().manual_seed(args.seed)
    train = sample_toy_density(args.dataset, args.train_size, generator=data_generator)
    test = sample_toy_density(args.dataset, args.test_size, generator=data_generator)
    model = build_model(args).to(train.dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    batches_per_epoch = math.ceil(args.train_size / args.batch_size)
    history: dict[str, list[float]] = {"loss": [], "nfe_forward": [], "nfe_backward": []}
    start_epoch, train_seconds = 0, 0.0
    saved = folder.load_state("training.pt", model=model, optimizer=optimizer)
    if saved is not None:
        start_epoch, history, train_seconds = saved["epoch"], saved["history"], saved["seconds"]
    progress = ProgressBar(
        args.epochs * batches_per_epoch,
        initial=start_epoch * batches_per_epoch,
        description=args.dataset,
        enabled=not args.quiet,
    )
    for epoch in range(start_epoch, args.epochs):
        start = time.perf_counter()
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
        train_seconds += time.perf_counter() - start
        folder.save_state(
            "training.pt",
            {"epoch": epoch + 1, "history": history, "seconds": train_seconds},
            model=model,
            optimizer=optimizer,
        )
    progress.close()

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
    metrics_path = write_metrics(args.out, metrics)  # first: drawing may fail (a full disk)
    _print_summary(metrics, args)
    _plot(model, train, test, args)
    print(f"wrote {metrics_path} and plots")


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
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        print(f"neurode cnf: plots skipped: {error}")
        return
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

    figure = Figure(figsize=(9, 4.8), layout="constrained")
    axes = figure.subplots(1, 2)
    axes[0].hist2d(
        train[:, 0].numpy(),
        train[:, 1].numpy(),
        bins=args.grid,
        range=[[-limit, limit], [-limit, limit]],
        cmap="viridis",
    )
    axes[0].set_title(f"training data ({args.dataset}), histogram")
    axes[1].imshow(
        log_density.exp().reshape(args.grid, args.grid).numpy(),
        origin="lower",
        extent=(-limit, limit, -limit, limit),
        cmap="viridis",
    )
    axes[1].set_title("learned density p(x)")
    _save(figure, args.out / "density.png", axes)

    figure = Figure(figsize=(9, 4.8), layout="constrained")
    axes = figure.subplots(1, 2)
    axes[0].scatter(test[:, 0], test[:, 1], s=2)
    axes[0].set_title(f"test samples of {args.dataset}")
    axes[1].scatter(samples[:, 0], samples[:, 1], s=2, color="C1")
    axes[1].set_title("samples of the learned flow")
    _save(figure, args.out / "samples.png", axes)

    figure = Figure(figsize=(3 * len(times), 3.6), layout="constrained")
    axes = figure.subplots(1, len(times))
    for panel, t, points in zip(axes, times, path, strict=True):
        panel.scatter(points[:, 0], points[:, 1], s=2, c=base[:, 0], cmap="coolwarm")
        panel.set_title(f"t = {float(t):.2f}")
    figure.suptitle(
        "Gaussian samples (t = 0) carried by the flow to the learned density (t = T); "
        "colour: each sample's first coordinate at t = 0",
        fontsize=10,
    )
    _save(figure, args.out / "flow.png", axes)


def _save(figure: Any, path: Path, axes: Any) -> None:
    from ..train.files import write_atomically

    for axis in axes:
        axis.set_xlim(-_PLOT_LIMIT, _PLOT_LIMIT)
        axis.set_ylim(-_PLOT_LIMIT, _PLOT_LIMIT)
        axis.set_aspect("equal")
        axis.set_xticks([])
        axis.set_yticks([])
    write_atomically(path, lambda handle: figure.savefig(handle, format="png", dpi=100))
