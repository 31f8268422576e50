"""Training: a plain loop with progress, early stopping, NFE logging and atomic
checkpoints, plus the pieces that fit an ODE to observed trajectories (whole,
in segments, by multiple shooting, or by Gauss–Newton least squares with
Laplace intervals) and run folders that never lose work.

Data-parallel helpers live in :mod:`neurode.train.distributed`.
"""

from .checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .early_stopping import EarlyStopping
from .least_squares import LeastSquaresFit, interval_95, least_squares_fit
from .loop import (
    History,
    Objective,
    StepOutput,
    TrainConfig,
    TrainingDivergedError,
    TrainResult,
    fit,
    learning_rate,
)
from .multiple_shooting import MultipleShooting, ShootingTrainee
from .progress import ProgressBar
from .run_folder import RunFolder, RunFolderBusyError, RunFolderError
from .trajectories import (
    Trajectories,
    TrajectoryModel,
    TrajectoryObjective,
    estimate_unobserved,
    finite_difference_slope,
    predict,
    rollout_mse,
    squared_error,
)

__all__ = [
    "CheckpointError",
    "EarlyStopping",
    "History",
    "LeastSquaresFit",
    "MultipleShooting",
    "Objective",
    "ProgressBar",
    "RunFolder",
    "RunFolderBusyError",
    "RunFolderError",
    "ShootingTrainee",
    "StepOutput",
    "TrainConfig",
    "TrainResult",
    "Trajectories",
    "TrajectoryModel",
    "TrajectoryObjective",
    "TrainingDivergedError",
    "capture_rng_state",
    "estimate_unobserved",
    "finite_difference_slope",
    "fit",
    "interval_95",
    "least_squares_fit",
    "learning_rate",
    "load_checkpoint",
    "predict",
    "restore_rng_state",
    "rollout_mse",
    "save_checkpoint",
    "squared_error",
]
