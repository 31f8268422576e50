r"""How `neurode pendulum` trains its three models, each started from the data.

Before any training the constants are estimated from the training-window
angles (:func:`neurode.data.frequency.estimate_pendulum_constants`: the
Lomb–Scargle frequency and a damped-sinusoid fit). The estimate sets

* the physics model's starting constants;
* the hybrid's starting :math:`g/L` and linear friction;
* the units of the networks: the black box sees time in units of
  :math:`1/\omega` (:class:`neurode.models.scaled.ScaledDynamics`) and, where
  the velocity is unobserved, the state in units of the data's amplitude
  :math:`A` and :math:`A\omega`, so that it learns a unit oscillator; the
  hybrid's friction network sees the state in those units.

**physics**: Levenberg–Marquardt least squares in :math:`g/L`, :math:`\mu`
and every training trajectory's initial state, through the forward
sensitivities of the solve (:func:`neurode.train.least_squares.least_squares_fit`).
Three starts (the estimate and :math:`g/L` scaled by 0.8 and 1.25) are fitted
on the first two estimated periods of each trajectory; the best continues
on a horizon doubled until it covers the training window, so no start meets
the phase ambiguity of a long horizon. The Laplace covariance at the optimum
gives the standard errors.

**hybrid** and **blackbox**: Adam, in two stages with all training
trajectories in every step:

1. three quarters of the epochs on short problems. With both components
   observed: 4 random segments of 12 observations per trajectory, each from
   its observed state. With only the angle observed: multiple shooting
   (:class:`neurode.train.multiple_shooting.MultipleShooting`), consecutive
   segments of up to 12 observations (at most one estimated period) whose
   starting states are learned with the model and tied by a continuity
   penalty;
2. the rest on whole training-window trajectories from learned initial
   states (started where stage 1 left them), judged by the rollout error of
   the parameters each epoch ends with; early stopping keeps the best.

Learning rates differ by kind of parameter (``_SHORT_STAGE_LR`` and
``_WHOLE_STAGE_LR``): on whole trajectories :math:`g/L` (the phase of every
later oscillation) needs smaller steps than network weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.frequency import PendulumEstimate, estimate_pendulum_constants
from ..train.loop import TrainConfig, fit
from ..train.trajectories import (
    Trajectories,
    TrajectoryModel,
    TrajectoryObjective,
    rollout_mse,
)

MODELS = ("blackbox", "hybrid", "physics")
_SEGMENT_POINTS = 12
_SEGMENTS_PER_STEP = 4
_SHORT_STAGE_FRACTION = 0.75
_WHOLE_STAGE_PATIENCE = 10
# Learning rates as multiples of --lr, by stage and kind of parameter. The
# hybrid's g/L starts from the data's estimate, so relative steps of --lr
# suffice. The whole-trajectory stage continues from a fitted model, and Adam's
# first steps move every parameter by about its learning rate whatever the
# gradient: on a whole rollout, where a small change of g/L or of the field
# shifts the phase of every later oscillation, steps of --lr x 0.2 multiplied
# the black box's loss by 400 in one step, so this stage takes small ones.
_SHORT_STAGE_LR = {"network": 1.0, "log_g_over_l": 0.1, "initial": 1.0, "shooting": 1.0}
_WHOLE_STAGE_LR = {"log_g_over_l": 0.05, "initial": 0.1}
_WHOLE_STAGE_NETWORK_LR = {"blackbox": 0.02, "hybrid": 0.05}
_INITIAL_VALUE_NAMES = ("initial_correction", "initial_unobserved")
# Adam epochs (one step each: every trajectory in every step) when --epochs is not
# given. The black box learns the whole field from scratch: from observed states
# (simulated data) 150 suffice; on angle-only data, where multiple shooting also
# learns every segment's velocity, 150 steps left its training error 100x the
# noise variance and 400 bring it to about twice. The hybrid starts from a
# Gauss-Newton fit and stops early once its rollouts stop improving.
DEFAULT_EPOCHS = {"blackbox": 150, "hybrid": 150}
DEFAULT_EPOCHS_ANGLE_ONLY = {"blackbox": 400, "hybrid": 150}
# Multiple shooting's joint weight grows from loose to tight over the short stage.
_JOINT_WEIGHTS = (1.0, 100.0)
_PHYSICS_STARTS = (1.0, 0.8, 1.25)  # multiples of the estimated g/L
_PHYSICS_FIRST_HORIZON = 2.0  # estimated periods
_PHYSICS_RTOL, _PHYSICS_ATOL = 1e-7, 1e-9


@dataclass
class StageRecord:
    """One stage of one model's training: its name and per-epoch (or per-iteration) history."""

    name: str
    history: dict[str, list]
    stopped_early: bool = False


