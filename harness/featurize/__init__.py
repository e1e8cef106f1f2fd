"""Featurizers: one per input kind, each ``callable(dataset) -> Features``.

Keys are the input-kind names of ``harness/models/registry.py`` (written out here, not
imported, because importing the model registry would import every model).
"""

from __future__ import annotations

from typing import Callable

from harness.data.dataset import Dataset
from harness.featurize.base import Batch, Features
from harness.featurize.composition import CompositionBatch, CompositionTokens, element_table

FEATURIZERS: dict[str, Callable[[Dataset], Features]] = {
    "composition_tokens": CompositionTokens.from_dataset,
}


def featurize(input_kind: str, dataset: Dataset) -> Features:
    try:
        featurizer = FEATURIZERS[input_kind]
    except KeyError:
        raise KeyError(f"no featurizer for input kind {input_kind!r}; known: {sorted(FEATURIZERS)}") from None
    return featurizer(dataset)


__all__ = [
    "FEATURIZERS",
    "Batch",
    "CompositionBatch",
    "CompositionTokens",
    "Features",
    "element_table",
    "featurize",
]
