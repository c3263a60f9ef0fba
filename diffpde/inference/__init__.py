"""Inference: observation operators, posterior sampling methods, tasks, evaluation over datasets and metrics."""

from .evaluation import EvaluationResult, evaluate_dataset
from .gaussian import GaussianPrior
from .methods import METHODS, get_method
from .observations import (
    CallableObservation, LinearObservation, MaskObservation, ObservationOperator, Observations, SensorColumns,
    SparsePoints, StackedObservation,
)
from .control import Guidance, adjoint_control, control_problem, evaluate_control, guided_control
from .consistency import generate, parameter_recovery, physical_consistency, rollout, rollout_error
from .posterior_io import read_posterior, write_posterior
from .sampling import Sampling, sample_batches
from .tasks import Posterior, forward, inverse, reconstruct, simulate

__all__ = [
    "CallableObservation", "EvaluationResult", "GaussianPrior", "LinearObservation", "METHODS", "MaskObservation",
    "ObservationOperator", "Observations", "Posterior", "Sampling", "SensorColumns", "SparsePoints",
    "StackedObservation", "Guidance", "adjoint_control", "control_problem", "evaluate_control", "evaluate_dataset",
    "guided_control", "forward", "generate", "get_method", "inverse", "parameter_recovery",
    "physical_consistency", "rollout", "rollout_error", "read_posterior", "reconstruct",
    "sample_batches", "simulate", "write_posterior",
]
