"""``neurode mnist``: train or evaluate ResNet, RK-Net and ODE-Net on MNIST.

Training follows Chen et al. (2018): SGD with momentum 0.9, batch 128, learning
rate 0.1 divided by 10 after 60/160, 100/160 and 140/160 of the run (the
paper's 160-epoch schedule scaled to ``--epochs``), or a one-cycle schedule.
After every epoch the model is evaluated on the test set and the run state —
model, optimiser, schedule, random states of every process, history — is
written atomically to ``OUT/checkpoint.pt`` (its SHA-256 recorded in
``OUT/run.json``), the weights alone to ``OUT/weights.pt``, the history to
``OUT/metrics.json`` and a plot of accuracy and function evaluations per epoch
to ``OUT/metrics.png``. ``--resume`` continues from the checkpoint (after
checking its digest) and reproduces the uninterrupted run; a folder holding
another run is refused unless ``--resume`` or ``--overwrite``.

``--evaluate WEIGHTS`` loads a state dict (or a checkpoint) and reports the
error on the 10,000 test images, with a progress bar; ``--evaluate shipped``
takes the ODE-Net weights that ship in the package.

Under ``torchrun --nproc_per_node N`` the same command trains with
DistributedDataParallel (see :mod:`neurode.train.distributed`); ``--batch-size``
is then per process.

Examples::

    neurode mnist --model odenet --epochs 160
    neurode mnist --model rknet --subset 10000 --epochs 2 --schedule onecycle
    neurode mnist --model odenet --evaluate runs/mnist-odenet/weights.pt
    neurode mnist --model odenet --evaluate shipped
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from ..api import method_names
from ..data.mnist import MNIST, mnist_loader
from ..errors import NeurodeInputError
from ..gradients import names as gradient_names
from ..integrate.methods import is_adaptive
from ..models.mnist import ODENet, ResNet, RKNet
from ..train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from ..train.distributed import (
    DistributedContext,
    all_reduce_sum,
    barrier,
    gather_objects,
    init_distributed,
    shard_indices,
    shutdown_distributed,
    train_sampler,
    unwrap_model,
    wrap_model,
)
from ..train.progress import ProgressBar
from ..train.run_folder import RunFolder

__all__ = ["SHIPPED_WEIGHTS", "add_parser", "build_model", "evaluate", "run", "train"]

from ._common import HelpFormatter, add_output_options, plain_text
from ._mnist_outputs import _plot_history, _write_atomic
from ._mnist_schedules import _make_scheduler

MODELS = ("resnet", "odenet", "rknet")

SHIPPED = "shipped"
SHIPPED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "odenet_mnist_cpu.pt"
"""The ODE-Net weights in the package (``--evaluate shipped``)."""
SCHEDULES = ("step", "onecycle")
_MOMENTUM = 0.9


class MNISTTrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "mnist",
        help="train or evaluate ResNet / RK-Net / ODE-Net on MNIST",
        description=plain_text(__doc__),
        formatter_class=HelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=MODELS, default="odenet", help="architecture")
    model.add_argument(
        "--solver",
        default=None,
        help="ODE solver (odenet: default dopri5; rknet: a fixed-step method, default rk4)",
    )
    model.add_argument(
        "--gradient",
        default=None,
        help="odenet gradient method: backsolve (adjoint, default), direct, checkpoint, ...",
    )
    model.add_argument(
        "--rtol", type=float, default=None, help="odenet relative tolerance (default 1e-3)"
    )
    model.add_argument(
        "--atol", type=float, default=None, help="odenet absolute tolerance (default 1e-3)"
    )
    model.add_argument("--steps", type=int, default=None, help="rknet steps (default 4)")
    model.add_argument(
        "--t1",
        type=float,
        default=None,
        help="ODE block end time, odenet and rknet (default 1)",
    )

    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int, default=160, help="training epochs")
    training.add_argument(
        "--batch-size",
        type=int,
        default=128,
        help="images per iteration and process",
    )
    training.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    training.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="step",
        help="step: x0.1 at 60/100/140 of 160 epochs, scaled to --epochs; onecycle: warm-up "
        "then anneal",
    )
    training.add_argument("--weight-decay", type=float, default=0.0, help="SGD weight decay")
    training.add_argument(
        "--augment", action="store_true", help="shift training images by up to 2 pixels"
    )
    training.add_argument(
        "--amp",
        action="store_true",
        help="bfloat16 autocast for the down-sampling and the head (never the ODE block)",
    )
    training.add_argument("--seed", type=int, default=0, help="random seed")
    training.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="EPOCH",
        help="stop after this epoch (the schedule still spans --epochs); continue with --resume",
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-dir",
        default=None,
        help="folder with the four MNIST IDX .gz files (default: $NEURODE_MNIST_DIR, "
        "../shared/data/mnist, ~/.cache/neurode/mnist)",
    )
    data.add_argument(
        "--no-download", action="store_true", help="never download missing MNIST files"
    )
    data.add_argument(
        "--subset", type=int, default=None, help="train on the first N training images"
    )
    data.add_argument(
        "--test-subset", type=int, default=None, help="evaluate on the first N test images"
    )
    data.add_argument(
        "--eval-batch-size",
        type=int,
        default=1000,
        help="images per evaluation batch",
    )
    data.add_argument("--num-workers", type=int, default=0, help="data-loading processes")

    run_group = parser.add_argument_group("run")
    run_group.add_argument(
        "--device",
        default="auto",
        help="auto, cpu, cuda or cuda:N; under torchrun, cuda is one GPU per process",
    )
    add_output_options(run_group, "mnist", out_described="runs/mnist-MODEL")
    run_group.add_argument(
        "--evaluate",
        default=None,
        metavar="WEIGHTS",
        help="only report the test error of these weights (a state dict or a checkpoint; "
        "'shipped': the ODE-Net weights in the package)",
    )
    parser.set_defaults(run=run)
    return parser


# Options that decide the trained weights: a resumed run must keep them.
_RUN_SETTINGS = (
    "model", "solver", "gradient", "rtol", "atol", "steps", "t1", "epochs", "batch_size", "lr",
    "schedule", "weight_decay", "augment", "amp", "seed", "subset", "test_subset",
)  # fmt: skip
_OUTPUTS = ("metrics.json", "metrics.png", "weights.pt", "checkpoint.pt")


def run(args: argparse.Namespace) -> int:
    _validate(args)
    context = init_distributed(args.device)
    try:
        if args.evaluate is not None:
            _run_evaluation(args, context)
        elif context.is_main:
            settings = {key: getattr(args, key) for key in _RUN_SETTINGS}
            with RunFolder(
                _out_dir(args),
                "mnist",
                settings,
                resume=args.resume,
                overwrite=args.overwrite,
                outputs=_OUTPUTS,
            ) as folder:
                train(args, context, folder)
                folder.finish()
        else:
            train(args, context)
    finally:
        shutdown_distributed(context)
    return 0


# --------------------------------------------------------------------------- arguments


def _out_dir(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out is not None else Path("runs") / f"mnist-{args.model}"


def _resume_path(args: argparse.Namespace) -> Path | None:
    return _out_dir(args) / "checkpoint.pt" if args.resume else None


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise NeurodeInputError(message)


def _validate(args: argparse.Namespace) -> None:
    """Reject bad options before any data is read or any model is built."""
    _require(args.epochs >= 1, f"--epochs must be at least 1, got {args.epochs}")
    _require(args.batch_size >= 1, f"--batch-size must be at least 1, got {args.batch_size}")
    _require(
        args.eval_batch_size >= 1,
        f"--eval-batch-size must be at least 1, got {args.eval_batch_size}",
    )
    _require(math.isfinite(args.lr) and args.lr > 0, f"--lr must be positive, got {args.lr}")
    _require(
        math.isfinite(args.weight_decay) and args.weight_decay >= 0,
        f"--weight-decay must be non-negative, got {args.weight_decay}",
    )
    _require(args.num_workers >= 0, f"--num-workers must be >= 0, got {args.num_workers}")
    for name in ("subset", "test_subset"):
        value = getattr(args, name)
        _require(
            value is None or value >= 1,
            f"--{name.replace('_', '-')} must be at least 1, got {value}",
        )
    _require(
        args.stop_after is None or 1 <= args.stop_after <= args.epochs,
        f"--stop-after must be between 1 and --epochs ({args.epochs}), got {args.stop_after}",
    )
    _require(
        args.t1 is None or (math.isfinite(args.t1) and args.t1 > 0),
        f"--t1 must be positive, got {args.t1}",
    )
    ode_options = {
        "--t1": args.t1,
        "--solver": args.solver,
        "--gradient": args.gradient,
        "--rtol": args.rtol,
        "--atol": args.atol,
    }
    if args.model == "resnet":
        given = [name for name, value in ode_options.items() if value is not None]
        given += ["--steps"] if args.steps is not None else []
        _require(not given, f"{_listed(given)} only to --model odenet or rknet")
    if args.model == "rknet":
        given = [name for name in ("--gradient", "--rtol", "--atol") if ode_options[name]]
        _require(not given, f"{_listed(given)} only to --model odenet (rknet is fixed-step)")
    if args.model == "odenet":
        _require(args.steps is None, "--steps only applies to --model rknet")
    for name in ("rtol", "atol"):
        value = getattr(args, name)
        _require(
            value is None or (math.isfinite(value) and value > 0),
            f"--{name} must be positive, got {value}",
        )
    _require(args.steps is None or args.steps >= 1, f"--steps must be at least 1, got {args.steps}")
    if args.solver is not None:
        _check_known("--solver", args.solver, method_names())
        _require(
            args.model != "rknet" or not is_adaptive(args.solver),
            f"--solver {args.solver} is adaptive; rknet takes a fixed-step method such as rk4",
        )
    if args.gradient is not None:
        _check_known("--gradient", args.gradient, gradient_names())
    out = _out_dir(args)
    _require(not out.exists() or out.is_dir(), f"--out {out} exists and is not a folder")
    if args.evaluate is not None:
        _require(not args.resume, "--evaluate and --resume cannot be combined")
        _require(not args.overwrite, "--evaluate writes nothing; --overwrite does not apply")
        if args.evaluate == SHIPPED:
            _require(args.model == "odenet", "--evaluate shipped holds ODE-Net weights")
            args.evaluate = str(SHIPPED_WEIGHTS)
        if not Path(args.evaluate).is_file():
            raise FileNotFoundError(f"--evaluate: no weights file at {args.evaluate}")
    resume = _resume_path(args)
    if resume is not None and not resume.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {resume}")


def _listed(options: list[str]) -> str:
    return ", ".join(options) + (" applies" if len(options) == 1 else " apply")


def _check_known(option: str, value: str, known: list[str]) -> None:
    if value not in known:
        raise NeurodeInputError(f"{option} {value!r} is unknown; choose one of: {', '.join(known)}")


# --------------------------------------------------------------------------- model


def build_model(args: argparse.Namespace) -> nn.Module:
    """The classifier named by ``args.model`` with the command's solver settings."""
    autocast_dtype = torch.bfloat16 if args.amp else None
    if args.model == "resnet":
        return ResNet(autocast_dtype=autocast_dtype)
    if args.model == "rknet":
        return RKNet(
            method=args.solver or "rk4",
            steps=args.steps or 4,
            t1=args.t1 if args.t1 is not None else 1.0,
            autocast_dtype=autocast_dtype,
        )
    return ODENet(
        method=args.solver or "dopri5",
        rtol=args.rtol if args.rtol is not None else 1e-3,
        atol=args.atol if args.atol is not None else 1e-3,
        gradient=args.gradient or "backsolve",
        t1=args.t1 if args.t1 is not None else 1.0,
        autocast_dtype=autocast_dtype,
    )


