"""Time and function evaluations of one MNIST training iteration, model by model.

One iteration is what ``neurode mnist`` does per batch: forward pass, cross-entropy,
backward pass, SGD step. The ODE-Net is measured with each gradient method
(``backsolve`` is the paper's adjoint, ``direct`` backpropagates through the
solver's steps, ``checkpoint`` replays them) and solver; ResNet and RK-Net
give the scale. Weights are trained ones when ``--weights`` points to an
ODE-Net state dict (the NFE of a trained model is what training pays; random
weights take fewer steps), images are real MNIST when ``--data-dir`` has it.

Evaluation (``model.eval()`` under ``torch.no_grad()``) is timed as well: it
keeps no graph.

Run::

    OMP_NUM_THREADS=2 python benchmarks/mnist_iteration.py \\
        --weights src/neurode/weights/odenet_mnist_cpu.pt
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

CONFIGS = {
    "resnet": {},
    "rknet": {},
    "odenet-backsolve-dopri5": {"gradient": "backsolve", "method": "dopri5"},
    "odenet-direct-dopri5": {"gradient": "direct", "method": "dopri5"},
    "odenet-checkpoint-dopri5": {"gradient": "checkpoint", "method": "dopri5"},
    "odenet-direct-bosh3": {"gradient": "direct", "method": "bosh3"},
}


def _build(name: str, weights: Path | None):
    import torch

    from neurode.models.mnist import ODENet, ResNet, RKNet

    if name == "resnet":
        return ResNet()
    if name == "rknet":
        return RKNet()
    model = ODENet(**CONFIGS[name])
    if weights is not None:
        model.load_state_dict(torch.load(weights, weights_only=True))
    return model


def _batch(batch_size: int, data_dir: Path | None):
    import torch

    from neurode.data.mnist import load_mnist, normalize_mnist

    if data_dir is not None and (data_dir / "train-images-idx3-ubyte.gz").is_file():
        images, labels = load_mnist("train", data_dir, download=False)
        return normalize_mnist(images[:batch_size]).unsqueeze(1), labels[:batch_size].long()
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 1, 28, 28, generator=generator)
    return images, torch.randint(0, 10, (batch_size,), generator=generator)


def measure(name: str, args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = _build(name, args.weights)
    images, labels = _batch(args.batch_size, args.data_dir)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    train_times, eval_times, nfe = [], [], (0, 0)
    for repeat in range(args.repeats + 1):
        model.train()
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        nfe_forward = model.nfe_forward
        loss.backward()
        optimizer.step()
        elapsed = time.perf_counter() - started
        nfe = (nfe_forward, model.nfe_backward)
        model.eval()
        started = time.perf_counter()
        with torch.no_grad():
            model(images)
        eval_elapsed = time.perf_counter() - started
        if repeat:  # the first is a warm-up
            train_times.append(elapsed)
            eval_times.append(eval_elapsed)
    return {
        "model": name,
        "train_s": statistics.median(train_times),
        "eval_s": statistics.median(eval_times),
        "nfe_forward": nfe[0],
        "nfe_backward": nfe[1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--weights", type=Path, default=None, help="ODE-Net state dict")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/mnist"
    )
    args = parser.parse_args(argv)
    import torch

    rows = []
    for name in args.models:
        result = measure(name, args)
        rows.append(result)
        print(
            f"{name:26s} train {result['train_s']:.3f} s  eval {result['eval_s']:.3f} s  "
            f"NFE {result['nfe_forward']}/{result['nfe_backward']}",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"\nOne training iteration, batch {args.batch_size}, {torch.get_num_threads()} "
        f"thread(s), median of {args.repeats}; NFE forward/backward.\n"
    )
    print("| model | training iteration | evaluation (no grad) | NFE fwd/bwd |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['train_s']:.3f} s | {r['eval_s']:.3f} s | "
            f"{r['nfe_forward']}/{r['nfe_backward']} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
