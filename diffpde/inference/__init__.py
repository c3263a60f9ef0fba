"""Inference: observation operators, posterior sampling methods, tasks and metrics."""

from .gaussian import GaussianPrior
from .methods import METHODS, get_method
from .observations import (
    CallableObservation, LinearObservation, MaskObservation, ObservationOperator, Observations, SensorColumns,
    SparsePoints, StackedObservation,
)
from .tasks import Posterior, forward, inverse, reconstruct

__all__ = [
    "CallableObservation", "GaussianPrior", "LinearObservation", "METHODS", "MaskObservation", "ObservationOperator",
    "Observations", "Posterior", "SensorColumns", "SparsePoints", "StackedObservation", "forward", "get_method",
    "inverse", "reconstruct",
]
