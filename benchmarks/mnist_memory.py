"""Peak memory of one MNIST training iteration as the ODE block integrates longer.

Chen et al. (2018) train ODE-Net with the adjoint method, whose memory does not
depend on the number of solver steps, against RK-Net, which backpropagates
through every step. This benchmark makes that visible: it lengthens the ODE
block's time span ``[0, t1]`` (more steps for the same dynamics) and records
the peak memory of one forward + backward pass for

* ``odenet-adjoint``: ODE-Net, dopri5 at tolerance 1e-3, ``gradient="backsolve"``;
* ``odenet-direct``:  the same solve, ``gradient="direct"`` (backprop through the steps);
* ``rknet``:          RK4 (3/8 rule) with 4 steps per unit of time, direct backprop.

Each configuration runs in a fresh Python process. On CPU the memory is the
growth of the peak resident set size (``getrusage``'s ``ru_maxrss``) over the
iteration; on CUDA it is ``torch.cuda.max_memory_allocated`` minus the memory
held before the iteration.

Run::

    OMP_NUM_THREADS=1 python benchmarks/mnist_memory.py --lengths 1 2 4 8
    python benchmarks/mnist_memory.py --device cuda --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

MODELS = ("odenet-adjoint", "odenet-direct", "rknet")


def _build(model: str, t1: float):
    from neurode.models.mnist import ODENet, RKNet

    if model == "odenet-adjoint":
        return ODENet(gradient="backsolve", t1=t1)
    if model == "odenet-direct":
        return ODENet(gradient="direct", t1=t1)
    return RKNet(steps=max(1, round(4 * t1)), t1=t1)


def _measure(model_name: str, t1: float, batch_size: int, device: str, seed: int) -> dict:
    """One forward + backward pass in this process; the memory it added at its peak."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model = _build(model_name, t1).to(device)
    images = torch.randn(batch_size, 1, 28, 28, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    loss = F.cross_entropy(model(images), labels)
    nfe_forward = model.nfe_forward
    loss.backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "model": model_name,
        "t1": t1,
        "peak_mib": (peak - before) / 2**20,
        "nfe_forward": nfe_forward,
        "nfe_backward": model.nfe_backward,
    }


def _run_isolated(model: str, t1: float, args: argparse.Namespace) -> dict:
    job = json.dumps({"model": model, "t1": t1})
    command = [
        sys.executable,
        __file__,
        "--worker",
        job,
        "--batch-size",
        str(args.batch_size),
        "--device",
        args.device,
        "--seed",
        str(args.seed),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{model} t1={t1} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _table(results: list[dict], models: list[str], lengths: list[float]) -> str:
    by_key = {(r["model"], r["t1"]): r for r in results}
    header = "| model | " + " | ".join(f"t1={t:g}" for t in lengths) + " |"
    lines = [header, "|---" * (len(lengths) + 1) + "|"]
    for model in models:
        cells = []
        for t1 in lengths:
            r = by_key[(model, t1)]
            cells.append(f"{r['peak_mib']:.0f} MiB (NFE {r['nfe_forward']}/{r['nfe_backward']})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=float, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        job = json.loads(args.worker)
        result = _measure(job["model"], job["t1"], args.batch_size, args.device, args.seed)
        print(json.dumps(result))
        return 0
    results = []
    for model in args.models:
        for t1 in args.lengths:
            result = _run_isolated(model, t1, args)
            print(
                f"{model:15s} t1={t1:<4g} peak +{result['peak_mib']:8.1f} MiB  "
                f"NFE fwd {result['nfe_forward']:4d} bwd {result['nfe_backward']:4d}",
                file=sys.stderr,
                flush=True,
            )
            results.append(result)
    print(
        f"\nPeak memory added by one training iteration (batch {args.batch_size}, "
        f"{args.device}); NFE forward/backward in brackets.\n"
    )
    print(_table(results, args.models, args.lengths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
