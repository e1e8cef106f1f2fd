"""Training: one trainer for every torch model, its config, losses and metrics."""

from harness.training.config import TrainConfig, crabnet_batch_size
from harness.training.losses import compute_loss, point_prediction, robust_l1
from harness.training.metrics import regression_metrics
from harness.training.trainer import FitResult, Trainer, default_device, n_parameters, seed_everything

__all__ = [
    "FitResult",
    "TrainConfig",
    "Trainer",
    "compute_loss",
    "crabnet_batch_size",
    "default_device",
    "n_parameters",
    "point_prediction",
    "regression_metrics",
    "robust_l1",
    "seed_everything",
]
