r"""``neurode pendulum``: learn a damped pendulum from angle measurements.

Data: simulated noisy trajectories of :math:`\ddot\theta = -\mu\dot\theta -
(g/L)\sin\theta` (default; :math:`\mu = 0.15`, :math:`g/L = 4`, 20 s sampled
at 100 points, both :math:`\theta` and :math:`\omega` observed, a quarter as
many held-out trajectories again), or the user's own ``--data FILE.csv``
(columns ``t,theta`` and an optional ``trajectory`` id; see
:mod:`neurode.data.csv`). The first ``--train-fraction`` of each trajectory's
time span is the training window; the rest is the extrapolation window.

Models, all first-order ODEs on the state :math:`(\theta, \omega)`:

* ``blackbox``: an MLP vector field (2 hidden layers of 64, tanh);
* ``hybrid``: known gravity :math:`-(g/L)\sin\theta` with learnable
  :math:`g/L`, plus friction learned by a small network
  (:class:`neurode.models.hybrid.HybridODE`);
* ``physics``: the pendulum equation with learnable :math:`\mu` and :math:`g/L`
  (:class:`neurode.models.hybrid.PendulumPhysics`).

When only :math:`\theta` is measured (CSV), each training trajectory's
:math:`\omega_0` is a learnable parameter started from a finite-difference
slope of the first three angles; held-out trajectories use that slope.

Training, per model, in two stages with Adam, a cosine learning rate and all
training trajectories in every step:

1. three quarters of the epochs on short problems, which keep the loss of an
   oscillator free of the local minima of long rollouts: 4 segments of 12
   observations per trajectory and step, each started from the observed state
   (multiple-shooting style, all segments in one batched solve), or, when
   :math:`\omega` is unobserved, the first third of each training trajectory;
2. the rest on whole training-window trajectories, which use every
   observation in one rollout and pin the constants down. Each trajectory's
   initial state is learned as well (a noisy first observation would bias
   the constants), and each epoch is judged on the parameters it ends with;
   early stopping keeps the best, never worse than where the stage began.

Learning rates differ by kind of parameter (see ``_SHORT_STAGE_LR`` and
``_WHOLE_STAGE_LR``): physical constants move by relative steps, and on whole
trajectories :math:`g/L` (the phase of every later oscillation) needs far
smaller steps than :math:`\mu` (only the slow decay).

Written to ``--out``: ``metrics.json`` (settings, metrics, per-epoch loss and
NFE), ``trajectories.png``, ``phase_portrait.png``, ``training.png`` and the
checkpoints that ``--resume`` continues from.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..api import method_names
from ..errors import NeurodeInputError, SolverError
from ..gradients import names as gradient_names
from ..train.checkpoint import CheckpointError
from ..train.loop import TrainConfig, TrainingDivergedError, fit
from ..train.trajectories import (
    Trajectories,
    TrajectoryModel,
    TrajectoryObjective,
    rollout_mse,
)

__all__ = ["add_parser", "run"]

from ._pendulum_report import (
    MODELS,
    _baselines,
    _evaluate,
    _Experiment,
    _Fit,
    _summary_table,
    _truth_metrics,
    _write_json,
    _write_plots,
)

_SEGMENT_POINTS = 12
_SEGMENTS_PER_STEP = 4
_SHORT_STAGE_FRACTION = 0.75
_SHORT_STAGE_BATCH = 16
_WHOLE_STAGE_PATIENCE = 10
# Learning rates, as multiples of --lr, by stage and by kind of parameter.
# Physical constants are learned through logarithms (relative steps of about
# the rate each) and need changes of order one from an uninformed start, hence
# 10x in the short stage. On whole trajectories the loss's curvature differs
# by orders of magnitude between parameters: a small change of g/L shifts
# the phase of every oscillation after it, a change of mu only the slow
# decay, and network weights (the black box's most of all) act everywhere.
_SHORT_STAGE_LR = {"network": 1.0, "log_g_over_l": 10.0, "raw_mu": 10.0, "initial": 1.0}
_WHOLE_STAGE_LR = {"log_g_over_l": 0.2, "raw_mu": 2.0, "initial": 1.0}
_WHOLE_STAGE_NETWORK_LR = {"blackbox": 0.05, "hybrid": 0.2, "physics": 0.2}
_INITIAL_VALUE_NAMES = ("initial_correction", "initial_unobserved")
_SIMULATED_POINTS = 100
_SIMULATED_SPAN = 20.0


class PendulumArgumentError(NeurodeInputError):
    """An option of ``neurode pendulum`` is out of range or inconsistent."""


# ----------------------------------------------------------------------------- arguments
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except for flags and for options whose help states its own."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "pendulum",
        help="learn a damped pendulum: black-box neural ODE vs physics-prior hybrid",
        description="Learn the dynamics of a damped pendulum from angle measurements with a "
        "black-box neural ODE, a physics-prior hybrid and a pure parameter fit; compare their "
        "fits, extrapolation and recovered constants.",
        formatter_class=_HelpFormatter,
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
    data.add_argument(
        "--n-trajectories",
        type=int,
        default=None,
        help="simulated training trajectories (default 16); a quarter as many more are held out",
    )
    data.add_argument(
        "--noise",
        type=float,
        default=None,
        help="standard deviation of the simulated observation noise, in rad and rad/s "
        "(default 0.02)",
    )
    data.add_argument(
        "--train-fraction",
        type=float,
        default=0.5,
        help="fraction of each trajectory's time span used for training; the rest "
        "measures extrapolation",
    )
    data.add_argument("--seed", type=int, default=0, help="seed of the data and of training")

    training = parser.add_argument_group("training")
    training.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma-separated models to train, from {', '.join(MODELS)}",
    )
    training.add_argument("--epochs", type=int, default=150, help="training epochs per model")
    training.add_argument(
        "--lr", type=float, default=0.01, help="initial Adam learning rate (cosine-decayed)"
    )

    solver = parser.add_argument_group("solver")
    solver.add_argument("--method", default="dopri5", help="ODE solver")
    solver.add_argument(
        "--gradient",
        default="direct",
        help="gradient method: direct, backsolve, checkpoint, reversible, forward, ...",
    )
    solver.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance")
    solver.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance")

    output = parser.add_argument_group("output")
    output.add_argument(
        "--out", type=Path, default=Path("runs/pendulum"), help="directory for results"
    )
    output.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from the checkpoints in --out (same settings)",
    )
    output.add_argument("--no-plots", action="store_true", help="do not write PNG figures")
    output.add_argument("--quiet", action="store_true", help="no progress bars")
    output.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the models are too small to gain from more)",
    )
    parser.set_defaults(run=run)
    return parser


@dataclass(frozen=True)
class _Settings:
    """Validated options; everything that must match for ``--resume``."""

    data: str | None
    n_trajectories: int
    noise: float
    train_fraction: float
    seed: int
    models: tuple[str, ...]
    epochs: int
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
    if args.data is not None:
        for option, value in (("--noise", args.noise), ("--n-trajectories", args.n_trajectories)):
            if value is not None:
                raise PendulumArgumentError(
                    f"{option} describes simulated data; it cannot be combined with --data"
                )
        if not args.data.exists():
            raise PendulumArgumentError(f"--data: no such file: {args.data}")
        if not args.data.is_file():
            raise PendulumArgumentError(f"--data: {args.data} is not a file")
    n_trajectories = 16 if args.n_trajectories is None else args.n_trajectories
    if n_trajectories < 1:
        raise PendulumArgumentError(f"--n-trajectories must be at least 1, got {n_trajectories}")
    noise = 0.02 if args.noise is None else args.noise
    if not (math.isfinite(noise) and noise >= 0):
        raise PendulumArgumentError(f"--noise must be a finite number >= 0, got {noise}")
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
    if args.epochs < 1:
        raise PendulumArgumentError(f"--epochs must be at least 1, got {args.epochs}")
    if args.threads < 1:
        raise PendulumArgumentError(f"--threads must be at least 1, got {args.threads}")
    if args.resume and not (args.out / "checkpoints" / "run.json").is_file():
        raise CheckpointError(f"--resume: no checkpoints in {args.out / 'checkpoints'}")
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
def _simulated_experiment(settings: _Settings) -> _Experiment:
    from ..data import PendulumParams, make_pendulum_dataset, pendulum_vector_field

    n_heldout = max(1, settings.n_trajectories // 4)
    dataset = make_pendulum_dataset(
        settings.n_trajectories + n_heldout,
        t_end=_SIMULATED_SPAN,
        n_points=_SIMULATED_POINTS,
        noise_std=settings.noise,
        train_fraction=settings.train_fraction,
        seed=settings.seed,
    )
    everything = Trajectories.from_tensors(dataset.times, dataset.noisy)
    train_ids = range(settings.n_trajectories)
    heldout_ids = range(settings.n_trajectories, settings.n_trajectories + n_heldout)
    params: PendulumParams = dataset.params

    def truth(theta: np.ndarray, omega: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rates = pendulum_vector_field(params, torch.as_tensor(theta), torch.as_tensor(omega))
        return tuple(rate.numpy() for rate in rates)

    return _Experiment(
        train=everything.select(train_ids),
        heldout=everything.select(heldout_ids),
        train_split=[dataset.t_split] * settings.n_trajectories,
        heldout_split=[dataset.t_split] * n_heldout,
        source=f"simulated ({settings.n_trajectories} + {n_heldout} held-out trajectories)",
        true_mu=params.mu,
        true_g_over_l=params.g_over_l,
        noise=settings.noise,
        truth=truth,
        clean_train=[(dataset.times, dataset.clean[i, :, 0]) for i in train_ids],
    )


def _csv_experiment(settings: _Settings) -> _Experiment:
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
        if int((t < split).sum()) < 3:
            raise PendulumArgumentError(
                f"{settings.data}: trajectory {trajectory} has fewer than 3 points in its "
                f"training window (t < {split:g}); raise --train-fraction or add points"
            )
    n = len(data)
    n_heldout = n // 4 if n >= 4 else 0
    train_ids = list(range(n - n_heldout))
    heldout_ids = list(range(n - n_heldout, n))
    return _Experiment(
        train=data.select(train_ids),
        heldout=data.select(heldout_ids) if heldout_ids else None,
        train_split=[splits[i] for i in train_ids],
        heldout_split=[splits[i] for i in heldout_ids],
        source=f"{settings.data} ({len(train_ids)} + {n_heldout} held-out trajectories, "
        "theta only)",
    )


# ----------------------------------------------------------------------------- models
def _build_dynamics(name: str, seed: int) -> nn.Module:
    from ..models.hybrid import HybridODE, PendulumPhysics
    from ..nn import MLPDynamics

    torch.manual_seed(seed)
    if name == "blackbox":
        return MLPDynamics(2, hidden=64, depth=2, activation="tanh").to(torch.float64)
    if name == "hybrid":
        return HybridODE(g_over_l=1.0, hidden=16, depth=1)
    return PendulumPhysics(g_over_l=1.0, mu=0.1)


@dataclass(frozen=True)
class _Stage:
    """One training stage: which problems, how long, how fast."""

    name: str
    data: Trajectories
    segment_points: int | None
    epochs: int
    rates: dict[str, float]
    whole: bool


def _stages(model_name: str, settings: _Settings, train: Trajectories) -> list[_Stage]:
    """Short problems first (segments, or each trajectory's first third), then whole ones."""
    short_epochs = max(1, round(_SHORT_STAGE_FRACTION * settings.epochs))
    whole_epochs = settings.epochs - short_epochs
    if train.fully_observed:
        name, data = "segments", train
        segment_points = min(_SEGMENT_POINTS, _shortest(train))
    else:
        name, data = "prefix", train.head(max(3, _shortest(train) // 3))
        segment_points = None
    stages = [
        _Stage(
            name,
            data,
            segment_points,
            short_epochs,
            rates={kind: settings.lr * scale for kind, scale in _SHORT_STAGE_LR.items()},
            whole=False,
        )
    ]
    if whole_epochs:
        stages.append(
            _Stage(
                "whole",
                train,
                None,
                whole_epochs,
                rates={
                    "network": settings.lr * _WHOLE_STAGE_NETWORK_LR[model_name],
                    **{kind: settings.lr * scale for kind, scale in _WHOLE_STAGE_LR.items()},
                },
                whole=True,
            )
        )
    return stages


def _parameter_kind(name: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in _INITIAL_VALUE_NAMES:
        return "initial"
    if leaf in ("log_g_over_l", "raw_mu"):
        return leaf
    return "network"


def _shortest(data: Trajectories) -> int:
    return min(t.numel() for t in data.times)


def _train_model(
    name: str, index: int, settings: _Settings, experiment: _Experiment, out: Path, quiet: bool
) -> _Fit:
    dynamics = _build_dynamics(name, settings.seed * 1000 + index)
    train = experiment.train.window(end=experiment.train_split)
    model = TrajectoryModel(
        dynamics,
        train,
        method=settings.method,
        rtol=settings.rtol,
        atol=settings.atol,
        gradient=settings.gradient,
        learn_initial_state=True,
    )
    fitted = _Fit(name, model)
    started = time.perf_counter()
    for stage in _stages(name, settings, train):
        # Every model here is autonomous, so segments of the uniform grid share one solve.
        objective = TrajectoryObjective(
            model,
            stage.data,
            segment_points=stage.segment_points,
            segments_per_step=_SEGMENTS_PER_STEP,
            autonomous=True,
        )
        checkpoint = out / "checkpoints" / f"{name}-{stage.name}.pt"
        config = TrainConfig(
            epochs=stage.epochs,
            lr=stage.rates["network"],
            lr_final=stage.rates["network"] / 10,
            patience=_WHOLE_STAGE_PATIENCE if stage.whole else None,
            restore_best=stage.whole,
            seed=settings.seed,
            checkpoint_path=checkpoint,
            progress=not quiet,
            description=f"{name} ({stage.name})",
        )
        base = stage.rates["network"]
        lr_scales = {
            parameter: stage.rates[_parameter_kind(parameter)] / base
            for parameter, _ in model.named_parameters()
        }
        # A whole-trajectory stage is judged on the parameters each epoch ends
        # with (and on those it starts from), so it can only improve the model.
        validation = (lambda m, d=stage.data: rollout_mse(m, d)) if stage.whole else None
        result = fit(
            model,
            objective,
            len(stage.data),
            config,
            validation=validation,
            lr_scales=lr_scales,
            resume=checkpoint.exists(),
        )
        fitted.results.append(result)
    fitted.seconds = time.perf_counter() - started
    return fitted


# ----------------------------------------------------------------------------- evaluation
def _prepare_output(out: Path, settings: _Settings, resume: bool) -> None:
    """Check a resumed run's settings, or start a fresh run's checkpoint directory."""
    checkpoints = out / "checkpoints"
    run_file = checkpoints / "run.json"
    current = json.loads(json.dumps(settings.as_dict()))  # as it reads back from the file
    if resume:
        saved = json.loads(run_file.read_text(encoding="utf-8"))
        changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
        if changed:
            details = ", ".join(f"{k}={saved.get(k)!r} (now {current.get(k)!r})" for k in changed)
            raise CheckpointError(
                f"--resume: {checkpoints} holds a run with other settings: {details}"
            )
        return
    if checkpoints.exists():
        shutil.rmtree(checkpoints)
    checkpoints.mkdir(parents=True)
    _write_json(run_file, current)


# ----------------------------------------------------------------------------- command
def run(args: argparse.Namespace) -> int:
    settings = _validate(args)
    experiment = _csv_experiment(settings) if settings.data else _simulated_experiment(settings)
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PendulumArgumentError(f"--out: cannot create {out}: {error.strerror}") from None
    _prepare_output(out, settings, args.resume)
    # The models are a few hundred parameters: extra threads only add synchronisation.
    torch.set_num_threads(args.threads)

    print(f"data: {experiment.source}", flush=True)
    fits = []
    try:
        for index, name in enumerate(settings.models):
            fits.append(_train_model(name, index, settings, experiment, out, args.quiet))
    except (SolverError, TrainingDivergedError) as error:
        print(f"neurode pendulum: training failed: {error}", file=sys.stderr)
        return 1

    metrics = {fitted.name: _evaluate(fitted, experiment) for fitted in fits}
    truth = _truth_metrics(experiment)
    baselines = _baselines(experiment)
    print(_summary_table(metrics, truth, baselines))
    print(
        "MSE of theta (rad^2): train = training window, held-out = new trajectories in the "
        "training window, extrap. = training trajectories beyond it"
        + (f"; noise variance {experiment.noise**2:.3g}" if experiment.noise is not None else "")
    )

    written = []
    if not args.no_plots:
        try:
            written = _write_plots(out, fits, experiment)
        except ImportError as error:
            print(f"neurode pendulum: plots skipped: {error}", file=sys.stderr)
    _write_json(
        out / "metrics.json",
        {
            "settings": settings.as_dict(),
            "data": experiment.source,
            "models": metrics,
            "truth": truth,
            "baselines": baselines,
            "history": {fitted.name: fitted.history() for fitted in fits},
        },
    )
    print(f"wrote {out / 'metrics.json'}" + "".join(f", {path.name}" for path in written))
    return 0
