"""One-shot ODE-Net MNIST run for a single GPU under a wall-clock budget.

1. Trains the paper's ODE-Net (dopri5, rtol = atol = 1e-3, adjoint gradients)
   for ``--budget-seconds`` of wall time. The learning rate follows a one-cycle
   shape over the *fraction of the budget used* (cosine warm-up to ``--lr`` over
   the first 30%, cosine annealing to ``--lr / 1e4`` after), so the schedule
   ends with the budget whatever an iteration costs. The whole data set sits on
   the device; batches are shifted by up to two pixels (``--no-augment`` to skip).
2. Evaluates on the test set (all 10,000 images unless ``--test-subset``).
3. Times training iterations (forward + backward, no update) of the same
   network, same weights and batch, under neurode and under torchdiffeq's
   ``odeint_adjoint``, and reports the ratio of time per iteration and of time
   per function evaluation (the two libraries' step-size controllers may take
   different numbers of steps).
4. Writes ``weights.pt`` (a state dict for ``neurode mnist --evaluate``) and
   ``metrics.json`` to ``--out``.

Usage::

    python scripts/gpu_mnist.py --budget-seconds 420 --out runs/gpu-mnist
    OMP_NUM_THREADS=1 python scripts/gpu_mnist.py --budget-seconds 30 --subset 512  # CPU check
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

try:
    import neurode  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from neurode.data.mnist import load_mnist, normalize_mnist, random_crop  # noqa: E402
from neurode.models.mnist import ODENet  # noqa: E402

_WARMUP_FRACTION = 0.3


def _one_cycle_lr(progress: float, peak: float) -> float:
    """Cosine warm-up from ``peak / 25`` to ``peak``, then cosine annealing to ``peak / 1e4``."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < _WARMUP_FRACTION:
        start, end, phase = peak / 25, peak, progress / _WARMUP_FRACTION
    else:
        start, end = peak, peak / 1e4
        phase = (progress - _WARMUP_FRACTION) / (1 - _WARMUP_FRACTION)
    return end + (start - end) * (1 + math.cos(math.pi * phase)) / 2


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train(model, images, labels, args, device) -> dict:
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr / 25, momentum=0.9)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    started = time.perf_counter()
    iteration = epoch = 0
    window = {"loss": 0.0, "correct": 0.0, "count": 0, "nfe_f": 0, "nfe_b": 0, "n": 0}
    log: list[dict] = []
    last_print = started
    model.train()
    while True:
        order = torch.randperm(images.shape[0], device=device, generator=generator)
        for first in range(0, images.shape[0], args.batch_size):
            elapsed = time.perf_counter() - started
            if elapsed >= args.budget_seconds:
                return {"iterations": iteration, "epochs": epoch, "seconds": elapsed, "log": log}
            lr = _one_cycle_lr(elapsed / args.budget_seconds, args.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = order[first : first + args.batch_size]
            batch = images[index]
            if args.augment:
                batch = random_crop(batch, 2, generator=generator)
            x = normalize_mnist(batch).unsqueeze(1)
            y = labels[index]
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            nfe_forward = model.nfe_forward
            loss = F.cross_entropy(logits, y)
            loss.backward()
            optimizer.step()
            iteration += 1
            window["loss"] += loss.item() * y.numel()
            window["correct"] += (logits.argmax(1) == y).sum().item()
            window["count"] += y.numel()
            window["nfe_f"] += nfe_forward
            window["nfe_b"] += model.nfe_backward
            window["n"] += 1
            now = time.perf_counter()
            if now - last_print >= args.log_every or iteration == 1:
                entry = {
                    "seconds": round(now - started, 1),
                    "iteration": iteration,
                    "epoch": epoch + first / images.shape[0],
                    "lr": lr,
                    "train_loss": window["loss"] / window["count"],
                    "train_accuracy": window["correct"] / window["count"],
                    "nfe_forward": window["nfe_f"] / window["n"],
                    "nfe_backward": window["nfe_b"] / window["n"],
                }
                log.append(entry)
                print(
                    f"[{entry['seconds']:7.1f} s] it {iteration:6d} epoch {entry['epoch']:6.2f} "
                    f"lr {lr:.4f} loss {entry['train_loss']:.4f} "
                    f"acc {100 * entry['train_accuracy']:.2f}% "
                    f"NFE {entry['nfe_forward']:.1f}/{entry['nfe_backward']:.1f}",
                    flush=True,
                )
                window = dict.fromkeys(window, 0)
                window["loss"] = window["correct"] = 0.0
                last_print = now
        epoch += 1


@torch.no_grad()
def _evaluate(model, images, labels, batch_size) -> dict:
    model.eval()
    wrong = 0
    nfe = []
    for first in range(0, images.shape[0], batch_size):
        x = normalize_mnist(images[first : first + batch_size]).unsqueeze(1)
        predictions = model(x).argmax(1)
        wrong += (predictions != labels[first : first + batch_size]).sum().item()
        nfe.append(model.nfe_forward)
    model.train()
    return {
        "test_images": images.shape[0],
        "test_wrong": wrong,
        "test_error": wrong / images.shape[0],
        "test_nfe_forward": sum(nfe) / len(nfe),
    }


class _CountingDynamics(nn.Module):
    """Wraps the dynamics for torchdiffeq and counts its evaluations."""

    def __init__(self, dynamics: nn.Module):
        super().__init__()
        self.dynamics = dynamics
        self.calls = 0

    def forward(self, t, h):
        self.calls += 1
        return self.dynamics(t, h)


def _time_iterations(step, repeats: int, device: torch.device) -> tuple[float, float, float]:
    """Median seconds per call of ``step()`` and its mean (forward, backward) NFE."""
    step()  # warm-up: kernels, allocator, autotuning
    times, forward, backward = [], [], []
    for _ in range(repeats):
        _synchronize(device)
        started = time.perf_counter()
        nfe_f, nfe_b = step()
        _synchronize(device)
        times.append(time.perf_counter() - started)
        forward.append(nfe_f)
        backward.append(nfe_b)
    times.sort()
    return times[len(times) // 2], sum(forward) / repeats, sum(backward) / repeats


def _compare_with_torchdiffeq(model: ODENet, x, y, args, device) -> dict:
    try:
        import torchdiffeq
    except ImportError:
        return {"torchdiffeq": "not installed"}
    model.train()

    def neurode_step():
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        nfe_f = model.nfe_forward
        loss.backward()
        return nfe_f, model.nfe_backward

    counted = _CountingDynamics(model.ode_block.dynamics)
    span = torch.tensor([model.ode_block.t0, model.ode_block.t1], device=device)

    def torchdiffeq_step():
        model.zero_grad(set_to_none=True)
        counted.calls = 0
        h = model.downsampling(x)
        h = torchdiffeq.odeint_adjoint(
            counted, h, span, rtol=args.tol, atol=args.tol, method="dopri5"
        )[-1]
        loss = F.cross_entropy(model.head(h), y)
        nfe_f = counted.calls
        loss.backward()
        return nfe_f, counted.calls - nfe_f

    ours = _time_iterations(neurode_step, args.timing_iterations, device)
    theirs = _time_iterations(torchdiffeq_step, args.timing_iterations, device)
    per_nfe = lambda timing: timing[0] / max(timing[1] + timing[2], 1)
    return {
        "torchdiffeq_version": getattr(torchdiffeq, "__version__", "unknown"),
        "neurode_seconds_per_iteration": ours[0],
        "neurode_nfe": [ours[1], ours[2]],
        "torchdiffeq_seconds_per_iteration": theirs[0],
        "torchdiffeq_nfe": [theirs[1], theirs[2]],
        "time_ratio_neurode_over_torchdiffeq": ours[0] / theirs[0],
        "time_per_nfe_ratio_neurode_over_torchdiffeq": per_nfe(ours) / per_nfe(theirs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-seconds", type=float, default=420.0, help="training wall time")
    parser.add_argument("--subset", type=int, default=None, help="first N training images")
    parser.add_argument("--test-subset", type=int, default=None, help="first N test images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate")
    parser.add_argument("--tol", type=float, default=1e-3, help="rtol = atol of dopri5")
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-iterations", type=int, default=10)
    parser.add_argument("--log-every", type=float, default=15.0, help="seconds between log lines")
    parser.add_argument("--out", default="runs/gpu-mnist")
    args = parser.parse_args(argv)
    if args.budget_seconds <= 0 or args.batch_size < 1 or args.timing_iterations < 1:
        parser.error("--budget-seconds, --batch-size and --timing-iterations must be positive")

    device_name = args.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train_images, train_labels = load_mnist("train", args.data_dir)
    test_images, test_labels = load_mnist("test", args.data_dir)
    train_images, train_labels = train_images[: args.subset], train_labels[: args.subset]
    test_images, test_labels = test_images[: args.test_subset], test_labels[: args.test_subset]
    train_images, test_images = train_images.to(device), test_images.to(device)
    train_labels, test_labels = train_labels.long().to(device), test_labels.long().to(device)

    model = ODENet(method="dopri5", rtol=args.tol, atol=args.tol, gradient="backsolve").to(device)
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"ODE-Net, {parameters:,} parameters, {train_images.shape[0]} training images, "
        f"{device}, budget {args.budget_seconds:g} s",
        flush=True,
    )
    training = _train(model, train_images, train_labels, args, device)
    torch.save(model.state_dict(), out / "weights.pt")
    evaluation = _evaluate(model, test_images, test_labels, batch_size=1000)
    print(
        f"test error {100 * evaluation['test_error']:.2f}% "
        f"({evaluation['test_wrong']} of {evaluation['test_images']}) after "
        f"{training['iterations']} iterations, {training['epochs']} full epochs",
        flush=True,
    )

    index = torch.arange(min(args.batch_size, train_images.shape[0]), device=device)
    x = normalize_mnist(train_images[index]).unsqueeze(1)
    comparison = _compare_with_torchdiffeq(model, x, train_labels[index], args, device)
    if "time_ratio_neurode_over_torchdiffeq" in comparison:
        c = comparison
        print(
            f"training iteration: neurode {1e3 * c['neurode_seconds_per_iteration']:.1f} ms "
            f"(NFE {c['neurode_nfe'][0]:.0f}/{c['neurode_nfe'][1]:.0f}), "
            f"torchdiffeq {1e3 * c['torchdiffeq_seconds_per_iteration']:.1f} ms "
            f"(NFE {c['torchdiffeq_nfe'][0]:.0f}/{c['torchdiffeq_nfe'][1]:.0f}); "
            f"ratio {c['time_ratio_neurode_over_torchdiffeq']:.3f}, per NFE "
            f"{c['time_per_nfe_ratio_neurode_over_torchdiffeq']:.3f}",
            flush=True,
        )
    metrics = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "parameters": parameters,
        "config": vars(args),
        **{key: value for key, value in training.items() if key != "log"},
        **evaluation,
        "comparison": comparison,
        "log": training["log"],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"wrote {out / 'weights.pt'} and {out / 'metrics.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
