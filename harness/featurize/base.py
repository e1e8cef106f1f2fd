"""What every featurizer returns: a :class:`Features` object the trainer can batch.

A featurizer turns a whole :class:`~harness.data.dataset.Dataset` into model inputs once
(cached on disk where it is expensive); the trainer then only selects rows by split index.
A batch is any object with a ``y`` tensor, ``to(device)`` and ``len()``; a torch model's
``forward`` takes the batch object of its input kind.
"""

from __future__ import annotations

from typing import Any, Iterator, Protocol

import numpy as np
import torch


class Batch(Protocol):
    y: torch.Tensor

    def to(self, device: torch.device | str) -> "Batch": ...

    def __len__(self) -> int: ...


class Features(Protocol):
    """Featurized rows of one dataset, in the dataset's row order."""

    info: dict[str, Any]  # what a model builder needs, e.g. {"n_features": 145}

    def __len__(self) -> int: ...

    def batches(
        self,
        indices: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[Batch]:
        """Mini-batches of the rows ``indices`` with (already scaled) targets ``y``.

        ``y`` is aligned with ``indices`` (``len(y) == len(indices)``), not with all rows.
        """
        ...

    def matrix(self, indices: np.ndarray) -> np.ndarray:
        """Dense feature matrix (tabular input kinds only; used by scikit-learn models)."""
        ...


def minibatches(
    indices: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """The row order every ``Features.batches`` shares: ``(rows, y of those rows)`` per batch.

    ``y`` is aligned with ``indices``; with ``shuffle`` the order is a ``torch.randperm`` drawn
    from ``generator`` (so a seeded trainer sees the same batches on every run).
    """
    indices = np.asarray(indices)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float32)
    if len(y) != len(indices):
        raise ValueError(f"{len(indices)} indices but {len(y)} targets; pass y[indices]")
    order = torch.randperm(len(indices), generator=generator) if shuffle else torch.arange(len(indices))
    for start in range(0, len(order), batch_size):
        take = order[start : start + batch_size]
        yield indices[take.numpy()], y[take]