def _parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


# --------------------------------------------------------------------------- schedules


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: MNIST,
    *,
    batch_size: int,
    context: DistributedContext,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Loss, accuracy, error and mean forward NFE per batch on ``dataset``.

    Each rank evaluates a disjoint share of the images; the sums are
    all-reduced, so every image counts exactly once. ``progress`` shows a bar
    over this rank's batches.
    """
    model = unwrap_model(model)
    was_training = model.training
    model.eval()
    shard = Subset(dataset, shard_indices(len(dataset), context))
    loader = mnist_loader(shard, batch_size, num_workers=num_workers)
    loss_sum = correct = count = nfe = batches = 0.0
    bar = ProgressBar(len(loader), description="evaluate", enabled=progress)
    for images, labels in loader:
        images = images.to(context.device, non_blocking=True)
        labels = labels.to(context.device, non_blocking=True)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(dim=1) == labels).sum().item()
        count += labels.numel()
        nfe += model.nfe_forward
        batches += 1
        bar.update(1, error=f"{100 * (1 - correct / count):.2f}%")
    bar.close()
    model.train(was_training)
    loss_sum, correct, count, nfe, batches = all_reduce_sum(
        [loss_sum, correct, count, nfe, batches], context
    ).tolist()
    accuracy = correct / count
    return {
        "loss": loss_sum / count,
        "accuracy": accuracy,
        "error": 1.0 - accuracy,
        "images": int(count),
        "nfe_forward": nfe / max(batches, 1.0),
    }


def _load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # torch's message spans lines; it is kept whole, on one line.
        reason = " ".join(str(error).split()) or type(error).__name__
        raise NeurodeInputError(
            f"cannot read weights {path}: not a PyTorch state dict or checkpoint ({reason})"
        ) from error
    if isinstance(record, dict) and isinstance(record.get("model"), dict):
        record = record["model"]
    if not isinstance(record, dict) or not all(
        isinstance(v, torch.Tensor) for v in record.values()
    ):
        raise NeurodeInputError(f"{path} holds no state dict")
    return record


def _run_evaluation(args: argparse.Namespace, context: DistributedContext) -> dict[str, float]:
    state = _load_weights(args.evaluate)
    model = build_model(args)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise NeurodeInputError(_mismatch(args, model, state)) from error
    model.to(context.device)
    test_set = MNIST("test", args.data_dir, subset=args.test_subset, download=not args.no_download)
    result = evaluate(
        model,
        test_set,
        batch_size=args.eval_batch_size,
        context=context,
        num_workers=args.num_workers,
        progress=context.is_main and not args.quiet,
    )
    if context.is_main:
        wrong = round(result["error"] * result["images"])
        nfe = f", NFE {result['nfe_forward']:.1f} per batch" if args.model != "resnet" else ""
        print(
            f"{args.model} {args.evaluate}: test error {100 * result['error']:.2f}% "
            f"({wrong} of {result['images']} images wrong), loss {result['loss']:.4f}{nfe}"
        )
    return result


def _mismatch(args: argparse.Namespace, model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """Why ``state`` does not load into ``model``, in full, and which --model it fits."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [
        f"{key} {tuple(state[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of the model's {len(expected)} tensors are missing")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors belong to no layer of it")
    if shapes:
        problems.append(
            f"{len(shapes)} have other shapes ({'; '.join(shapes[:3])}"
            + (f"; and {len(shapes) - 3} more" if len(shapes) > 3 else "")
            + ")"
        )
    fits = []
    for name in MODELS:
        candidate = build_model(
            argparse.Namespace(
                **{
                    **vars(args),
                    "model": name,
                    "solver": None,
                    "gradient": None,
                    "rtol": None,
                    "atol": None,
                    "steps": None,
                    "t1": None,
                }
            )
        )
        reference = candidate.state_dict()
        if reference.keys() == state.keys() and all(
            reference[key].shape == state[key].shape for key in reference
        ):
            fits.append(name)
    hint = (
        f"; these are weights of --model {' or '.join(fits)}: run with that"
        if fits and args.model not in fits
        else ""
    )
    return f"{args.evaluate} does not fit --model {args.model}: " + ", ".join(problems) + hint