@dataclass
class TrainedModel:
    """A trained model, its stages, and (physics) its least-squares fit."""

    name: str
    model: TrajectoryModel
    stages: list[StageRecord] = field(default_factory=list)
    seconds: float = 0.0
    least_squares: Any = None

    def history(self) -> dict[str, list]:
        merged: dict[str, list] = {}
        for stage in self.stages:
            for key in ("loss", "nfe_forward", "nfe_backward"):
                merged.setdefault(key, []).extend(stage.history.get(key, []))
        return merged

    def stage_boundaries(self) -> list[tuple[str, int]]:
        """``(name of the stage, epochs before it)`` for every stage after the first."""
        boundaries, epochs = [], 0
        for stage in self.stages:
            if epochs:
                boundaries.append((stage.name, epochs))
            epochs += len(stage.history.get("loss", []))
        return boundaries


def estimate_constants(train: Trajectories) -> PendulumEstimate:
    """The data's estimate of g/L and mu, from the angles (component 0) of ``train``."""
    angle = train.observed.index(0)
    return estimate_pendulum_constants(
        [t.numpy() for t in train.times], [y[:, angle].numpy() for y in train.values]
    )


def state_scales(train: Trajectories, estimate: PendulumEstimate) -> tuple[float, float]:
    """Typical sizes of theta and omega: the data's amplitude, and it times the frequency."""
    theta_scale = max(estimate.amplitude, 1e-3)
    return theta_scale, theta_scale * estimate.angular_frequency


def build_dynamics(
    name: str,
    seed: int,
    estimate: PendulumEstimate,
    scales: tuple[float, float],
    *,
    observed_velocity: bool = False,
) -> nn.Module:
    from ..models.hybrid import HybridODE, PendulumPhysics
    from ..models.scaled import ScaledDynamics
    from ..nn import MLPDynamics

    torch.manual_seed(seed)
    if name == "blackbox":
        network = MLPDynamics(2, hidden=64, depth=2, activation="tanh").to(torch.float64)
        # Time in units of 1/omega always; the state in units of its size only where
        # the velocity is unobserved, so that the network's free second state is of
        # order one. Measured (training / extrapolation MSE): on angle-only data
        # (g/L 9, noise 0.01) 2.0e-4 / 4.4e-4 with both scales, 2.3e-4 / 3.9e-3 with
        # time alone, 1.8e-3 / 1.5e-3 with neither; on the default simulated data
        # (both observed) 1.8e-3 / 1.7e-3 with time alone, 1.2e-2 / 1.9e-2 with both.
        return ScaledDynamics(
            network,
            (1.0, 1.0) if observed_velocity else scales,
            time_scale=1.0 / estimate.angular_frequency,
        )
    mu = max(estimate.mu, 1e-3 * estimate.angular_frequency)
    if name == "hybrid":
        return HybridODE(
            g_over_l=estimate.g_over_l, hidden=16, depth=1, state_scale=scales, friction=mu
        )
    return PendulumPhysics(g_over_l=estimate.g_over_l, mu=mu)


