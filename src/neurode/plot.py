"""Figures of fitted dynamics, written as PNG files.

matplotlib (the ``plot`` extra) is imported only when a figure is drawn, and
only through :class:`matplotlib.figure.Figure`, which renders with the Agg
backend without touching pyplot's global state: plotting works on headless
machines and never changes the backend of an interactive session.

Inputs are plain arrays (numpy arrays, tensors or sequences); nothing here
knows about models or solvers. Every figure is written atomically
(:func:`neurode.train.files.write_atomically`): a kill while drawing leaves
the previous file or none, never an empty or truncated PNG.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_phase_portrait", "plot_training_history", "plot_trajectories"]

Curve = tuple[Any, Any]
"""``(times, values)``: two 1-D arrays of equal length."""

VectorField = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``field(theta, omega) -> (dtheta, domega)`` on arrays of any (equal) shape."""


def _figure(**kwargs: Any):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plotting needs matplotlib; install it with `pip install neurode[plot]`"
        ) from error
    return Figure(**kwargs)


def _array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=float)


def _save(figure, path: str | os.PathLike[str]) -> Path:
    from .train.files import write_atomically

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomically(path, lambda handle: figure.savefig(handle, dpi=120, format="png"))


def plot_trajectories(
    path: str | os.PathLike[str],
    observations: Sequence[Curve],
    predictions: Mapping[str, Sequence[Curve]],
    *,
    t_split: float | None = None,
    truth: Sequence[Curve] | None = None,
    max_trajectories: int = 4,
    ylabel: str = "θ (rad)",
) -> Path:
    """Observed data against fitted and extrapolated curves, one panel per trajectory.

    Args:
        path: the PNG file to write.
        observations: per trajectory, the observed ``(times, values)``.
        predictions: per model name, one dense ``(times, values)`` curve per trajectory.
        t_split: end of the training window; the extrapolation window is shaded.
        truth: optional noise-free curves, drawn dashed.
        max_trajectories: number of panels (the first trajectories).
        ylabel: label of the value axis.
    """
    count = min(len(observations), max_trajectories)
    figure = _figure(figsize=(10, 2.4 * count), layout="constrained")
    axes = figure.subplots(count, 1, sharex=True, squeeze=False)[:, 0]
    colours = [f"C{k}" for k in range(1, 10)]
    for i, axis in enumerate(axes):
        times, values = map(_array, observations[i])
        if t_split is not None:
            axis.axvspan(t_split, max(times.max(), t_split), color="0.93", zorder=0)
            axis.axvline(t_split, color="0.5", lw=0.8, ls=":")
        if truth is not None:
            axis.plot(*map(_array, truth[i]), color="k", lw=1.0, ls="--", label="truth")
        axis.plot(times, values, "o", ms=2.5, color="C0", alpha=0.7, label="data")
        for colour, (name, curves) in zip(colours, predictions.items(), strict=False):
            axis.plot(*map(_array, curves[i]), color=colour, lw=1.4, label=name)
        axis.set_ylabel(ylabel)
        axis.set_title(f"trajectory {i}", fontsize=9, loc="left")
    axes[-1].set_xlabel("t")
    axes[0].legend(loc="upper right", fontsize=8, ncols=3)
    if t_split is not None:
        axes[0].text(
            t_split, 1.02, " extrapolation →", transform=axes[0].get_xaxis_transform(), fontsize=8
        )
    return _save(figure, path)


