"""A small, plain training loop: mini-batches, Adam, early stopping, NFE, checkpoints.

The loop knows nothing about ODEs. It draws a random permutation of the
``n_items`` training items (trajectories) each epoch, splits it into
mini-batches, and asks an *objective* for the loss of each mini-batch. The
objective returns the loss and the solver statistics of the solves it ran;
after ``loss.backward()`` the loop reads the backward-pass evaluations that the
gradient methods add to those same dictionaries (``nfe_backward``), so both
directions of NFE are logged per step and per epoch.

Reproducibility: mini-batch order and any randomness inside the objective
come from one :class:`torch.Generator` seeded by ``config.seed``. A checkpoint
at the end of an epoch holds the model, the optimizer, that generator, the
global torch/numpy/Python random states, the early-stopping state and the
history, so ``resume=True`` continues exactly where the checkpoint left off: on
CPU the resumed run's parameters are bitwise those of an uninterrupted run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import NeurodeInputError
from .checkpoint import (
    CheckpointError,
    CheckpointManifest,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .early_stopping import EarlyStopping
from .progress import ProgressBar

__all__ = [
    "History",
    "Objective",
    "StepOutput",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "fit",
    "learning_rate",
]


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class StepOutput:
    """What an objective returns for one mini-batch.

    ``stats`` are the solver statistics dictionaries of the solves that
    produced ``loss`` (each with an ``nfe`` entry; gradient methods that
    re-integrate add ``nfe_backward`` during ``loss.backward()``).
    """

    loss: torch.Tensor
    stats: Sequence[Mapping[str, Any]] = ()


Objective = Callable[[torch.Tensor, torch.Generator], StepOutput]
"""``objective(indices, generator) -> StepOutput`` for the items ``indices``."""


@dataclass(frozen=True)
class TrainConfig:
    r"""Settings of :func:`fit`.

    ``batch_size`` is the number of items (trajectories) per optimisation
    step; ``None`` uses all of them. ``patience=None`` disables early
    stopping. ``checkpoint_path=None`` writes no checkpoints; otherwise one is
    written every ``checkpoint_every`` epochs and after the last epoch.
    With ``lr_final`` the learning rate follows a cosine from ``lr`` at the
    first epoch to ``lr_final`` at the last,
    :math:`\eta_e = \eta_f + \tfrac12(\eta_0 - \eta_f)(1 + \cos(\pi e / (E - 1)))`;
    the schedule depends on ``epochs``, so a run resumed with it must keep
    ``epochs`` unchanged. A ``manifest`` records the SHA-256 of every
    checkpoint and is checked when resuming (:mod:`neurode.train.checkpoint`).
    With ``restore_best`` the parameters of the best epoch (by validation
    loss if a validation function is given, else by training loss) are loaded
    into the model at the end.
    """

    epochs: int = 100
    lr: float = 1e-2
    lr_final: float | None = None
    batch_size: int | None = None
    weight_decay: float = 0.0
    grad_clip: float | None = None
    patience: int | None = None
    min_delta: float = 0.0
    restore_best: bool = False
    seed: int = 0
    checkpoint_path: str | os.PathLike[str] | None = None
    checkpoint_every: int = 1
    manifest: CheckpointManifest | None = None
    progress: bool = False
    description: str = "train"

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise NeurodeInputError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise NeurodeInputError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.lr_final is not None and not (
            isinstance(self.lr_final, int | float)
            and math.isfinite(self.lr_final)
            and self.lr_final > 0
        ):
            raise NeurodeInputError(
                f"lr_final must be a positive finite number or None, got {self.lr_final!r}"
            )
        if self.batch_size is not None and (
            not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise NeurodeInputError(
                f"batch_size must be a positive integer or None, got {self.batch_size!r}"
            )
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise NeurodeInputError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and not (
            math.isfinite(self.grad_clip) and self.grad_clip > 0
        ):
            raise NeurodeInputError(f"grad_clip must be positive or None, got {self.grad_clip!r}")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 1:
            raise NeurodeInputError(
                f"checkpoint_every must be a positive integer, got {self.checkpoint_every!r}"
            )
        # Validates patience and min_delta with the same messages as EarlyStopping.
        EarlyStopping(self.patience, self.min_delta)


# Settings that change the sequence of parameter updates; a checkpoint may only
# be resumed under the same values (the number of epochs may grow).
_TRAJECTORY_SETTINGS = ("lr", "lr_final", "batch_size", "weight_decay", "grad_clip", "seed")


@dataclass
class History:
    """Per-step and per-epoch records of a training run.

    Epoch entries: mean training loss over the epoch's steps, validation loss
    (None without validation), and the forward and backward NFE summed over
    the epoch. Step entries: loss and NFE of each optimisation step.
    ``initial_validation_loss`` holds the validation loss of the parameters
    before the first epoch (empty without validation).
    """

    loss: list[float] = field(default_factory=list)
    initial_validation_loss: list[float] = field(default_factory=list)
    validation_loss: list[float | None] = field(default_factory=list)
    nfe_forward: list[int] = field(default_factory=list)
    nfe_backward: list[int] = field(default_factory=list)
    step_loss: list[float] = field(default_factory=list)
    step_nfe_forward: list[int] = field(default_factory=list)
    step_nfe_backward: list[int] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.loss)

    def state_dict(self) -> dict[str, list]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, list]) -> History:
        return cls(**{name: list(values) for name, values in state.items()})


@dataclass
class TrainResult:
    """The outcome of :func:`fit`.

    ``best_epoch`` is 0-based; -1 means the parameters the run started from
    (possible only with a validation function).
    """

    history: History
    best_epoch: int
    best_loss: float
    stopped_early: bool

    @property
    def epochs_run(self) -> int:
        return self.history.epochs


def fit(
    model: nn.Module,
    objective: Objective,
    n_items: int,
    config: TrainConfig,
    *,
    validation: Callable[[nn.Module], float] | None = None,
    lr_scales: Mapping[str, float] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``model``'s parameters with Adam on ``objective``.

    Each epoch visits the ``n_items`` items once, in a random order, in
    mini-batches of ``config.batch_size``. ``validation(model)`` (optional) is
    called before the first epoch and after every epoch, under
    ``torch.no_grad()``; early stopping and ``restore_best`` then monitor it
    instead of the training loss, and the starting parameters count as a
    candidate, so ``restore_best`` never returns a model worse than the one
    it was given. (Without validation the monitored training loss of an epoch
    is averaged over its steps while the parameters moved, so ``restore_best``
    is only approximate.)

    ``lr_scales`` maps parameter names (as in ``model.named_parameters()``) to
    multipliers of the learning rate: physical constants learned through a
    logarithm, for instance, move by a relative ``lr`` per step and often
    want a larger one than network weights.

    With ``resume=True`` training continues from ``config.checkpoint_path``
    (which must exist) up to ``config.epochs`` epochs in total.
    """
    if not isinstance(n_items, int) or n_items < 1:
        raise NeurodeInputError(f"n_items must be a positive integer, got {n_items!r}")
    if resume and config.checkpoint_path is None:
        raise NeurodeInputError("resume=True needs config.checkpoint_path")
    optimizer = torch.optim.Adam(
        _parameter_groups(model, lr_scales or {}), lr=config.lr, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    stopper = EarlyStopping(config.patience, config.min_delta)
    history = History()
    if resume:
        _restore(config, model, optimizer, generator, stopper, history)

    if validation is not None and not resume:
        initial = _validate(validation, model)
        history.initial_validation_loss.append(initial)
        stopper.update(-1, initial, model)

    batch_size = config.batch_size or n_items
    steps_per_epoch = math.ceil(n_items / batch_size)
    progress = ProgressBar(
        total=config.epochs * steps_per_epoch,
        initial=history.epochs * steps_per_epoch,
        description=config.description,
        enabled=config.progress,
    )
    with progress:
        for epoch in range(history.epochs, config.epochs):
            if stopper.stopped:
                break
            _run_epoch(
                epoch, model, objective, n_items, batch_size, optimizer, generator, config,
                history, progress,
            )  # fmt: skip
            validation_loss = None if validation is None else _validate(validation, model)
            history.validation_loss.append(validation_loss)
            monitored = history.loss[-1] if validation_loss is None else validation_loss
            stop = stopper.update(epoch, monitored, model)
            last = stop or epoch + 1 == config.epochs
            if config.checkpoint_path is not None and (
                last or (epoch + 1) % config.checkpoint_every == 0
            ):
                _save(config, model, optimizer, generator, stopper, history)

    if config.restore_best and stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
    return TrainResult(
        history=history,
        best_epoch=stopper.best_epoch,
        best_loss=stopper.best_loss,
        stopped_early=stopper.stopped,
    )


def _validate(validation: Callable[[nn.Module], float], model: nn.Module) -> float:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(validation(model))
    finally:
        model.train(was_training)


def _run_epoch(
    epoch: int,
    model: nn.Module,
    objective: Objective,
    n_items: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    config: TrainConfig,
    history: History,
    progress: ProgressBar,
) -> None:
    model.train()
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(config, epoch) * group["lr_scale"]
    order = torch.randperm(n_items, generator=generator)
    losses: list[float] = []
    nfe_forward = nfe_backward = 0
    for step, indices in enumerate(order.split(batch_size)):
        optimizer.zero_grad(set_to_none=True)
        output = objective(indices, generator)
        step_forward = sum(int(stats.get("nfe", 0)) for stats in output.stats)
        output.loss.backward()
        step_backward = sum(int(stats.get("nfe_backward", 0)) for stats in output.stats)
        loss = float(output.loss.detach())
        if not math.isfinite(loss):
            raise TrainingDivergedError(
                f"the training loss became {loss} at epoch {epoch + 1}, step {step + 1}; "
                "try a smaller learning rate, gradient clipping, or tighter solver tolerances"
            )
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(
                [p for group in optimizer.param_groups for p in group["params"]], config.grad_clip
            )
        optimizer.step()
        losses.append(loss)
        nfe_forward += step_forward
        nfe_backward += step_backward
        history.step_loss.append(loss)
        history.step_nfe_forward.append(step_forward)
        history.step_nfe_backward.append(step_backward)
        progress.update(
            epoch=f"{epoch + 1}/{config.epochs}", loss=loss, nfe_f=step_forward, nfe_b=step_backward
        )
    history.loss.append(sum(losses) / len(losses))
    history.nfe_forward.append(nfe_forward)
    history.nfe_backward.append(nfe_backward)


def _parameter_groups(model: nn.Module, lr_scales: Mapping[str, float]) -> list[dict[str, Any]]:
    """Trainable parameters grouped by learning-rate multiplier (in order of first appearance)."""
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not named:
        raise NeurodeInputError("the model has no trainable parameters")
    unknown = sorted(set(lr_scales) - set(named))
    if unknown:
        raise NeurodeInputError(f"lr_scales names unknown parameters: {', '.join(unknown)}")
    groups: dict[float, list[nn.Parameter]] = {}
    for name, parameter in named.items():
        scale = float(lr_scales.get(name, 1.0))
        if not (math.isfinite(scale) and scale > 0):
            raise NeurodeInputError(f"lr_scales[{name!r}] must be positive, got {scale}")
        groups.setdefault(scale, []).append(parameter)
    return [{"params": params, "lr_scale": scale} for scale, params in groups.items()]


def _settings(config: TrainConfig) -> dict[str, Any]:
    settings = {name: getattr(config, name) for name in _TRAJECTORY_SETTINGS}
    if config.lr_final is not None:
        settings["epochs"] = config.epochs
    return settings


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based) under ``config``'s schedule."""
    if config.lr_final is None or config.epochs == 1:
        return config.lr
    progress = epoch / (config.epochs - 1)
    return config.lr_final + 0.5 * (config.lr - config.lr_final) * (
        1 + math.cos(math.pi * progress)
    )


