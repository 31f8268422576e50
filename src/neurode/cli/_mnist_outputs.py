"""Files written by `neurode mnist`: atomic writes and the error/NFE figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..train.files import write_atomically


def _write_atomic(path: Path, write) -> None:
    write_atomically(path, write)


def _plot_history(history: list[dict[str, Any]], path: Path) -> bool:
    """Error and NFE per epoch as a PNG; False when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    epochs = [record["epoch"] for record in history]
    has_ode_block = any(record["nfe_forward"] > 0 for record in history)
    figure = Figure(figsize=(10 if has_ode_block else 5, 4))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2 if has_ode_block else 1, squeeze=False)[0]
    # Error on a log scale: near 99% accuracy the curves that matter differ by tenths.
    axes[0].plot(epochs, [100 * (1 - r["train_accuracy"]) for r in history], "o-", label="train")
    axes[0].plot(epochs, [100 * (1 - r["test_accuracy"]) for r in history], "o-", label="test")
    axes[0].set_yscale("log")
    axes[0].set(xlabel="epoch", ylabel="error (%, log scale)", title="classification error")
    if has_ode_block:
        axes[1].plot(epochs, [r["nfe_forward"] for r in history], "o-", label="forward")
        axes[1].plot(epochs, [r["nfe_backward"] for r in history], "o-", label="backward")
        axes[1].set(xlabel="epoch", ylabel="NFE per iteration", title="function evaluations")
    for panel in axes:
        panel.legend()
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    _write_atomic(path, lambda handle: figure.savefig(handle, format="png", dpi=100))
    return True