def plot_phase_portrait(
    path: str | os.PathLike[str],
    fields: Mapping[str, VectorField],
    *,
    reference: VectorField | None = None,
    trajectories: Sequence[Any] = (),
    trajectory_label: str = "observed trajectories",
    theta_range: tuple[float, float] = (-2.0, 2.0),
    omega_range: tuple[float, float] = (-3.0, 3.0),
    grid: int = 17,
) -> Path:
    """Learned vector fields over the true one in the (θ, ω) plane, one panel per model.

    Args:
        path: the PNG file to write.
        fields: per model name, its vector field on the phase plane.
        reference: the true field, drawn in grey under every learned one.
        trajectories: states ``(T, 2)`` of trajectories, drawn as thin grey lines.
        trajectory_label: what those trajectories are, for the legend.
        theta_range, omega_range: the plotted window.
        grid: arrows per axis.

    One legend, under the panels, names every kind of line and arrow.
    """
    theta, omega = np.meshgrid(
        np.linspace(*theta_range, grid), np.linspace(*omega_range, grid), indexing="xy"
    )
    count = max(len(fields), 1)
    figure = _figure(figsize=(4.6 * count, 4.4), layout="constrained")
    axes = figure.subplots(1, count, squeeze=False)[0]
    handles = {}
    for axis, (name, field) in zip(axes, fields.items(), strict=False):
        for states in trajectories:
            states = _array(states)
            (line,) = axis.plot(states[:, 0], states[:, 1], color="0.75", lw=0.6, zorder=1)
            handles.setdefault(trajectory_label + " (grey lines)", line)
        if reference is not None:
            u, v = map(_array, reference(theta, omega))
            arrows = axis.quiver(
                theta, omega, u, v, color="0.55", angles="xy", width=0.004, zorder=2
            )
            handles.setdefault("true vector field (grey arrows)", arrows)
        u, v = map(_array, field(theta, omega))
        arrows = axis.quiver(theta, omega, u, v, color="C3", angles="xy", width=0.003, zorder=3)
        handles.setdefault("learned vector field (red arrows)", arrows)
        axis.set_title(name, fontsize=10)
        axis.set_xlabel("θ (rad)")
        axis.set_ylabel("ω (rad/s)")
        axis.set_xlim(*theta_range)
        axis.set_ylim(*omega_range)
    figure.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncols=len(handles),
        fontsize=8,
        frameon=False,
    )
    return _save(figure, path)


def plot_training_history(
    path: str | os.PathLike[str],
    histories: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    stages: Mapping[str, Sequence[tuple[str, int]]] | None = None,
) -> Path:
    """Training loss and function evaluations per epoch, one column per model.

    Args:
        path: the PNG file to write.
        histories: per model name, a mapping with per-epoch lists ``loss``,
            ``nfe_forward`` and (optionally) ``nfe_backward``, e.g.
            ``History.state_dict()``.
        stages: per model name, ``(stage name, epochs before it)`` of each stage
            after the first: drawn as a dotted vertical line, labelled (beside
            it) with the stage it begins. A change of the training problem
            changes the loss and the evaluations per epoch at once; the line
            says that the jump is the problem's, not the model's.

    Each model has its own epoch axis: a Gauss–Newton fit takes a few dozen
    iterations where Adam takes hundreds of epochs.
    """
    count = max(len(histories), 1)
    figure = _figure(figsize=(4.2 * count, 6.0), layout="constrained")
    axes = figure.subplots(2, count, squeeze=False)
    for k, (name, history) in enumerate(histories.items()):
        colour = f"C{k}"
        loss_axis, nfe_axis = axes[0, k], axes[1, k]
        epochs = np.arange(1, len(history["loss"]) + 1)
        loss_axis.semilogy(epochs, _array(history["loss"]), color=colour)
        nfe_axis.plot(epochs, _array(history["nfe_forward"]), color=colour, label="forward")
        backward = history.get("nfe_backward")
        if backward is not None and np.any(_array(backward)):
            nfe_axis.plot(epochs, _array(backward), color=colour, ls="--", label="backward")
            nfe_axis.legend(fontsize=8)
        for stage, before in (stages or {}).get(name, ()):
            for axis in (loss_axis, nfe_axis):
                axis.axvline(before + 0.5, color="0.4", ls=":", lw=1.0)
            loss_axis.text(
                before + 0.5,
                0.98,
                f"{stage} ",
                transform=loss_axis.get_xaxis_transform(),
                rotation=90,
                ha="right",
                va="top",
                fontsize=7,
                color="0.3",
            )
        loss_axis.set_title(name, fontsize=10)
        loss_axis.set_ylabel("training loss (MSE)")
        nfe_axis.set_ylabel("function evaluations per epoch")
        nfe_axis.set_xlabel("epoch (Gauss–Newton: iteration)")
        nfe_axis.set_ylim(bottom=0)
    return _save(figure, path)
