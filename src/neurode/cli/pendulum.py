r"""``neurode pendulum``: learn a damped pendulum from angle measurements.

Data: simulated noisy trajectories of :math:`\ddot\theta = -\mu\dot\theta -
(g/L)\sin\theta` (default; :math:`\mu` and :math:`g/L` from ``--mu`` and
``--g-over-l``, 20 s sampled at 100 points, both :math:`\theta` and
:math:`\omega` observed, a quarter as many held-out trajectories again), or the
user's own ``--data FILE.csv`` (columns ``t,theta`` and an optional
``trajectory`` id; see :mod:`neurode.data.csv`). The first
``--train-fraction`` of each trajectory's time span is the training window;
the rest is the extrapolation window.

Models, all first-order ODEs on the state :math:`(\theta, \omega)`:

* ``blackbox``: an MLP vector field (2 hidden layers of 64, tanh) in units of
  the data's amplitude and frequency;
* ``hybrid``: known gravity :math:`-(g/L)\sin\theta` with learnable
  :math:`g/L`, plus friction learned by a small network
  (:class:`neurode.models.hybrid.HybridODE`);
* ``physics``: the pendulum equation with learnable :math:`\mu \ge 0` and
  :math:`g/L > 0` (:class:`neurode.models.hybrid.PendulumPhysics`), with
  standard errors and 95% intervals.

How each is started from the data and trained: :mod:`neurode.cli._pendulum_training`.
What is reported (errors, baselines, noise level, flags of poor models):
:mod:`neurode.cli._pendulum_report`.

Written to ``--out``, through a locked :class:`neurode.train.run_folder.RunFolder`:
``metrics.json`` first (settings, metrics, intervals, flags, per-epoch loss
and NFE), then ``trajectories.png``, ``phase_portrait.png``, ``training.png``
(each written atomically), ``run.json`` (settings and the SHA-256 of every
checkpoint) and the checkpoints that ``--resume`` continues from.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..api import method_names
from ..errors import NeurodeInputError, SolverError
from ..gradients import names as gradient_names
from ..train.loop import TrainingDivergedError
from ..train.run_folder import RunFolder
from ..train.trajectories import Trajectories, TrajectoryModel
from . import _pendulum_training as training
from ._common import HelpFormatter, add_output_options
from ._pendulum_report import (
    Experiment,
    baselines,
    evaluate,
    noise_level,
    poor_model_flags,
    summary_table,
    truth_metrics,
    write_plots,
)

__all__ = ["add_parser", "run"]

MODELS = training.MODELS
_SIMULATED_POINTS = 100
_SIMULATED_SPAN = 20.0
_DEFAULT_MU, _DEFAULT_G_OVER_L = 0.15, 4.0
_DEFAULT_TRAJECTORIES, _DEFAULT_NOISE = 16, 0.02
_OUTPUTS = ("metrics.json", "trajectories.png", "phase_portrait.png", "training.png")


class PendulumArgumentError(NeurodeInputError):
    """An option of ``neurode pendulum`` is out of range or inconsistent."""


# ----------------------------------------------------------------------------- arguments
def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "pendulum",
        help="learn a damped pendulum: black-box neural ODE vs physics-prior hybrid",
        description="Learn the dynamics of a damped pendulum from angle measurements with a "
        "black-box neural ODE, a physics-prior hybrid and a pure parameter fit; compare their "
        "fits, extrapolation and recovered constants (with 95% intervals), and flag the models "
        "that do no better than the baselines.",
        formatter_class=HelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="FILE.csv",
        help="angle measurements with columns t,theta and optional trajectory "
        "(default: simulated data)",
    )
    simulated = "simulated data only"
    data.add_argument(
        "--mu",
        type=float,
        default=None,
        help=f"friction coefficient mu of the simulated pendulum, 1/s ({simulated}; "
        f"default {_DEFAULT_MU})",
    )
    data.add_argument(
        "--g-over-l",
        type=float,
        default=None,
        help=f"g/L of the simulated pendulum, 1/s^2 ({simulated}; default {_DEFAULT_G_OVER_L})",
    )
    data.add_argument(
        "--n-trajectories",
        type=int,
        default=None,
        help=f"training trajectories; a quarter as many more are held out ({simulated}; "
        f"default {_DEFAULT_TRAJECTORIES})",
    )
    data.add_argument(
        "--noise",
        type=float,
        default=None,
        help=f"standard deviation of the observation noise, rad and rad/s ({simulated}; "
        f"default {_DEFAULT_NOISE})",
    )
    data.add_argument(
        "--train-fraction",
        type=float,
        default=0.5,
        help="fraction of each trajectory's time span used for training; the rest "
        "measures extrapolation",
    )
    data.add_argument("--seed", type=int, default=0, help="seed of the data and of training")

    training_group = parser.add_argument_group("training")
    training_group.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma-separated models to train, from {', '.join(MODELS)}",
    )
    training_group.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="Adam epochs of blackbox and hybrid (default 150, and 400 for blackbox on "
        "angle-only data; physics runs Gauss-Newton to convergence)",
    )
    training_group.add_argument(
        "--lr", type=float, default=0.01, help="initial Adam learning rate (cosine-decayed)"
    )

    solver = parser.add_argument_group("solver")
    solver.add_argument("--method", default="dopri5", help="ODE solver")
    solver.add_argument(
        "--gradient",
        default="direct",
        help="gradient method of blackbox and hybrid: "
        + ", ".join(gradient_names())
        + " (physics uses forward sensitivities)",
    )
    solver.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance")
    solver.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance")

    output = parser.add_argument_group("output")
    add_output_options(output, "pendulum")
    output.add_argument("--no-plots", action="store_true", help="do not write PNG figures")
    output.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (the models are too small to gain from more)",
    )
    parser.set_defaults(run=run)
    return parser


@dataclass(frozen=True)
class _Settings:
    """Validated options; everything that must match for ``--resume``."""

    data: str | None
    mu: float | None
    g_over_l: float | None
    n_trajectories: int | None
    noise: float | None
    train_fraction: float
    seed: int
    models: tuple[str, ...]
    epochs: int | None
    lr: float
    method: str
    gradient: str
    rtol: float
    atol: float

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _positive(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise PendulumArgumentError(f"{name} must be a positive number, got {value}")
    return value


def _validate(args: argparse.Namespace) -> _Settings:
    simulation = {
        "--mu": args.mu,
        "--g-over-l": args.g_over_l,
        "--noise": args.noise,
        "--n-trajectories": args.n_trajectories,
    }
    if args.data is not None:
        for option, value in simulation.items():
            if value is not None:
                raise PendulumArgumentError(
                    f"{option} describes simulated data; it cannot be combined with --data"
                )
        if not args.data.exists():
            raise PendulumArgumentError(f"--data: no such file: {args.data}")
        if not args.data.is_file():
            raise PendulumArgumentError(f"--data: {args.data} is not a file")
        mu = g_over_l = noise = n_trajectories = None
    else:
        n_trajectories = (
            _DEFAULT_TRAJECTORIES if args.n_trajectories is None else args.n_trajectories
        )
        if n_trajectories < 1:
            raise PendulumArgumentError(
                f"--n-trajectories must be at least 1, got {n_trajectories}"
            )
        noise = _DEFAULT_NOISE if args.noise is None else args.noise
        if not (math.isfinite(noise) and noise >= 0):
            raise PendulumArgumentError(f"--noise must be a finite number >= 0, got {noise}")
        mu = _DEFAULT_MU if args.mu is None else args.mu
        if not (math.isfinite(mu) and mu >= 0):
            raise PendulumArgumentError(f"--mu must be a finite number >= 0, got {mu}")
        g_over_l = _positive(
            "--g-over-l", _DEFAULT_G_OVER_L if args.g_over_l is None else args.g_over_l
        )
        # 100 points over 20 s: at least 4 samples per small-angle period.
        if 2 * math.pi / math.sqrt(g_over_l) < 4 * _SIMULATED_SPAN / (_SIMULATED_POINTS - 1):
            raise PendulumArgumentError(
                f"--g-over-l {g_over_l} gives a period shorter than 4 samples of the simulated "
                f"grid ({_SIMULATED_POINTS} points over {_SIMULATED_SPAN:g} s); use at most "
                f"{(math.pi * (_SIMULATED_POINTS - 1) / (2 * _SIMULATED_SPAN)) ** 2:.0f}"
            )
    if not 0.05 <= args.train_fraction <= 0.95:
        raise PendulumArgumentError(
            f"--train-fraction must lie in [0.05, 0.95], got {args.train_fraction}"
        )
    if args.seed < 0:
        raise PendulumArgumentError(f"--seed must be >= 0, got {args.seed}")
    models = tuple(name.strip() for name in args.models.split(",") if name.strip())
    unknown = [name for name in models if name not in MODELS]
    if not models or unknown or len(set(models)) != len(models):
        raise PendulumArgumentError(
            f"--models must list distinct names from {', '.join(MODELS)}; got {args.models!r}"
        )
    if args.epochs is not None and args.epochs < 1:
        raise PendulumArgumentError(f"--epochs must be at least 1, got {args.epochs}")
    if args.threads < 1:
        raise PendulumArgumentError(f"--threads must be at least 1, got {args.threads}")
    if args.method not in method_names():
        raise PendulumArgumentError(
            f"--method {args.method!r} is not a solver; choose from {', '.join(method_names())}"
        )
    if args.gradient not in gradient_names():
        raise PendulumArgumentError(
            f"--gradient {args.gradient!r} is not a gradient method; "
            f"choose from {', '.join(gradient_names())}"
        )
    return _Settings(
        data=None if args.data is None else str(args.data),
        mu=mu,
        g_over_l=g_over_l,
        n_trajectories=n_trajectories,
        noise=noise,
        train_fraction=args.train_fraction,
        seed=args.seed,
        models=models,
        epochs=args.epochs,
        lr=_positive("--lr", args.lr),
        method=args.method,
        gradient=args.gradient,
        rtol=_positive("--rtol", args.rtol),
        atol=_positive("--atol", args.atol),
    )


# ----------------------------------------------------------------------------- data
def _simulated_experiment(settings: _Settings) -> Experiment:
    from ..data import PendulumParams, make_pendulum_dataset, pendulum_vector_field

    n_heldout = max(1, settings.n_trajectories // 4)
    params = PendulumParams(mu=settings.mu, g_over_l=settings.g_over_l)
    dataset = make_pendulum_dataset(
        settings.n_trajectories + n_heldout,
        t_end=_SIMULATED_SPAN,
        n_points=_SIMULATED_POINTS,
        noise_std=settings.noise,
        params=params,
        train_fraction=settings.train_fraction,
        # Angular speeds in the pendulum's own scale (1 rad/s at g/L = 4), all below the
        # separatrix: E <= (0.125 + 1 - cos 1.5) g/L < 2 g/L.
        omega0_max=0.5 * math.sqrt(params.g_over_l),
        seed=settings.seed,
    )
    everything = Trajectories.from_tensors(dataset.times, dataset.noisy)
    train_ids = range(settings.n_trajectories)
    heldout_ids = range(settings.n_trajectories, settings.n_trajectories + n_heldout)

    def truth(theta: np.ndarray, omega: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rates = pendulum_vector_field(params, torch.as_tensor(theta), torch.as_tensor(omega))
        return tuple(rate.numpy() for rate in rates)

    return Experiment(
        train=everything.select(train_ids),
        heldout=everything.select(heldout_ids),
        train_split=[dataset.t_split] * settings.n_trajectories,
        heldout_split=[dataset.t_split] * n_heldout,
        source=f"simulated, mu = {params.mu:g}, g/L = {params.g_over_l:g}, noise "
        f"{settings.noise:g} ({settings.n_trajectories} + {n_heldout} held-out trajectories)",
        true_mu=params.mu,
        true_g_over_l=params.g_over_l,
        noise=settings.noise,
        truth=truth,
        clean_train=[(dataset.times, dataset.clean[i, :, 0]) for i in train_ids],
    )


def _csv_experiment(settings: _Settings) -> Experiment:
    from ..data import load_pendulum_csv

    measurements = load_pendulum_csv(settings.data)
    data = Trajectories(
        times=measurements.times,
        values=tuple(theta.unsqueeze(-1) for theta in measurements.theta),
        observed=(0,),
        state_dim=2,
    )
    splits = [float(t[0] + settings.train_fraction * (t[-1] - t[0])) for t in measurements.times]
    for trajectory, t, split in zip(
        measurements.trajectory_ids, measurements.times, splits, strict=True
    ):
        if int((t < split).sum()) < 4:
            raise PendulumArgumentError(
                f"{settings.data}: trajectory {trajectory} has fewer than 4 points in its "
                f"training window (t < {split:g}); raise --train-fraction or add points"
            )
    n = len(data)
    n_heldout = n // 4 if n >= 4 else 0
    train_ids = list(range(n - n_heldout))
    heldout_ids = list(range(n - n_heldout, n))
    return Experiment(
        train=data.select(train_ids),
        heldout=data.select(heldout_ids) if heldout_ids else None,
        train_split=[splits[i] for i in train_ids],
        heldout_split=[splits[i] for i in heldout_ids],
        source=f"{settings.data} ({len(train_ids)} + {n_heldout} held-out trajectories, "
        "theta only)",
    )


# ----------------------------------------------------------------------------- command
def _train_all(
    settings: _Settings, experiment: Experiment, folder: RunFolder, quiet: bool
) -> tuple[list[training.TrainedModel], Any]:
    train = experiment.train.window(end=experiment.train_split)
    estimate = training.estimate_constants(train)
    scales = training.state_scales(train, estimate)
    fits = []
    for index, name in enumerate(settings.models):
        dynamics = training.build_dynamics(
            name,
            settings.seed * 1000 + index,
            estimate,
            scales,
            observed_velocity=train.fully_observed,
        )
        model = TrajectoryModel(
            dynamics,
            train,
            method=settings.method,
            rtol=settings.rtol,
            atol=settings.atol,
            gradient=settings.gradient,
            learn_initial_state=True,
        )
        if name == "physics":
            fitted = training.fit_physics(
                model,
                train,
                estimate,
                method=settings.method,
                rtol=settings.rtol,
                atol=settings.atol,
            )
        else:
            fitted = training.train_network_model(
                name,
                model,
                train,
                estimate,
                scales,
                epochs=settings.epochs,
                lr=settings.lr,
                seed=settings.seed,
                checkpoint=folder,
                quiet=quiet,
            )
        fits.append(fitted)
    return fits, estimate


def run(args: argparse.Namespace) -> int:
    settings = _validate(args)
    experiment = _csv_experiment(settings) if settings.data else _simulated_experiment(settings)
    # The models are a few hundred parameters: extra threads only add synchronisation.
    torch.set_num_threads(args.threads)
    out: Path = args.out
    with RunFolder(
        out,
        "pendulum",
        settings.as_dict(),
        resume=args.resume,
        overwrite=args.overwrite,
        outputs=_OUTPUTS,
    ) as folder:
        print(f"data: {experiment.source}", flush=True)
        try:
            fits, estimate = _train_all(settings, experiment, folder, args.quiet)
        except (SolverError, TrainingDivergedError) as error:
            print(f"neurode pendulum: training failed: {error}", file=sys.stderr)
            return 1
        metrics = {fitted.name: evaluate(fitted, experiment) for fitted in fits}
        truth = truth_metrics(experiment)
        reference = baselines(experiment)
        noise = noise_level(experiment, metrics)
        for model_metrics in metrics.values():
            model_metrics["flags"] = poor_model_flags(model_metrics, reference, noise)
        print(summary_table(metrics, truth, reference))
        print(_legend(noise))
        for name, model_metrics in metrics.items():
            for flag in model_metrics["flags"]:
                print(f"warning: {name}: {flag}", flush=True)
        content = {
            "settings": settings.as_dict(),
            "data": experiment.source,
            "estimate": {
                "g_over_l": estimate.g_over_l,
                "mu": estimate.mu,
                "angular_frequency": estimate.angular_frequency,
                "amplitude": estimate.amplitude,
            },
            "noise": noise,
            "models": metrics,
            "truth": truth,
            "baselines": reference,
            "history": {fitted.name: fitted.history() for fitted in fits},
            "stages": {fitted.name: fitted.stage_boundaries() for fitted in fits},
        }
        # Metrics first: a failure while drawing (a full disk) must not lose them.
        from ..train.files import write_json_atomically

        write_json_atomically(out / "metrics.json", content)
        written = []
        if not args.no_plots:
            try:
                written = write_plots(out, fits, experiment)
            except ImportError as error:
                print(f"neurode pendulum: plots skipped: {error}", file=sys.stderr)
        folder.finish()
    print(f"wrote {out / 'metrics.json'}" + "".join(f", {path.name}" for path in written))
    return 0


def _legend(noise: dict[str, Any]) -> str:
    source = {
        "known": "the simulation's",
        "residuals": "estimated from the best model's residuals",
    }[noise["source"]]
    return (
        "MSE of theta (rad^2): train = training window, held-out = new trajectories in the "
        "training window, extrap. = training trajectories beyond it; "
        f"noise variance {noise['variance']:.3g} ({source}); "
        "intervals: 95%, Gauss-Newton (Laplace) from the forward sensitivities"
    )
