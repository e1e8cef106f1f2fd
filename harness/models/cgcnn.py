"""CGCNN: Crystal Graph Convolutional Neural Network.

T. Xie, J. C. Grossman, "Crystal Graph Convolutional Neural Networks for an Accurate and
Interpretable Prediction of Material Properties", Phys. Rev. Lett. 120, 145301 (2018),
https://doi.org/10.1103/PhysRevLett.120.145301. Reference code: github.com/txie-93/cgcnn
(``cgcnn/model.py``, ``cgcnn/data.py``, ``main.py``).

    v_i^(0)  = W_0 c(Z_i) + b_0                     c: the 92-d CGCNN atom features (atom_init.json)
    u_ij     = exp(-(d_ij - mu_k)^2 / 0.2^2)         mu_k = 0, 0.2, ..., 8 A  (41 Gaussians)
    z_ij     = v_i || v_j || u_ij
    v_i'     = softplus( v_i + BN( sum_j sigmoid(BN(z_ij W_f + b_f)) * softplus(BN(z_ij W_s + b_s)) ) )   x 3
    y        = W_out softplus(W_h softplus(mean_i v_i) + b_h) + b_out        (h_fea_len 128)

The convolution is PyG's ``CGConv(64, dim=41, aggr="add", batch_norm=True)``, which computes the
inner ``v_i + BN(sum_j ...)``; the outer softplus of the reference ``ConvLayer`` is applied
here. The reference also batch-normalises the gate and core pre-activations (its ``bn1`` over
the 2 x 64 outputs of ``fc_full``) before the sigmoid/softplus, which PyG's ``CGConv`` does not:
:class:`GateNormCGConv` adds that BatchNorm (``gate_batch_norm=True``, the default), so each conv
layer has the reference's 22,144 parameters (80,833 in all with the defaults).
``gate_batch_norm=False`` is PyG's plain ``CGConv`` (21,888 per layer, 80,065 in all), the
layer of every CGCNN result recorded before 2026-12-02. The graph is the shared featurizer's 12
nearest periodic neighbours (the reference: 12 nearest within 8 A).

Recipe (reference ``main.py`` defaults): SGD, lr 0.01, momentum 0.9, no weight decay,
batch 256, MSE; 300 epochs here (the reference's default is 30; its MultiStepLR milestone at
epoch 100 is not reproduced: with it, lr/10 after epoch 100, matbench_phonons folds 0 and 1 came out
at 96.5 and 74.1 cm^-1 instead of 92.1 and 62.1, the 4 batches per epoch being too few updates).
Batch 256 was chosen for Materials Project-sized sets; on matbench_phonons (911 training rows per
fold) batch 64 does better: 5-fold mean 66.6 cm^-1 against 71.4 with 256 (Matbench's CGCNN: 57.8).
Training longer matters as much: Matbench's CGCNN trained until 500 epochs passed without a better
validation MAE, and at batch 64 and 1,000 epochs the 5-fold mean is 59.6 with PyG's plain CGConv
and 56.5 ± 8.8 with the gate BatchNorm (``benchmarks/RESULTS.md``, phonons_accuracy). The recipe
stays the reference's; the search space offers 64, 128 and 256.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import CGConv, global_mean_pool

from harness.featurize.graph_types import GraphBatch
from harness.models.blocks_graph import ElementTable, RBFExpansion, cgcnn_atom_features, graph_sizes
from harness.models.registry import PERIODIC_GRAPH, ModelSpec, register


class GateNormCGConv(CGConv):
    """PyG's ``CGConv`` plus the reference's BatchNorm of the gate and core pre-activations.

    ``m_ij = sigmoid(BN_f(z_ij W_f + b_f)) * softplus(BN_s(z_ij W_s + b_s))``: the reference's
    ``bn1`` normalises the 2 x channels outputs of one linear layer per channel, which is the
    same as one BatchNorm on each of PyG's two linear maps, over the edges of the batch.
    """

    def __init__(self, channels: int, dim: int) -> None:
        super().__init__(channels, dim=dim, aggr="add", batch_norm=True)
        self.bn_gate = nn.BatchNorm1d(channels)
        self.bn_core = nn.BatchNorm1d(channels)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "bn_core"):  # CGConv.__init__ calls this before they exist
            self.bn_gate.reset_parameters()
            self.bn_core.reset_parameters()

    def message(self, x_i: Tensor, x_j: Tensor, edge_attr: Tensor) -> Tensor:
        z = torch.cat([x_i, x_j, edge_attr], dim=-1)
        return self.bn_gate(self.lin_f(z)).sigmoid() * F.softplus(self.bn_core(self.lin_s(z)))


@dataclass
class CGCNNConfig:
    atom_fea_len: int = 64
    n_conv: int = 3
    h_fea_len: int = 128
    n_h: int = 1  # hidden layers after pooling
    radius: float = 8.0  # Gaussian centres 0..radius
    step: float = 0.2  # Gaussian spacing and width
    gate_batch_norm: bool = True  # the reference's bn1 (GateNormCGConv); False: PyG's plain CGConv

    def __post_init__(self) -> None:
        if min(self.atom_fea_len, self.n_conv, self.h_fea_len, self.n_h) < 1:
            raise ValueError("atom_fea_len, n_conv, h_fea_len and n_h must be >= 1")
        if not 0 < self.step < self.radius:
            raise ValueError(f"need 0 < step < radius, got step={self.step}, radius={self.radius}")

    @property
    def n_gaussians(self) -> int:
        return int(round(self.radius / self.step)) + 1


class CGCNN(nn.Module):
    """``forward(batch: GraphBatch) -> [B]`` predictions (scaled units)."""

    def __init__(self, config: CGCNNConfig) -> None:
        super().__init__()
        self.config = config
        n_g = config.n_gaussians
        self.atom_table = ElementTable(cgcnn_atom_features())
        self.embedding = nn.Linear(self.atom_table.width, config.atom_fea_len)
        self.gaussians = RBFExpansion(0.0, config.step * (n_g - 1), n_g, gamma=1.0 / config.step**2)
        self.convs = nn.ModuleList(
            GateNormCGConv(config.atom_fea_len, n_g) if config.gate_batch_norm
            else CGConv(config.atom_fea_len, dim=n_g, aggr="add", batch_norm=True)
            for _ in range(config.n_conv)
        )
        self.conv_to_fc = nn.Linear(config.atom_fea_len, config.h_fea_len)
        self.fcs = nn.ModuleList(nn.Linear(config.h_fea_len, config.h_fea_len) for _ in range(config.n_h - 1))
        self.fc_out = nn.Linear(config.h_fea_len, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch/PyG defaults, as the reference code."""
        for module in [self.embedding, *self.convs, self.conv_to_fc, *self.fcs, self.fc_out]:
            module.reset_parameters()

    def forward(self, batch: GraphBatch) -> Tensor:
        g = batch.graph
        x = self.embedding(self.atom_table(g.z))
        edge_attr = self.gaussians(g.edge_length)
        for conv in self.convs:
            x = F.softplus(conv(x, g.edge_index, edge_attr))
        index, n_graphs = graph_sizes(g)
        crys = global_mean_pool(x, index, n_graphs)
        crys = F.softplus(self.conv_to_fc(F.softplus(crys)))
        for fc in self.fcs:
            crys = F.softplus(fc(crys))
        return self.fc_out(crys).squeeze(-1)


def build_cgcnn(config: CGCNNConfig, feature_info: dict | None = None) -> CGCNN:
    return CGCNN(config)


CGCNN_TRAINING = {
    "optimizer": "sgd",  # the trainer's SGD has momentum 0.9, CGCNN's default
    "lr": 0.01,
    "weight_decay": 0.0,
    "batch_size": 256,
    "loss": "mse",
    "scheduler": "none",
    "epochs": 300,
}
PAPER = "Xie & Grossman, Phys. Rev. Lett. 120, 145301 (2018), doi:10.1103/PhysRevLett.120.145301"

CGCNN_SPEC = register(
    ModelSpec(
        name="cgcnn",
        input_kind=PERIODIC_GRAPH,
        config_cls=CGCNNConfig,
        build=build_cgcnn,
        train_defaults=CGCNN_TRAINING,
        search_space="cgcnn.yaml",
        paper=PAPER,
        display_name="CGCNN",
    ),
    groups=("all-structure",),
)