# --------------------------------------------------------------------------- training


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(args).items()
        if isinstance(value, (str, int, float, bool, type(None)))
    }


def _train_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    context: DistributedContext,
    progress: ProgressBar,
    epoch: int,
) -> dict[str, float]:
    """One pass over this rank's shard; metrics summed over all ranks each iteration."""
    inner = unwrap_model(model)
    model.train()
    totals = torch.zeros(6, dtype=torch.float64)  # loss·n, correct, n, NFE fwd, NFE bwd, iterations
    for iteration, (images, labels) in enumerate(loader):
        images = images.to(context.device, non_blocking=True)
        labels = labels.to(context.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        logits = model(images)
        nfe_forward = inner.nfe_forward
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        nfe_backward = inner.nfe_backward
        local_loss = loss.item()
        if not math.isfinite(local_loss):
            raise MNISTTrainingDivergedError(
                f"training loss became {local_loss} at epoch {epoch + 1}, iteration "
                f"{iteration + 1}; lower --lr"
            )
        optimizer.step()
        scheduler.step()
        step = all_reduce_sum(
            [
                local_loss * labels.numel(),
                (logits.argmax(dim=1) == labels).sum().item(),
                labels.numel(),
                nfe_forward,
                nfe_backward,
                1,
            ],
            context,
        )
        totals += step
        shown = {"loss": float(step[0] / step[2]), "acc%": float(100 * step[1] / step[2])}
        if isinstance(inner, ODENet | RKNet):
            shown.update(
                nfe_f=float(step[3] / context.world_size),
                nfe_b=float(step[4] / context.world_size),
            )
        progress.update(**shown)
    loss_sum, correct, count, nfe_f, nfe_b, iterations = totals.tolist()
    # ``iterations`` was summed over ranks too, so these are means per rank and iteration.
    return {
        "train_loss": loss_sum / count,
        "train_accuracy": correct / count,
        "nfe_forward": nfe_f / iterations,
        "nfe_backward": nfe_b / iterations,
        "iterations": int(iterations / context.world_size),
    }


def train(
    args: argparse.Namespace, context: DistributedContext, folder: RunFolder | None = None
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train as the command does; return the trained model (unwrapped) and the history.

    ``folder`` (the main process's locked run folder) records the checkpoint's
    SHA-256 and checks it on resume.
    """
    out = _out_dir(args)
    _seed_everything(args.seed)
    download = not args.no_download
    train_set = MNIST(
        "train", args.data_dir, subset=args.subset, augment=args.augment, download=download
    )
    test_set = MNIST("test", args.data_dir, subset=args.test_subset, download=download)
    model = build_model(args)
    parameters = _parameter_count(model)
    # Same initial weights everywhere, but each rank its own augmentation randomness.
    _seed_everything(args.seed + 7919 * context.rank + 1)
    parallel_model = wrap_model(model, context)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=_MOMENTUM, weight_decay=args.weight_decay
    )
    sampler = train_sampler(len(train_set), context, seed=args.seed)
    loader_generator = torch.Generator()
    loader = mnist_loader(
        train_set,
        args.batch_size,
        sampler=sampler,
        num_workers=args.num_workers,
        generator=loader_generator,
        pin_memory=context.device.type == "cuda",
    )
    iterations_per_epoch = len(loader)
    scheduler = _make_scheduler(
        optimizer, args.schedule, args.lr, args.epochs * iterations_per_epoch
    )

    history: list[dict[str, Any]] = []
    start_epoch = 0
    resume = _resume_path(args)
    if resume is not None:
        start_epoch, history = _restore(resume, args, context, model, optimizer, scheduler, folder)

    if context.is_main:
        out.mkdir(parents=True, exist_ok=True)
        print(
            f"mnist {args.model}: {parameters:,} parameters, {len(train_set)} training / "
            f"{len(test_set)} test images, {context.world_size} process(es) on "
            f"{context.device.type}, epochs {start_epoch + 1}..{args.epochs}",
            flush=True,
        )
    last_epoch = args.stop_after if args.stop_after is not None else args.epochs
    progress = ProgressBar(
        args.epochs * iterations_per_epoch,
        initial=start_epoch * iterations_per_epoch,
        description=f"mnist {args.model}",
        enabled=context.is_main and not args.quiet,
    )
    with progress:
        for epoch in range(start_epoch, last_epoch):
            sampler.set_epoch(epoch)
            loader_generator.manual_seed(args.seed * 1_000_003 + epoch)
            started = time.perf_counter()
            record: dict[str, Any] = {"epoch": epoch + 1}
            record.update(
                _train_epoch(parallel_model, loader, optimizer, scheduler, context, progress, epoch)
            )
            test = evaluate(
                model,
                test_set,
                batch_size=args.eval_batch_size,
                context=context,
                num_workers=args.num_workers,
            )
            record.update(
                test_loss=test["loss"],
                test_accuracy=test["accuracy"],
                test_error=test["error"],
                test_nfe_forward=test["nfe_forward"],
                lr=optimizer.param_groups[0]["lr"],
                seconds=time.perf_counter() - started,
            )
            history.append(record)
            _save_epoch(
                args, context, out, model, optimizer, scheduler, history, parameters, folder
            )
            if context.is_main:
                _print_epoch(record, args)
    return model, history


def _restore(
    path: Path,
    args: argparse.Namespace,
    context: DistributedContext,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    folder: RunFolder | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    state = load_checkpoint(path, manifest=folder)
    saved = state.get("config", {})
    for key in ("model", "epochs", "batch_size", "schedule", "subset"):
        if key in saved and saved[key] != getattr(args, key):
            raise CheckpointError(
                f"{path} was written with --{key.replace('_', '-')} {saved[key]}, "
                f"not {getattr(args, key)}; resume with the same settings"
            )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng_states = state["rng"]
    restore_rng_state(rng_states[context.rank % len(rng_states)])
    return int(state["epoch"]), list(state["history"])


def _save_epoch(
    args: argparse.Namespace,
    context: DistributedContext,
    out: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    history: list[dict[str, Any]],
    parameters: int,
    folder: RunFolder | None = None,
) -> None:
    """Checkpoint, weights, metrics and plot, written by rank 0 once all ranks arrive."""
    rng_states = gather_objects(capture_rng_state(), context)
    if context.is_main:
        save_checkpoint(
            out / "checkpoint.pt",
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_states,
                "epoch": history[-1]["epoch"],
                "history": history,
                "config": _config(args),
            },
            manifest=folder,
        )
        weights = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
        _write_atomic(out / "weights.pt", lambda handle: torch.save(weights, handle))
        metrics = {
            "model": args.model,
            "parameters": parameters,
            "world_size": context.world_size,
            "config": _config(args),
            "epochs": history,
        }
        _write_atomic(
            out / "metrics.json",
            lambda handle: handle.write(json.dumps(metrics, indent=2).encode()),
        )
        _plot_history(history, out / "metrics.png")
    barrier(context)


def _print_epoch(record: dict[str, Any], args: argparse.Namespace) -> None:
    nfe = ""
    if args.model != "resnet":
        nfe = (
            f" | NFE/iter fwd {record['nfe_forward']:.1f} bwd {record['nfe_backward']:.1f}"
            f" test {record['test_nfe_forward']:.1f}"
        )
    print(
        f"epoch {record['epoch']}/{args.epochs}: train loss {record['train_loss']:.4f} "
        f"acc {100 * record['train_accuracy']:.2f}% | test error {100 * record['test_error']:.2f}%"
        f"{nfe} | lr {record['lr']:.3g} | {record['seconds']:.1f} s",
        file=sys.stdout,
        flush=True,
    )
