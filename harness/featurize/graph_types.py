"""The data types shared by the crystal-graph featurizer and the structure models.

A crystal is a periodic graph: node ``i`` is an atom of the unit cell, a directed edge
``j -> i`` joins atom ``i`` to a periodic image of atom ``j`` within the neighbour rule
(k nearest, or a radius). The line graph joins two bonds that share their centre atom
``i`` (bond ``k -> i`` and bond ``j -> i``), carrying the angle between them.

Conventions (every structure model relies on them):

- ``z``           LongTensor [N]     atomic numbers
- ``edge_index``  LongTensor [2, E]  row 0 = source j (neighbour), row 1 = target i (centre);
                                     PyG's ``flow="source_to_target"`` convention
- ``edge_vec``    FloatTensor [E, 3] r_j + image offset − r_i, in Å (rotation-equivariant)
- ``edge_length`` FloatTensor [E]    ``edge_vec.norm(dim=1)``
- ``lg_edge_index`` LongTensor [2, T] pairs of edge ids (a, b) sharing target atom, a != b
- ``angle``       FloatTensor [T]    angle in radians in [0, π] between the two bond vectors
- ``site_env``    FloatTensor [N, C, H, W] optional local-environment matrices (LERN)
- ``extra``       FloatTensor [1, F]  optional per-structure attribute vector (IRNet-with-structure)
- ``y``           FloatTensor [1]    target (scaled by the trainer)

``CrystalGraph.__inc__`` makes PyG's batching offset ``lg_edge_index`` by the number of
edges (not nodes) of the preceding graphs, so line graphs batch correctly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch_geometric.data import Batch, Data


class CrystalGraph(Data):
    def __inc__(self, key, value, *args, **kwargs):
        if key == "lg_edge_index":
            return self.edge_index.size(1)
        return super().__inc__(key, value, *args, **kwargs)


@dataclass
class GraphBatch:
    """A PyG ``Batch`` of ``CrystalGraph`` plus targets, in the trainer's batch protocol."""

    graph: Batch
    y: torch.Tensor

    def to(self, device: torch.device | str) -> "GraphBatch":
        if torch.device(device).type == "cuda":
            # From pinned memory the copies join the GPU's queue; from pageable memory each one
            # makes the host wait until the GPU has finished the previous step's work.
            return GraphBatch(self.graph.pin_memory().to(device, non_blocking=True),
                              self.y.pin_memory().to(device, non_blocking=True))
        return GraphBatch(self.graph.to(device), self.y.to(device))

    def __len__(self) -> int:
        return int(self.graph.num_graphs)
