"""Data-parallel training with :mod:`torch.distributed`.

A training script calls :func:`init_distributed` once. Launched plainly, it
gets a single-process context and nothing else changes. Launched by
``torchrun``, which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in each process, it joins the process group
(``nccl`` on CUDA, ``gloo`` on CPU) and each process drives one device:

* :func:`wrap_model` wraps the model in
  :class:`~torch.nn.parallel.DistributedDataParallel`, which averages the
  gradients across processes during ``backward()``, so every rank takes the
  same optimiser step and the parameters stay identical;
* :func:`train_sampler` gives each rank a disjoint shard of the shuffled
  training set, reshuffled by epoch;
* :func:`all_reduce_sum` adds per-rank counters (loss sums, correct counts,
  function evaluations) so that the logged metrics describe the whole batch;
* only the main process (rank 0) logs and writes checkpoints.

One machine, N processes::

    torchrun --nproc_per_node N -m neurode mnist --model odenet ...

Several machines (run on each, with ``--node_rank`` 0, 1, ... and the same
rendezvous endpoint, a ``host:port`` reachable from every machine)::

    torchrun --nnodes 2 --nproc_per_node 8 --node_rank 0 \\
        --rdzv_backend c10d --rdzv_endpoint host0:29500 --rdzv_id mnist \\
        -m neurode mnist --model odenet ...

The per-process batch size is the command's ``--batch-size``; the global batch
is that times the number of processes. Rank 0 writes the checkpoint; with
``--resume`` every process reads it, so on several machines ``--out`` must be
on a file system they share (or the checkpoint copied to each).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from ..errors import NeurodeInputError

__all__ = [
    "DistributedContext",
    "all_reduce_sum",
    "barrier",
    "gather_objects",
    "init_distributed",
    "resolve_device",
    "shard_indices",
    "shutdown_distributed",
    "train_sampler",
    "unwrap_model",
    "wrap_model",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among ``world_size`` and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files (rank 0)."""
        return self.rank == 0


def _launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(device: str | None, local_rank: int = 0) -> torch.device:
    """The device named by ``device``; ``"auto"`` or ``None`` picks CUDA when available.

    A bare ``"cuda"`` means ``cuda:local_rank``, one GPU per process.
    """
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise NeurodeInputError(f"unknown device {device!r}: {error}") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise NeurodeInputError(f"device {device!r} asked for, but CUDA is not available")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank)
    return resolved


def init_distributed(device: str | None = None) -> DistributedContext:
    """Join the process group when launched by ``torchrun``; else a single-process context.

    The backend is ``nccl`` when the device is CUDA and ``gloo`` otherwise.
    Environment variables read: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
    (and, by :func:`torch.distributed.init_process_group`, ``MASTER_ADDR`` and
    ``MASTER_PORT``).
    """
    if not _launched_by_torchrun():
        return DistributedContext(0, 1, 0, resolve_device(device))
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, resolved)


def shutdown_distributed(context: DistributedContext) -> None:
    """Leave the process group (a no-op for a single process)."""
    if context.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, context: DistributedContext) -> nn.Module:
    """``model`` on the context's device, wrapped in DistributedDataParallel when distributed."""
    model = model.to(context.device)
    if not context.is_distributed:
        return model
    device_ids = [context.device] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or ``model`` itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def train_sampler(
    dataset_size: int, context: DistributedContext, *, seed: int, shuffle: bool = True
) -> DistributedSampler:
    """This rank's shard of a shuffled dataset; call ``set_epoch(epoch)`` before each epoch.

    Also used for a single process, so that the order of the data depends
    only on ``seed`` and the epoch — a resumed run sees the same batches as an
    uninterrupted one.
    """
    return DistributedSampler(
        range(dataset_size),
        num_replicas=context.world_size,
        rank=context.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=False,
    )


def shard_indices(size: int, context: DistributedContext) -> range:
    """Indices ``rank, rank + world_size, ...`` of ``range(size)``: a disjoint, complete split.

    Unlike :class:`DistributedSampler` it never repeats an index to even out
    the shards, so sums over ranks count every item exactly once (evaluation).
    """
    return range(context.rank, size, context.world_size)


def all_reduce_sum(
    values: Sequence[float] | torch.Tensor, context: DistributedContext
) -> torch.Tensor:
    """Sum ``values`` (one number per counter) over all ranks; float64 on CPU.

    A single process gets its own values back.
    """
    device = context.device if context.device.type == "cuda" else torch.device("cpu")
    tensor = torch.as_tensor(values, dtype=torch.float64).to(device)
    if context.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu()


def barrier(context: DistributedContext) -> None:
    """Wait until every rank gets here (a no-op for a single process)."""
    if context.is_distributed:
        dist.barrier()


def gather_objects(value: object, context: DistributedContext) -> list:
    """``[value of rank 0, value of rank 1, ...]`` on every rank (``[value]`` for one process)."""
    if not context.is_distributed:
        return [value]
    gathered: list = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered
