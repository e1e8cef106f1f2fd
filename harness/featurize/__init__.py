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
from harness.featurize.magpie import MagpieFeatures, TabularBatch  # noqa: F401 (TabularBatch: re-exported)


def _structure_kind(kind: str) -> Callable[[Dataset], Features]:
    """Structure featurizers import torch_geometric and matminer (seconds): only when used."""

    def featurizer(dataset: Dataset, graph: dict | None = None) -> Features:
        from harness.featurize.graphs import CrystalGraphs, graph_config
        from harness.featurize.structure_attributes import MagpieStructureFeatures

        if kind == "magpie_structure":  # Voronoi attributes: no neighbour list of ours
            return MagpieStructureFeatures.from_dataset(dataset)
        return CrystalGraphs.from_dataset(dataset, graph_config(kind, graph))

    featurizer.__name__ = f"featurize_{kind}"
    return featurizer


STRUCTURE_KINDS = ("crystal_graph", "periodic_graph", "crystal_graph_chain", "crystal_graph_lern", "magpie_structure")

FEATURIZERS: dict[str, Callable[[Dataset], Features]] = {
    "composition_tokens": CompositionTokens.from_dataset,
    # structure kinds (graphs.GRAPH_KINDS): graph + line graph (k = 12), the graph alone, the
    # symmetric graph + directed line graph (ALIGNN's), graph + LERN site environments, 145 + 128
    # attributes. crystal_graph and periodic_graph read one cached file per dataset.
    "crystal_graph": _structure_kind("crystal_graph"),
    "periodic_graph": _structure_kind("periodic_graph"),
    "crystal_graph_chain": _structure_kind("crystal_graph_chain"),
    "crystal_graph_lern": _structure_kind("crystal_graph_lern"),
    "magpie_structure": _structure_kind("magpie_structure"),
    "magpie": MagpieFeatures.from_dataset,
    "element_fractions": ElementFractions.from_dataset,
}


def featurize(input_kind: str, dataset: Dataset, graph: dict | None = None) -> Features:
    """``dataset`` as ``input_kind``; ``graph`` overrides the crystal graphs' neighbour settings
    (``k``, ``cutoff``, ``mode``: ``graphs.GraphConfig``) for the graph kinds."""
    try:
        featurizer = FEATURIZERS[input_kind]
    except KeyError:
        raise KeyError(f"no featurizer for input kind {input_kind!r}; known: {sorted(FEATURIZERS)}") from None
    return featurizer(dataset, graph) if graph and input_kind in STRUCTURE_KINDS else featurizer(dataset)


def default_info(input_kind: str) -> dict:
    """``Features.info`` of a three-formula probe set: enough to build a model for listing."""
    import numpy as np
    import pandas as pd

    from harness.data.dataset import Split

    frame = pd.DataFrame({"id": ["p0", "p1", "p2"], "formula": ["Fe2O3", "NaCl", "BaTiO3"],
                          "target": [0.0, 1.0, 2.0]})
    if input_kind in STRUCTURE_KINDS:
        from harness.featurize.graphs import probe_structures

        frame["structure"] = probe_structures()  # real cells of the same three compounds
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
