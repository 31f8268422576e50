"""``neurode latent``: latent ODE against recurrent baselines on irregular time series.

Two experiments, each on a shared time grid split into an observed window
(the first half) and an extrapolation window (the second half):

- ``--dataset spirals``: the setup of Chen et al. (2018, §5.1): noisy 2-D
  spirals, half clockwise, each observed at ``--n-obs`` random grid points of
  a 100-point observed window (one run per value given). Reports predictive
  RMSE against the noise-free spiral over the observed window (interpolation
  and denoising) and over the next 100 grid points (extrapolation). The paper
  reports RMSE 0.394/0.320/0.181 for its RNN and 0.164/0.150/0.135 for the
  latent ODE with 30/50/100 observations.
- ``--dataset pendulum``: damped pendulum ``(θ, ω)``; each series observes
  ``--n-obs`` random grid points of its observed window, and each observed
  value is missing independently with probability ``--missing``. Reports
  interpolation and extrapolation MSE against the noise-free states.

Models (``--models``): ``latent_ode`` (ODE-RNN encoder run backwards in time,
trained by the ELBO on the observed values), ``ode_rnn`` and ``rnn`` (a GRU
given the time gaps), the last two trained to predict each observation from
those before it. Every model reads the same masked series. The latent ODE is
scored by decoding its posterior mean; the recurrent models by decoding the
state each grid time is reached with, which past the observed window evolves
without inputs.

Writes ``metrics.json`` (arguments, per-model errors, timings, loss history),
and plots to ``--out``: posterior samples of the latent ODE over the
observations and the extrapolation, with the baselines' predictions.

The defaults take a few minutes on two CPU cores (one torch thread,
``--threads``). Every epoch of every model is checkpointed; ``--resume``
continues an interrupted run.

Examples::

    neurode latent --dataset spirals
    neurode latent --dataset spirals --n-obs 30 50 100 --epochs 300 --train-size 1000
    neurode latent --dataset pendulum --missing 0.3
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.irregular import subsample_grid
from ..data.pendulum import make_pendulum_dataset
from ..data.spirals import make_spirals_dataset
from ..errors import NeurodeInputError
from ..models.latent_ode import LatentODE
from ..models.ode_rnn import ODERNN
from ..models.rnn_baseline import TimeGapGRU
from ..models.sequence_predictor import SequencePredictor
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

DATASETS = ("spirals", "pendulum")
MODELS = ("latent_ode", "ode_rnn", "rnn")
_DEFAULT_MODELS = {"spirals": ["latent_ode", "rnn"], "pendulum": ["latent_ode", "ode_rnn", "rnn"]}
_PAPER_SPIRAL_RMSE = {
    "rnn": {30: 0.3937, 50: 0.3202, 100: 0.1813},
    "latent_ode": {30: 0.1642, 50: 0.1502, 100: 0.1346},
}
_SPIRAL_WINDOW = 100
_PENDULUM_WINDOW = 50
_PENDULUM_SPAN = 10.0
_GRADIENT_CLIP = 10.0
_PLOTTED_SERIES = 3
_PLOTTED_SAMPLES = 5
_DEFAULTS = {"epochs": 60, "train_size": 500}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "latent",
        help="latent ODE vs ODE-RNN vs RNN on irregular spirals or pendulum series",
        description=plain_text(__doc__),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--dataset", choices=DATASETS, default="spirals", help="experiment")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=None,
        help="models to train (default: latent_ode rnn for spirals, all three for pendulum)",
    )
    parser.add_argument(
        "--n-obs",
        type=int,
        nargs="+",
        default=[30],
        help="observations per series in the observed window; one run per value "
        f"(at most {_SPIRAL_WINDOW} for spirals, {_PENDULUM_WINDOW} for pendulum)",
    )
    parser.add_argument(
        "--missing",
        type=float,
        default=0.2,
        help="pendulum: probability that an observed value is missing (per feature)",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="passes over the training series (default 60)"
    )
    parser.add_argument(
        "--train-size", type=int, default=None, help="training series (default 500)"
    )
    parser.add_argument("--test-size", type=int, default=100, help="test series")
    parser.add_argument("--batch-size", type=int, default=100, help="series per iteration")
    parser.add_argument(
        "--lr", type=float, default=1e-2, help="initial Adam learning rate (decays 10x)"
    )
    parser.add_argument("--latent-dim", type=int, default=4, help="latent ODE state size")
    parser.add_argument("--hidden", type=int, default=25, help="hidden size of encoders and RNNs")
    parser.add_argument("--width", type=int, default=20, help="width of vector-field/decoder MLPs")
    parser.add_argument(
        "--obs-std",
        type=float,
        default=None,
        help="observation noise of the latent ODE likelihood (default: the data's noise)",
    )
    parser.add_argument(
        "--noise", type=float, default=None, help="data noise std (default: 0.1 / 0.05)"
    )
    parser.add_argument("--method", default="dopri5", help="solver of the latent ODE")
    parser.add_argument("--tol", type=float, default=1e-3, help="rtol of the latent ODE solver")
    parser.add_argument(
        "--encoder-method",
        default="euler",
        help="solver between time points of the ODE-RNN encoder and baseline (one step per gap "
        "for fixed-step methods)",
    )
    add_run_options(parser, "latent", run)
    return parser


@dataclass(frozen=True)
class _Task:
    """Series on a shared grid; the first ``window`` grid points are the observed window."""

    label: str
    n_obs: int
    times: torch.Tensor  # (G,)
    clean: torch.Tensor  # (N, G, D)
    noisy: torch.Tensor  # (N, G, D), meaningful where mask is 1
    mask: torch.Tensor  # (N, G, D), zero past the observed window
    window: int
    n_train: int
    noise_std: float


def _check_arguments(args: argparse.Namespace) -> None:
    apply_quick(args, {}, _DEFAULTS)
    apply_threads(args)
    require_at_least_one(
        args, ("epochs", "test_size", "batch_size", "latent_dim", "hidden", "width")
    )
    if args.train_size < 2:
        raise NeurodeInputError("--train-size must be at least 2")
    limit = _SPIRAL_WINDOW if args.dataset == "spirals" else _PENDULUM_WINDOW
    for n_obs in args.n_obs:
        if not 1 <= n_obs <= limit:
            raise NeurodeInputError(
                f"--n-obs {n_obs} is outside 1..{limit}, the grid points of the observed window"
            )
    if not 0 <= args.missing < 1:
        raise NeurodeInputError(f"--missing must be in [0, 1), got {args.missing}")
    require_positive(args, ("lr", "tol"))
    for name in ("obs_std", "noise"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise NeurodeInputError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
    if args.obs_std == 0:
        raise NeurodeInputError("--obs-std must be positive")
    for option in ("method", "encoder_method"):
        require_method(args, option)


def _spiral_task(args: argparse.Namespace, n_obs: int) -> _Task:
    noise = 0.1 if args.noise is None else args.noise
    data = make_spirals_dataset(
        args.train_size + args.test_size,
        n_obs,
        noise_std=noise,
        n_window=2 * _SPIRAL_WINDOW,
        observed_fraction=0.5,
        seed=args.seed,
        dtype=torch.float32,
    )
    noisy = torch.zeros_like(data.dense)
    mask = torch.zeros_like(data.dense)
    rows = torch.arange(data.n_spirals)[:, None]
    noisy[rows, data.observed_indices] = data.observed
    mask[rows, data.observed_indices] = 1.0
    return _Task(
        label=f"spirals, {n_obs} obs",
        n_obs=n_obs,
        times=data.dense_times,
        clean=data.dense,
        noisy=noisy,
        mask=mask,
        window=data.n_observed_window,
        n_train=args.train_size,
        noise_std=noise,
    )


def _pendulum_task(args: argparse.Namespace, n_obs: int) -> _Task:
    noise = 0.05 if args.noise is None else args.noise
    n_series = args.train_size + args.test_size
    data = make_pendulum_dataset(
        n_series,
        t_end=_PENDULUM_SPAN,
        n_points=2 * _PENDULUM_WINDOW,
        noise_std=noise,
        irregular=False,
        train_fraction=0.5,
        seed=args.seed,
        dtype=torch.float32,
    )
    generator = torch.Generator().manual_seed(args.seed + 1)
    chosen = subsample_grid(data.times[: data.n_train], n_series, n_obs, seed=generator)
    mask = torch.zeros_like(data.clean)
    rows = torch.arange(n_series)[:, None]
    mask[rows, chosen.indices] = 1.0
    present = torch.rand(mask.shape, generator=generator) >= args.missing
    mask = mask * present.to(mask.dtype)
    return _Task(
        label=f"pendulum, {n_obs} obs, {args.missing:.0%} missing",
        n_obs=n_obs,
        times=data.times,
        clean=data.clean,
        noisy=data.noisy,
        mask=mask,
        window=data.n_train,
        n_train=args.train_size,
        noise_std=noise,
    )


def _build_model(name: str, args: argparse.Namespace, task: _Task) -> nn.Module:
    dim = task.clean.shape[-1]
    if name == "rnn":
        model: nn.Module = SequencePredictor(
            TimeGapGRU(dim, args.hidden), dim, decoder_width=args.width
        )
        return model.to(task.clean.dtype)
    ode_rnn = ODERNN(dim, args.hidden, method=args.encoder_method, dynamics_width=args.width)
    if name == "ode_rnn":
        model = SequencePredictor(ode_rnn, dim, decoder_width=args.width)
    else:
        obs_std = args.obs_std if args.obs_std is not None else max(task.noise_std, 1e-2)
        model = LatentODE(
            dim,
            args.latent_dim,
            encoder=ode_rnn,
            dynamics_width=args.width,
            decoder_width=args.width,
            obs_std=obs_std,
            method=args.method,
            rtol=args.tol,
            atol=args.tol / 10,
        )
    return model.to(task.clean.dtype)


def _observed_window(task: _Task, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
    w = task.window
    return task.times[:w], task.noisy[index, :w], task.mask[index, :w]


def _training_loss(name: str, model: nn.Module, task: _Task, index: torch.Tensor) -> torch.Tensor:
    times, values, mask = _observed_window(task, index)
    if name == "latent_ode":
        # The ELBO per observed value keeps the learning rate meaningful across --n-obs.
        return -model.elbo(times, values, mask).objective * len(index) / mask.sum().clamp_min(1)
    return model.loss(times, values, mask)


def _train(
    name: str,
    model: nn.Module,
    task: _Task,
    args: argparse.Namespace,
    progress: ProgressBar,
    folder: RunFolder,
) -> tuple[list[float], float]:
    """Train one model; every epoch is checkpointed, and a checkpoint is resumed from."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.1 ** (1 / args.epochs))
    batches = math.ceil(task.n_train / args.batch_size)
    key = f"n{task.n_obs}-{name}.pt"
    history, start_epoch, seconds = [], 0, 0.0
    saved = folder.load_state(key, model=model, optimizer=optimizer, schedule=schedule)
    if saved is not None:
        history, start_epoch, seconds = saved["history"], saved["epoch"], saved["seconds"]
        progress.update(start_epoch * batches, model=name)
    for epoch in range(start_epoch, args.epochs):
        started = time.perf_counter()
        order = torch.randperm(task.n_train)
        total = 0.0
        for first in range(0, task.n_train, args.batch_size):
            loss = _training_loss(name, model, task, order[first : first + args.batch_size])
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), _GRADIENT_CLIP)
            optimizer.step()
            total += float(loss.detach())
            progress.update(1, model=name, loss=f"{float(loss.detach()):.3f}")
        schedule.step()
        history.append(total / batches)
        seconds += time.perf_counter() - started
        folder.save_state(
            key,
            {"epoch": epoch + 1, "history": history, "seconds": seconds},
            model=model,
            optimizer=optimizer,
            schedule=schedule,
        )
    return history, seconds


