"""Losses on a model's raw output, in scaled target units.

A model returns either ``[B]`` predictions or ``[B, 2]`` = (prediction, log std) for losses
with aleatoric uncertainty. The point prediction is always column 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def point_prediction(output: Tensor) -> Tensor:
    """``[B]`` or ``[B, k]`` model output -> ``[B]`` prediction (column 0)."""
    return output if output.dim() == 1 else output[:, 0]


def robust_l1(mean: Tensor, log_std: Tensor, target: Tensor) -> Tensor:
    """CrabNet's RobustL1: Laplace negative log-likelihood up to a constant.

    ``sqrt(2) |y - mu| exp(-log sigma) + log sigma``, averaged over the batch.
    """
    return (math.sqrt(2.0) * (target - mean).abs() * torch.exp(-log_std) + log_std).mean()


def compute_loss(name: str, output: Tensor, target: Tensor) -> Tensor:
    if name == "robust_l1":
        if output.dim() != 2 or output.shape[1] != 2:
            raise ValueError(
                f"loss robust_l1 needs a model that outputs [B, 2] = (mean, log_std); got {tuple(output.shape)}"
            )
        return robust_l1(output[:, 0], output[:, 1], target)
    prediction = point_prediction(output)
    if name == "mae":
        return F.l1_loss(prediction, target)
    if name == "mse":
        return F.mse_loss(prediction, target)
    raise ValueError(f"unknown loss {name!r}")
