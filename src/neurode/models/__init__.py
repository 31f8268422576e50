"""Models built on neural ODEs.

- time series: :class:`ODERNN`, :class:`LatentODE` and the :class:`TimeGapGRU` baseline;
- densities: :class:`CNF` (FFJORD);
- known physics with a learned correction: :class:`HybridODE`, :class:`PendulumPhysics`;
- image classification (Chen et al. 2018, Table 1): :class:`ResNet`, :class:`RKNet`,
  :class:`ODENet`.
"""

from .cnf import CNF, CNFOutput, standard_normal_log_prob
from .concatsquash import ConcatSquashLinear, ConcatSquashMLP
from .divergence import exact_divergence, hutchinson_divergence
from .hybrid import HybridODE, PendulumPhysics, linear_friction_fit
from .latent_ode import ELBO, LatentODE, LatentODEOutput
from .mnist import ODENet, ResNet, RKNet
from .ode_rnn import ODERNN
from .rnn_baseline import TimeGapGRU
from .sequence_predictor import SequencePredictor

__all__ = [
    "CNF",
    "CNFOutput",
    "ConcatSquashLinear",
    "ConcatSquashMLP",
    "ELBO",
    "LatentODEOutput",
    "SequencePredictor",
    "exact_divergence",
    "hutchinson_divergence",
    "linear_friction_fit",
    "standard_normal_log_prob",
    "HybridODE",
    "LatentODE",
    "ODENet",
    "ODERNN",
    "PendulumPhysics",
    "RKNet",
    "ResNet",
    "TimeGapGRU",
]
