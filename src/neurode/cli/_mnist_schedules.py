"""Learning-rate schedules of `neurode mnist`: the paper's step decay, or one-cycle."""

from __future__ import annotations

import torch

_PAPER_DECAY_FRACTIONS = (60 / 160, 100 / 160, 140 / 160)


class _PaperStepDecay:
    """Learning-rate factor 1, 0.1, 0.01, 0.001 after 60, 100 and 140 of every 160 parts.

    A callable object rather than a closure so that the scheduler's state
    dict (which stores this object's attributes) is plain data.
    """

    def __init__(self, total_iterations: int):
        self.boundaries = [round(f * total_iterations) for f in _PAPER_DECAY_FRACTIONS]

    def __call__(self, iteration: int) -> float:
        return 0.1 ** sum(iteration >= boundary for boundary in self.boundaries)


def _make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, lr: float, total_iterations: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=max(total_iterations, 2)
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _PaperStepDecay(total_iterations))