def _save(
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    stopper: EarlyStopping,
    history: History,
) -> None:
    save_checkpoint(
        Path(config.checkpoint_path),
        {
            "epoch": history.epochs,
            "settings": _settings(config),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "rng": capture_rng_state(),
            "early_stopping": stopper.state_dict(),
            "history": history.state_dict(),
        },
        manifest=config.manifest,
    )


def _restore(
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    stopper: EarlyStopping,
    history: History,
) -> None:
    path = Path(config.checkpoint_path)
    record = load_checkpoint(path, manifest=config.manifest)
    saved, current = record["settings"], _settings(config)
    changed = [
        name for name in current.keys() | saved.keys() if saved.get(name) != current.get(name)
    ]
    if changed:
        details = ", ".join(
            f"{name}={saved.get(name)!r} (now {current[name]!r})" for name in changed
        )
        raise CheckpointError(f"{path} was written with different settings: {details}")
    try:
        model.load_state_dict(record["model"])
        optimizer.load_state_dict(record["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path} does not match this model: {error}") from error
    generator.set_state(record["generator"])
    restore_rng_state(record["rng"])
    stopper.load_state_dict(record["early_stopping"])
    restored = History.from_state_dict(record["history"])
    for name, values in restored.state_dict().items():
        setattr(history, name, values)
