"""SchNet on periodic crystal graphs.

K. T. Schütt, H. E. Sauceda, P.-J. Kindermans, A. Tkatchenko, K.-R. Müller, "SchNet – A deep
learning architecture for molecules and materials", J. Chem. Phys. 148, 241722 (2018),
https://doi.org/10.1063/1.5019779. Building blocks: PyG's ``InteractionBlock``,
``GaussianSmearing`` and ``ShiftedSoftplus`` (``torch_geometric.nn.models.schnet``).

    x_i^(0) = Embed(Z_i)                                             hidden 64
    e_ij    = exp(-(d_ij - mu_k)^2 / (2 Delta^2)),  mu_k in [0, 8 A], 50 Gaussians, Delta = spacing
    W_ij    = Dense(ssp(Dense(e_ij))) * 0.5 (cos(pi d_ij / r_c) + 1)       filter network, r_c = 8 A
    x_i    <- x_i + Dense(ssp(Dense(sum_j (W1 x_j) * W_ij)))              3 interaction blocks
    y       = mean_i  Dense(ssp(Dense(x_i)))                              64 -> 32 -> 1

``ssp(x) = softplus(x) - log 2``. Periodic: the edges are the featurizer's periodic bonds
``j -> i`` with their lengths (images of ``j`` in neighbouring cells included), never PyG's
non-periodic ``radius_graph``; bonds longer than the cutoff are dropped before the filters (the
cosine cutoff would turn up again past r_c). Adapted: the neighbour set is the shared
featurizer's 12 nearest periodic neighbours within the cutoff (the paper's crystals use all
neighbours within r_c); atom readout is the mean (intensive targets), the paper's sum being for
extensive energies (``readout="add"``). Recipe: Adam, lr 1e-3 annealed by a cosine schedule
(the paper decays it), batch 32, MSE, 300 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn
from torch_geometric.nn import global_add_pool, global_mean_pool
from torch_geometric.nn.models.schnet import GaussianSmearing, InteractionBlock, ShiftedSoftplus

from harness.featurize.graph_types import GraphBatch
from harness.models.blocks_graph import atom_embedding, drop_subnormal_tail, graph_sizes
from harness.models.registry import PERIODIC_GRAPH, ModelSpec, register

READOUTS = ("mean", "add")


@dataclass
class SchNetConfig:
    hidden_channels: int = 64
    num_filters: int = 64
    num_interactions: int = 3
    num_gaussians: int = 50
    cutoff: float = 8.0
    readout: str = "mean"

    def __post_init__(self) -> None:
        if min(self.hidden_channels, self.num_filters, self.num_interactions) < 1:
            raise ValueError("hidden_channels, num_filters and num_interactions must be >= 1")
        if self.hidden_channels < 2:
            raise ValueError("hidden_channels must be >= 2 (the output network halves it)")
        if self.num_gaussians < 2 or self.cutoff <= 0:
            raise ValueError("num_gaussians must be >= 2 and cutoff > 0")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")


class SchNet(nn.Module):
    """``forward(batch: GraphBatch) -> [B]`` predictions (scaled units)."""

    def __init__(self, config: SchNetConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_channels
        self.embedding = atom_embedding("learned", hidden)
        self.distance_expansion = GaussianSmearing(0.0, config.cutoff, config.num_gaussians)
        self.interactions = nn.ModuleList(
            InteractionBlock(hidden, config.num_gaussians, config.num_filters, config.cutoff)
            for _ in range(config.num_interactions)
        )
        self.lin1 = nn.Linear(hidden, hidden // 2)
        self.act = ShiftedSoftplus()
        self.lin2 = nn.Linear(hidden // 2, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As PyG's ``SchNet.reset_parameters``: Xavier-uniform output layers, zero biases."""
        self.embedding.reset_parameters()
        for interaction in self.interactions:
            interaction.reset_parameters()
        for lin in (self.lin1, self.lin2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, batch: GraphBatch) -> Tensor:
        g = batch.graph
        keep = g.edge_length <= self.config.cutoff
        edge_index, length = g.edge_index[:, keep], g.edge_length[keep]
        edge_attr = drop_subnormal_tail(self.distance_expansion(length))
        h = self.embedding(g.z)
        for interaction in self.interactions:
            h = h + interaction(h, edge_index, length, edge_attr)
        h = self.lin2(self.act(self.lin1(h)))
        index, n_graphs = graph_sizes(g)
        pool = global_mean_pool if self.config.readout == "mean" else global_add_pool
        return pool(h, index, n_graphs).squeeze(-1)


def build_schnet(config: SchNetConfig, feature_info: dict | None = None) -> SchNet:
    return SchNet(config)


SCHNET_TRAINING = {
    "optimizer": "adam",
    "lr": 1e-3,
    "batch_size": 32,
    "loss": "mse",
    "scheduler": "cosine",
    "epochs": 300,
}
PAPER = "Schütt, Sauceda, Kindermans, Tkatchenko, Müller, J. Chem. Phys. 148, 241722 (2018), doi:10.1063/1.5019779"

SCHNET_SPEC = register(
    ModelSpec(
        name="schnet",
        input_kind=PERIODIC_GRAPH,
        config_cls=SchNetConfig,
        build=build_schnet,
        train_defaults=SCHNET_TRAINING,
        search_space="schnet.yaml",
        paper=PAPER,
        display_name="SchNet",
    ),
    groups=("all-structure",),
)