def _predict(name: str, model: nn.Module, task: _Task, index: torch.Tensor) -> torch.Tensor:
    """Predictions ``(len(index), G, D)`` on the whole grid from the observed window."""
    with torch.no_grad():
        if name == "latent_ode":
            return model.predict(*_observed_window(task, index), query_times=task.times)
        return model(task.times, task.noisy[index], task.mask[index])


def _errors(prediction: torch.Tensor, truth: torch.Tensor, window: int) -> dict[str, float]:
    squared = (prediction - truth) ** 2
    interpolation = float(squared[:, :window].mean())
    extrapolation = float(squared[:, window:].mean())
    return {
        "interpolation_mse": interpolation,
        "extrapolation_mse": extrapolation,
        "interpolation_rmse": math.sqrt(interpolation),
        "extrapolation_rmse": math.sqrt(extrapolation),
        "rmse": math.sqrt(float(squared.mean())),
    }


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    models = args.models or _DEFAULT_MODELS[args.dataset]
    settings = arguments_record(args)
    for key in ("out", "resume", "overwrite", "quiet", "threads"):
        settings.pop(key)
    outputs = ("metrics.json", *(f"{args.dataset}_n{n_obs}.png" for n_obs in args.n_obs))
    with RunFolder(
        args.out, "latent", settings, resume=args.resume, overwrite=args.overwrite, outputs=outputs
    ) as folder:
        _run(args, models, folder)
        folder.finish()
    return 0


