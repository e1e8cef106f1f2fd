"""Roost: representation learning from stoichiometry by message passing.

R. E. A. Goodall, A. A. Lee, "Predicting materials properties without crystal structure: deep
representation learning from stoichiometry", Nat. Commun. 11, 6280 (2020),
https://doi.org/10.1038/s41467-020-19964-7. Reference code: github.com/CompRhys/roost
(``roost/roost/model.py``, ``roost/segments.py``).

A composition is a dense graph: every element i exchanges messages with every element j of the
same formula (j = i included), weighted by the fractions w_j.

    h_i   = [W m(Z_i) + b ; w_i]                               m: mat2vec (200) -> 63, plus w_i = 64
    e_ij  = [h_i ; h_j]
    a_ij  = w_j^p exp(g(e_ij)) / sum_k w_k^p exp(g(e_ik))      weighted soft attention, p learnable
    h_i  <- h_i + mean_heads sum_j a_ij f(e_ij)                3 layers, 3 heads; g, f: MLP 256, LeakyReLU
    c     = mean_heads sum_i a_i f'(h_i),  a_i = w_i^p' exp(g'(h_i)) / sum_k w_k^p' exp(g'(h_k))
    (mu, log sigma) = ResidualNetwork(c)                       1024-512-256-128-64, ReLU

RobustL1 loss, AdamW (lr 3e-4, weight decay 1e-6), batch 128, 100 epochs: the reference code's
defaults (``examples/roost-example.py``).

Adapted:
- Dense, masked tensors over the padded ``[B, L]`` batch instead of scatter operations over an
  edge list: a formula has at most ~15 elements, so the ``[B, L, L]`` pair tensor is small, and
  the padded ``CompositionBatch`` every composition model reads needs no graph collation.
  ``w^p exp(g) / sum`` is computed as a masked softmax of ``g + p log w`` (the same value,
  without the reference code's 1e-10 in the denominator).
- Element embedding: mat2vec (CrabNet's table) instead of Roost's matscholar embedding; both are
  200-d word embeddings of element names from the same materials-science text corpus.
- Output network as in the paper (one residual network 1024-512-256-128-64); later versions of
  the reference code split it into a "trunk" and per-target heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.featurize.composition import CompositionBatch, element_table
from harness.models.blocks import ResidualNetwork
from harness.models.registry import COMPOSITION_TOKENS, ModelSpec, register


@dataclass
class RoostConfig:
    elem_fea_len: int = 64
    n_graph: int = 3  # message-passing layers
    elem_heads: int = 3
    elem_hidden: int = 256  # width of the gate and message MLPs of the message-passing layers
    cry_heads: int = 3
    cry_hidden: int = 256  # ... and of the pooling to the crystal representation
    out_hidden: tuple[int, ...] = (1024, 512, 256, 128, 64)
    embedding: str = "mat2vec"

    def __post_init__(self) -> None:
        self.out_hidden = tuple(int(width) for width in self.out_hidden)  # YAML gives lists
        if self.elem_fea_len < 2:
            raise ValueError(f"elem_fea_len must be >= 2 (embedding + the fraction), got {self.elem_fea_len}")
        if min(self.n_graph + 1, self.elem_heads, self.cry_heads, self.elem_hidden, self.cry_hidden) < 1:
            raise ValueError("n_graph must be >= 0; heads and hidden widths >= 1")
        if any(width < 1 for width in self.out_hidden):
            raise ValueError(f"out_hidden widths must be positive, got {self.out_hidden}")


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Roost's ``SimpleNetwork`` with one hidden layer."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, out_dim))


class WeightedAttention(nn.Module):
    """One head of Roost's weighted soft-attention pooling, dense form.

    ``x [..., N, F]`` are the N candidates of each softmax (neighbours j of an element, or the
    elements of a formula), ``log_w [..., N]`` their log fractions, ``mask [..., N]`` the real ones.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.gate_nn = mlp(in_dim, hidden, 1)
        self.message_nn = mlp(in_dim, hidden, out_dim)
        self.pow = nn.Parameter(torch.randn(1))  # as the reference code: p ~ N(0, 1)

    def forward(self, x: Tensor, log_w: Tensor, mask: Tensor) -> Tensor:
        score = self.gate_nn(x).squeeze(-1) + self.pow * log_w  # log(w^p exp(g))
        attention = torch.softmax(score.masked_fill(~mask, float("-inf")), dim=-1)
        return (attention.unsqueeze(-1) * self.message_nn(x)).sum(dim=-2)


