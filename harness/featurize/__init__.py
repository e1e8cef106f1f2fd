"""Featurizers: one per input kind, each ``callable(dataset) -> Features``.

Keys are the input-kind names of ``harness/models/registry.py`` (written out here, not
imported, because importing the model registry would import every model).
"""

from __future__ import annotations

from typing import Callable

from harness.data.dataset import Dataset
from harness.featurize.base import Batch, Features
from harness.featurize.composition import CompositionBatch, CompositionTokens, element_table
from harness.featurize.fractions import ElementFractions
from harness.featurize.magpie import MagpieFeatures, TabularBatch

FEATURIZERS: dict[str, Callable[[Dataset], Features]] = {
    "composition_tokens": CompositionTokens.from_dataset,
    "magpie": MagpieFeatures.from_dataset,
    "element_fractions": ElementFractions.from_dataset,
}


def featurize(input_kind: str, dataset: Dataset) -> Features:
    try:
        featurizer = FEATURIZERS[input_kind]
    except KeyError:
        raise KeyError(f"no featurizer for input kind {input_kind!r}; known: {sorted(FEATURIZERS)}") from None
    return featurizer(dataset)


def default_info(input_kind: str) -> dict:
    """``Features.info`` of a three-formula probe set: enough to build a model for listing."""
    import numpy as np
    import pandas as pd

    from harness.data.dataset import Split

    frame = pd.DataFrame({"id": ["p0", "p1", "p2"], "formula": ["Fe2O3", "NaCl", "BaTiO3"],
                          "target": [0.0, 1.0, 2.0]})
    idx = np.arange(3)
    probe = Dataset("probe", "probe", "target", "", frame, [Split("fixed", idx, idx, idx)], sha256="probe")
    return featurize(input_kind, probe).info


__all__ = [
    "FEATURIZERS",
    "Batch",
    "CompositionBatch",
    "CompositionTokens",
    "Features",
    "element_table",
    "default_info",
    "featurize",
]