def _run(args: argparse.Namespace, models: list[str], folder: RunFolder) -> None:
    make_task = _spiral_task if args.dataset == "spirals" else _pendulum_task
    tasks = [make_task(args, n_obs) for n_obs in args.n_obs]
    iterations = (
        len(tasks) * len(models) * args.epochs * math.ceil(args.train_size / args.batch_size)
    )
    progress = ProgressBar(iterations, description=args.dataset, enabled=not args.quiet)
    results: list[dict[str, Any]] = []
    trained_per_task = []
    for task in tasks:
        test = torch.arange(task.n_train, task.clean.shape[0])
        trained: dict[str, nn.Module] = {}
        for name in models:
            torch.manual_seed(args.seed)
            model = _build_model(name, args, task)
            history, seconds = _train(name, model, task, args, progress, folder)
            errors = _errors(_predict(name, model, task, test), task.clean[test], task.window)
            results.append(
                {
                    "task": task.label,
                    "n_obs": task.n_obs,
                    "model": name,
                    **errors,
                    "train_seconds": seconds,
                    "loss_history": history,
                }
            )
            trained[name] = model
        trained_per_task.append((task, trained, test[:_PLOTTED_SERIES]))
    progress.close()
    metrics = {
        "dataset": args.dataset,
        "arguments": arguments_record(args),
        "results": results,
    }
    if args.dataset == "spirals":
        metrics["paper_rmse"] = _PAPER_SPIRAL_RMSE
    metrics_path = write_metrics(args.out, metrics)  # first: drawing may fail (a full disk)
    _print_table(results, args.dataset)
    for task, trained, shown in trained_per_task:
        _plot(task, trained, shown, args)
    print(f"wrote {metrics_path} and plots")