class MessageLayer(nn.Module):
    """``h_i <- h_i + mean over heads of sum_j a_ij f([h_i ; h_j])`` over all pairs of a formula."""

    def __init__(self, fea_len: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(WeightedAttention(2 * fea_len, hidden, fea_len) for _ in range(heads))

    def forward(self, h: Tensor, log_w: Tensor, real: Tensor) -> Tensor:
        L = h.shape[1]
        pairs = torch.cat([h.unsqueeze(2).expand(-1, -1, L, -1), h.unsqueeze(1).expand(-1, L, -1, -1)], dim=-1)
        nbr_log_w = log_w.unsqueeze(1).expand(-1, L, -1)  # [B, i, j]: weight of the neighbour j
        nbr_mask = real.unsqueeze(1).expand(-1, L, -1)
        update = torch.stack([head(pairs, nbr_log_w, nbr_mask) for head in self.heads]).mean(dim=0)
        return h + update


class Roost(nn.Module):
    """``forward(batch) -> [B, 2]`` (mean, log std); ``element_features(batch)`` for CECV."""

    def __init__(self, config: RoostConfig, table: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        d = config.elem_fea_len
        table = element_table(config.embedding) if table is None else table
        self.embedding = nn.Embedding.from_pretrained(table, freeze=True)
        self.embed_in = nn.Linear(table.shape[1], d - 1)  # the last feature is the fraction itself
        self.graphs = nn.ModuleList(MessageLayer(d, config.elem_heads, config.elem_hidden) for _ in range(config.n_graph))
        self.cry_pool = nn.ModuleList(WeightedAttention(d, config.cry_hidden, d) for _ in range(config.cry_heads))
        self.output_nn = ResidualNetwork(d, 2, config.out_hidden, activation=nn.ReLU)

    def element_features(self, batch: CompositionBatch) -> tuple[Tensor, Tensor]:
        """``([B, L, elem_fea_len], real [B, L])``: element features after message passing, zero at padding."""
        elements, fractions = batch.elements, batch.fractions
        real = elements != 0
        log_w = torch.log(fractions.clamp(min=1e-12))  # padding: finite, and masked anyway
        h = torch.cat([self.embed_in(self.embedding(elements)), fractions.unsqueeze(-1)], dim=-1)
        for graph in self.graphs:
            h = graph(h, log_w, real)
        return h.masked_fill(~real.unsqueeze(-1), 0.0), real

    def forward(self, batch: CompositionBatch) -> Tensor:
        h, real = self.element_features(batch)
        log_w = torch.log(batch.fractions.clamp(min=1e-12))
        crystal = torch.stack([head(h, log_w, real) for head in self.cry_pool]).mean(dim=0)
        return self.output_nn(crystal)  # [B, 2] = (mean, log std)


def build_roost(config: RoostConfig, feature_info: dict | None = None) -> Roost:
    return Roost(config)


# The reference code's defaults: AdamW lr 3e-4, weight decay 1e-6, batch 128, 100 epochs, robust L1.
ROOST_TRAINING = {
    "optimizer": "adamw",
    "lr": 3e-4,
    "weight_decay": 1e-6,
    "loss": "robust_l1",
    "scheduler": "none",
    "batch_size": 128,
    "epochs": 100,
}

register(
    ModelSpec(
        name="roost",
        input_kind=COMPOSITION_TOKENS,
        config_cls=RoostConfig,
        build=build_roost,
        train_defaults=ROOST_TRAINING,
        search_space="roost.yaml",
        paper="Goodall, Lee, Nat. Commun. 11, 6280 (2020), doi:10.1038/s41467-020-19964-7",
        display_name="Roost",
    ),
    groups=("all-composition",),
)