def _parameter_kind(name: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if name.startswith("shooting."):
        return "shooting"
    if leaf in _INITIAL_VALUE_NAMES:
        return "initial"
    if leaf == "log_g_over_l":
        return leaf
    return "network"


def _lr_scales(module: nn.Module, rates: dict[str, float]) -> dict[str, float]:
    base = rates["network"]
    return {name: rates[_parameter_kind(name)] / base for name, _ in module.named_parameters()}


def _shooting_points(train: Trajectories, estimate: PendulumEstimate) -> int:
    """Up to 12 observations per segment, spanning at most one estimated period (at least 4)."""
    period = 2.0 * math.pi / estimate.angular_frequency
    steps = torch.cat([t.diff() for t in train.times])
    per_period = int(period / float(steps.median())) + 1
    shortest = min(t.numel() for t in train.times)
    return max(4, min(_SEGMENT_POINTS, per_period, shortest))


def train_network_model(
    name: str,
    model: TrajectoryModel,
    train: Trajectories,
    estimate: PendulumEstimate,
    scales: tuple[float, float],
    *,
    epochs: int | None,
    lr: float,
    seed: int,
    checkpoint: Any,
    quiet: bool,
) -> TrainedModel:
    """Adam in two stages, short problems then whole trajectories (module docstring)."""
    from ..train.multiple_shooting import MultipleShooting, ShootingTrainee

    trained = TrainedModel(name, model)
    started = time.perf_counter()
    if epochs is None:
        epochs = (DEFAULT_EPOCHS if train.fully_observed else DEFAULT_EPOCHS_ANGLE_ONLY)[name]
    if name == "hybrid":
        short_epochs, whole_epochs = 0, epochs
    else:
        short_epochs = max(1, round(_SHORT_STAGE_FRACTION * epochs))
        whole_epochs = epochs - short_epochs
    short_rates = {kind: lr * scale for kind, scale in _SHORT_STAGE_LR.items()}

    def config(stage: str, stage_epochs: int, rate: float, whole: bool) -> TrainConfig:
        return TrainConfig(
            epochs=stage_epochs,
            lr=rate,
            lr_final=rate / 10,
            patience=_WHOLE_STAGE_PATIENCE if whole else None,
            restore_best=whole,
            seed=seed,
            checkpoint_path=checkpoint.path(f"{name}-{stage}.pt"),
            manifest=checkpoint.manifest,
            progress=not quiet,
            description=f"{name} ({stage})",
        )

    if name == "hybrid":
        # Start from the best hybrid with constant friction, the network's
        # initial form: the network then only learns how friction departs from it.
        trained.stages.append(_polish_hybrid(model, train, "linear friction"))
    elif train.fully_observed:
        objective = TrajectoryObjective(
            model,
            train,
            segment_points=min(_SEGMENT_POINTS, min(t.numel() for t in train.times)),
            segments_per_step=_SEGMENTS_PER_STEP,
            autonomous=True,
        )
        stage_config = config("segments", short_epochs, short_rates["network"], False)
        result = fit(
            model,
            objective,
            len(train),
            stage_config,
            lr_scales=_lr_scales(model, short_rates),
            resume=checkpoint.exists(stage_config.checkpoint_path),
        )
        trained.stages.append(StageRecord("segments", result.history.state_dict()))
    else:
        shooting = MultipleShooting(
            model,
            train,
            _shooting_points(train, estimate),
            state_scale=scales,
            joint_weight=_JOINT_WEIGHTS,
            ramp_steps=short_epochs,
        )
        trainee = ShootingTrainee(model, shooting)
        stage_config = config("shooting", short_epochs, short_rates["network"], False)
        result = fit(
            trainee,
            shooting,
            len(train),
            stage_config,
            lr_scales=_lr_scales(trainee, short_rates),
            resume=checkpoint.exists(stage_config.checkpoint_path),
        )
        trained.stages.append(StageRecord("shooting", result.history.state_dict()))
        _start_from(model, train, shooting.first_states())

    if whole_epochs:
        rates = {
            "network": lr * _WHOLE_STAGE_NETWORK_LR[name],
            **{kind: lr * scale for kind, scale in _WHOLE_STAGE_LR.items()},
        }
        stage_config = config("whole", whole_epochs, rates["network"], True)
        result = fit(
            model,
            TrajectoryObjective(model, train, autonomous=True),
            len(train),
            stage_config,
            validation=lambda m: rollout_mse(m, train),
            lr_scales=_lr_scales(model, rates),
            resume=checkpoint.exists(stage_config.checkpoint_path),
        )
        trained.stages.append(
            StageRecord("whole", result.history.state_dict(), result.stopped_early)
        )
    if name == "hybrid":
        trained.stages.append(_polish_hybrid(model, train))
    trained.seconds = time.perf_counter() - started
    return trained


def _polish_hybrid(
    model: TrajectoryModel, train: Trajectories, stage: str = "Gauss-Newton"
) -> StageRecord:
    """Gauss–Newton on the hybrid's g/L, its friction level and the initial states.

    Run before Adam (the network is then a constant friction, so this is the
    physical fit in the hybrid's own parameters) and after it: Adam leaves g/L
    within a step size of its optimum, and on a long window a fraction of a
    percent of g/L is a visible phase error. With the network's weights fixed,
    the least-squares problem in g/L, the output bias of the friction network
    (a constant shift of the friction coefficient) and the initial states is
    small, and Levenberg–Marquardt through the forward sensitivities solves it
    to convergence; the result is kept only if it lowers the error.
    """
    from ..train.least_squares import least_squares_fit

    dynamics = model.dynamics
    parameters = [dynamics.log_g_over_l, dynamics.friction_net[-1].bias]
    before = [p.detach().clone() for p in parameters]
    states = model.initial_state(train, range(len(train))).detach()
    error_before = rollout_mse(model, train)
    history: dict[str, list] = {"loss": [], "nfe_forward": [], "nfe_backward": []}
    result = least_squares_fit(
        dynamics,
        parameters,
        train,
        states,
        rtol=_PHYSICS_RTOL,
        atol=_PHYSICS_ATOL,
        jacobians=dynamics.jacobians,
    )
    n = result.n_residuals
    history["loss"] = [cost / n for cost in result.history["cost"]]
    history["nfe_forward"] = list(result.history["nfe"])
    history["nfe_backward"] = [0] * len(history["loss"])
    saved_states = model.initial_state(train, range(len(train))).detach()
    _start_from(model, train, result.initial_states)
    if not rollout_mse(model, train) < error_before:
        with torch.no_grad():
            for parameter, value in zip(parameters, before, strict=True):
                parameter.copy_(value)
        _start_from(model, train, saved_states)
    return StageRecord(stage, history)


@torch.no_grad()
def _start_from(model: TrajectoryModel, train: Trajectories, states: torch.Tensor) -> None:
    """Set the model's learned initial states of the training trajectories to ``states``."""
    observed = list(train.observed)
    if model.initial_correction is not None:
        model.initial_correction.copy_(states[:, observed] - train.first_values(range(len(train))))
    if model.initial_unobserved is not None:
        model.initial_unobserved.copy_(states[:, list(train.unobserved)])


def _horizon_window(train: Trajectories, horizon: float) -> Trajectories:
    """Each trajectory's observations within ``horizon`` of its start (at least 4)."""
    ends = []
    for t in train.times:
        end = float(t[0]) + horizon
        if int((t <= end).sum()) < 4:
            end = float(t[min(3, t.numel() - 1)])
        ends.append(math.nextafter(end, math.inf))
    return train.window(end=ends)


def fit_physics(
    model: TrajectoryModel,
    train: Trajectories,
    estimate: PendulumEstimate,
    *,
    method: str,
    rtol: float,
    atol: float,
) -> TrainedModel:
    """Multi-start, horizon-continued Levenberg–Marquardt fit (module docstring)."""
    from ..train.least_squares import least_squares_fit

    dynamics = model.dynamics
    parameters = [dynamics.log_g_over_l, dynamics.raw_mu]
    solver = {
        "method": method,
        "rtol": min(rtol, _PHYSICS_RTOL),
        "atol": min(atol, _PHYSICS_ATOL),
        "jacobians": dynamics.jacobians,
    }
    trained = TrainedModel("physics", model)
    started = time.perf_counter()

    def record(name: str, fit_result) -> None:
        n = fit_result.n_residuals
        trained.stages.append(
            StageRecord(
                name,
                {
                    "loss": [cost / n for cost in fit_result.history["cost"]],
                    "nfe_forward": list(fit_result.history["nfe"]),
                    "nfe_backward": [0] * len(fit_result.history["nfe"]),
                },
            )
        )

    period = 2.0 * math.pi / estimate.angular_frequency
    span = max(float(t[-1] - t[0]) for t in train.times)
    horizon = min(_PHYSICS_FIRST_HORIZON * period, span)
    first = _horizon_window(train, horizon)
    initial = model.initial_state(train, range(len(train))).detach()
    best = None
    with torch.no_grad():
        start_mu = dynamics.raw_mu.clone()
    for factor in _PHYSICS_STARTS:
        with torch.no_grad():
            dynamics.log_g_over_l.fill_(math.log(estimate.g_over_l * factor))
            dynamics.raw_mu.copy_(start_mu)
        result = least_squares_fit(dynamics, parameters, first, initial, **solver)
        record(f"start g/L x {factor:g}", result)
        if best is None or result.cost < best[0].cost:
            best = (result, [p.detach().clone() for p in parameters])
    result, values = best
    with torch.no_grad():
        for parameter, value in zip(parameters, values, strict=True):
            parameter.copy_(value)
    states = result.initial_states
    while horizon < span:
        horizon = min(2.0 * horizon, span)
        window = train if horizon >= span else _horizon_window(train, horizon)
        result = least_squares_fit(dynamics, parameters, window, states, **solver)
        record(f"horizon {horizon:.3g} s", result)
        states = result.initial_states
    _start_from(model, train, states)
    trained.least_squares = result
    trained.seconds = time.perf_counter() - started
    return trained
