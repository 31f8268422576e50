"""Datasets: the damped pendulum, noisy spirals, the augmented-ODE toy problems,
2-D toy densities, MNIST from its IDX files, irregular sampling helpers and the
pendulum CSV format.

Every generator is deterministic given its ``seed`` (it draws from its own
``torch.Generator``, never the global RNG) and returns float64 unless given a
``dtype``.
"""

from neurode.data.augmented import (
    InputTargetPairs,
    make_concentric_circles,
    make_negation_pairs,
)
from neurode.data.csv import PendulumMeasurements, load_pendulum_csv, save_pendulum_csv
from neurode.data.errors import DataFormatError, DatasetArgumentError
from neurode.data.irregular import (
    GridSubsample,
    MaskedSeries,
    sample_sorted_uniform_times,
    subsample_grid,
    take_along_time,
    union_time_grid,
)
from neurode.data.mnist import (
    MNIST,
    MNISTChecksumError,
    MNISTFormatError,
    MNISTNotFoundError,
    default_mnist_dir,
    load_mnist,
)
from neurode.data.pendulum import (
    PendulumDataset,
    PendulumParams,
    TrajectoryWindow,
    make_pendulum_dataset,
    pendulum_energy,
    pendulum_vector_field,
    simulate_pendulum,
)
from neurode.data.spirals import SpiralDataset, make_spirals_dataset, spiral_points
from neurode.data.toy_densities import TOY_DENSITIES, sample_toy_density

__all__ = [
    "MNIST",
    "MNISTChecksumError",
    "MNISTFormatError",
    "MNISTNotFoundError",
    "TOY_DENSITIES",
    "default_mnist_dir",
    "load_mnist",
    "sample_toy_density",
    "DataFormatError",
    "DatasetArgumentError",
    "GridSubsample",
    "InputTargetPairs",
    "MaskedSeries",
    "PendulumDataset",
    "PendulumMeasurements",
    "PendulumParams",
    "SpiralDataset",
    "TrajectoryWindow",
    "load_pendulum_csv",
    "make_concentric_circles",
    "make_negation_pairs",
    "make_pendulum_dataset",
    "make_spirals_dataset",
    "pendulum_energy",
    "pendulum_vector_field",
    "sample_sorted_uniform_times",
    "save_pendulum_csv",
    "simulate_pendulum",
    "spiral_points",
    "subsample_grid",
    "take_along_time",
    "union_time_grid",
]
