"""Neural-ODE layers: ODE blocks, trajectory models, augmented and second-order
wrappers, time-dependent dynamics, and the regularisers that keep solves cheap."""

from .augmented import Augmented
from .block import ODEBlock
from .mlp import MLPDynamics
from .neural_ode import NeuralODE
from .regularisers import (
    RegularisedDynamics,
    RegularisedSolution,
    regularisation_loss,
    regularised_solve,
    sample_probe,
)
from .second_order import SecondOrder, join_state, split_state
from .steer import steer_end_time
from .time_dependent import ConcatConv2d, ConcatLinear, ConcatTime, concat_time

__all__ = [
    "Augmented",
    "ConcatConv2d",
    "ConcatLinear",
    "ConcatTime",
    "MLPDynamics",
    "NeuralODE",
    "ODEBlock",
    "RegularisedDynamics",
    "RegularisedSolution",
    "SecondOrder",
    "concat_time",
    "join_state",
    "regularisation_loss",
    "regularised_solve",
    "sample_probe",
    "split_state",
    "steer_end_time",
]