def _print_table(results: list[dict[str, Any]], dataset: str) -> None:
    if dataset == "spirals":
        print(
            "| observations | model | interpolation RMSE | extrapolation RMSE | RMSE | "
            "paper RMSE | train s |"
        )
        print("|---|---|---|---|---|---|---|")
        for row in results:
            paper = _PAPER_SPIRAL_RMSE.get(row["model"], {}).get(row["n_obs"])
            print(
                f"| {row['n_obs']} | {row['model']} | {row['interpolation_rmse']:.4f} | "
                f"{row['extrapolation_rmse']:.4f} | {row['rmse']:.4f} | "
                f"{'-' if paper is None else paper} | {row['train_seconds']:.0f} |"
            )
    else:
        print("| observations | model | interpolation MSE | extrapolation MSE | train s |")
        print("|---|---|---|---|---|")
        for row in results:
            print(
                f"| {row['n_obs']} | {row['model']} | {row['interpolation_mse']:.4f} | "
                f"{row['extrapolation_mse']:.4f} | {row['train_seconds']:.0f} |"
            )


def _plot(
    task: _Task, models: dict[str, nn.Module], index: torch.Tensor, args: argparse.Namespace
) -> None:
    """Test series with the models' predictions; one legend for the whole figure."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        print(f"neurode latent: plots skipped: {error}")
        return
    from ..train.files import write_atomically

    samples = None
    if "latent_ode" in models:
        with torch.no_grad():
            samples = models["latent_ode"](
                *_observed_window(task, index),
                query_times=task.times,
                n_samples=_PLOTTED_SAMPLES,
                generator=torch.Generator().manual_seed(args.seed),
            ).predictions
    baselines = {
        name: _predict(name, model, task, index)
        for name, model in models.items()
        if name != "latent_ode"
    }
    spirals = args.dataset == "spirals"
    figure = Figure(figsize=(4.2 * len(index), 4.6), layout="constrained")
    axes = list(figure.subplots(1, len(index), squeeze=False)[0])
    handles: dict[str, Any] = {}

    def keep(label: str, artist: Any) -> None:
        handles.setdefault(label, artist)

    for column, (axis, series) in enumerate(zip(axes, index.tolist(), strict=True)):
        observed = task.mask[series, :, 0] > 0
        if spirals:
            (line,) = axis.plot(*task.clean[series].T, color="0.6", lw=1)
            keep("true spiral", line)
            keep("observations", axis.scatter(*task.noisy[series, observed].T, s=8, color="k"))
        else:
            (line,) = axis.plot(task.times, task.clean[series, :, 0], color="0.6", lw=1)
            keep("true θ", line)
            keep(
                "observed θ",
                axis.scatter(task.times[observed], task.noisy[series, observed, 0], s=8, color="k"),
            )
            keep(
                "end of the observed window",
                axis.axvline(float(task.times[task.window]), color="0.6", ls=":"),
            )
        if samples is not None:
            for k in range(samples.shape[0]):
                trajectory = samples[k, column]
                (line,) = axis.plot(
                    *(trajectory.T if spirals else (task.times, trajectory[:, 0])),
                    color="C0",
                    lw=0.8,
                    alpha=0.6,
                )
            keep(f"latent ODE, {samples.shape[0]} posterior samples", line)
        for j, (name, prediction) in enumerate(baselines.items()):
            (line,) = axis.plot(
                *(prediction[column].T if spirals else (task.times, prediction[column, :, 0])),
                color=f"C{j + 1}",
                lw=1,
                ls="--",
            )
            keep(name.replace("_", "-").upper() if name == "rnn" else "ODE-RNN", line)
        if spirals:
            end = task.clean[series, task.window]
            keep(
                "extrapolation starts",
                axis.scatter([float(end[0])], [float(end[1])], marker="x", color="r", zorder=4),
            )
            axis.set_aspect("equal")
            axis.set_xlabel("x₁")
            axis.set_ylabel("x₂")
        else:
            axis.set_xlabel("t (s)")
            axis.set_ylabel("θ (rad)")
        axis.set_title(f"test series {series}", fontsize=10)
    figure.suptitle(task.label)
    figure.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncols=min(len(handles), 4),
        fontsize=8,
        frameon=False,
    )
    path = args.out / f"{args.dataset}_n{task.n_obs}.png"
    write_atomically(path, lambda handle: figure.savefig(handle, format="png", dpi=100))
