"""Pieces the composition models share: CrabNet's input stage and output head.

CrabNet (``crabnet.py``) and L-G-DCNN (``lgdcnn.py``) read a composition the same way and
predict from per-element features the same way; only the middle differs (a transformer there,
BiLSTM/BiGRU + convolutions here). Roost (``roost.py``) reuses the residual output network.
These pieces lived inside ``crabnet.py``; they are here so that no model copies them.
``canonical_order`` fixes the element order for models (and analyses) that read a sequence.

    x_i = 2^a W m(Z_i) + [2^((1-b)^2) PE(f_i) ; 2^((1-c)^2) PE(0.0025 log2(f_i)^2)]   CompositionInput.embed
    (mu, log sigma) = gated_mean(ResidualNetwork(h_i))                                  the output head

See ``crabnet.py`` for the formulas and the paper.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FractionalEncoder(nn.Module):
    """Sinusoidal encoding of a fraction (``log=True``: of ``0.0025 log2(f)^2``), ``width`` features."""

    def __init__(self, width: int, resolution: int, log: bool = False) -> None:
        super().__init__()
        self.resolution = resolution
        self.log = log
        position = torch.arange(resolution, dtype=torch.float32).unsqueeze(1)
        feature = torch.arange(width, dtype=torch.float32).unsqueeze(0)
        angle = position / torch.pow(50.0, 2 * feature / width)  # CrabNet: base 50, exponent 2j/width
        table = torch.where(feature.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
        self.register_buffer("table", table, persistent=False)  # a function of the config

    def forward(self, fractions: Tensor) -> Tensor:
        x = fractions
        if self.log:
            x = (0.0025 * torch.log2(x) ** 2).clamp(max=1.0)  # padding: log2(0) = -inf -> 1
        x = x.clamp(min=1.0 / self.resolution)
        index = torch.round(x * self.resolution).long() - 1
        return self.table[index]


class ResidualNetwork(nn.Module):
    """Roost's residual MLP: ``x <- act(W x) + R x`` per hidden layer, then a linear output.

    ``act`` is LeakyReLU in CrabNet's copy, ReLU in Roost's. With ``hidden=()`` it is one
    linear layer (L-G-DCNN's released code uses that as its output head).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: tuple[int, ...],
        bias: bool = False,
        activation: type[nn.Module] = nn.LeakyReLU,
    ) -> None:
        super().__init__()
        dims = [in_dim, *hidden]
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.res_fcs = nn.ModuleList(
            nn.Linear(a, b, bias=bias) if a != b else nn.Identity() for a, b in zip(dims, dims[1:])
        )
        self.act = activation()
        self.fc_out = nn.Linear(dims[-1], out_dim)

    def forward(self, x: Tensor) -> Tensor:
        for fc, res_fc in zip(self.fcs, self.res_fcs):
            x = self.act(fc(x)) + res_fc(x)
        return self.fc_out(x)


class CompositionInput(nn.Module):
    """CrabNet's input stage, as a base class: ``embed(elements, fractions) -> [B, L, d_model]``.

    A base class rather than a submodule so that CrabNet's parameter names (``embed_in.weight``,
    ``emb_scaler``, ...) and their order, hence its checkpoints and seeded initialisation, stay
    as they were before this was split out.
    """

    def __init__(self, d_model: int, table: Tensor, fractional_resolution: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding.from_pretrained(table, freeze=True)  # row 0 = padding = zeros
        self.embed_in = nn.Linear(table.shape[1], d_model)
        self.frac_encoder = FractionalEncoder(d_model // 2, fractional_resolution)
        self.log_frac_encoder = FractionalEncoder(d_model // 2, fractional_resolution, log=True)
        self.emb_scaler = nn.Parameter(torch.ones(1))
        self.pos_scaler = nn.Parameter(torch.ones(1))
        self.pos_scaler_log = nn.Parameter(torch.ones(1))

    def embed(self, elements: Tensor, fractions: Tensor) -> Tensor:
        x = self.embed_in(self.embedding(elements)) * 2**self.emb_scaler
        encoding = torch.cat(
            [
                self.frac_encoder(fractions) * 2 ** ((1 - self.pos_scaler) ** 2),
                self.log_frac_encoder(fractions) * 2 ** ((1 - self.pos_scaler_log) ** 2),
            ],
            dim=-1,
        )
        return x + encoding


def canonical_order(elements: Tensor, fractions: Tensor) -> Tensor:
    """Per-row column permutation ``[B, L]``: largest fraction first, ties by Z, padding last.

    For models that read a composition as a sequence (L-G-DCNN) and for CECV, which compares
    element-by-element matrices across compounds. Fractions are compared at 1e-6 so that rounding
    noise (a formula written in another order sums its amounts in another order) cannot swap
    two equal fractions.
    """
    frac_key = 1_000_000 - torch.round(fractions.double() * 1e6).long()
    key = (frac_key * 1000 + elements).masked_fill(elements == 0, torch.iinfo(torch.long).max)
    return key.argsort(dim=1, stable=True)


def jitter_fractions(fractions: Tensor, padding: Tensor, noise: float) -> Tensor:
    """CrabNet's training-time "fudge": ``f <- f (1 + noise N(0,1))``, clipped, renormalised."""
    noisy = fractions * (1 + torch.randn_like(fractions) * noise)
    noisy = noisy.clamp(0.0, 1.0).masked_fill(padding, 0.0)
    return noisy / noisy.sum(dim=1, keepdim=True)


def gated_mean(out: Tensor, padding: Tensor) -> Tensor:
    """Per-element ``[B, L, 3]`` outputs -> ``[B, 2]`` = (mean * sigmoid(gate), log std).

    Means over real elements only (``padding`` True marks padding), as CrabNet's output head.
    """
    out = out.masked_fill(padding.unsqueeze(-1), 0.0)
    out = out.sum(dim=1) / (~padding).sum(dim=1, keepdim=True)
    mean, log_std, gate = out.unbind(dim=-1)
    return torch.stack([mean * torch.sigmoid(gate), log_std], dim=-1)


def glorot_linear_init_(model: nn.Module) -> None:
    """Glorot-uniform weights and zero biases on every ``nn.Linear`` of ``model``: TF-slim's
    ``fully_connected`` defaults, which the TensorFlow originals of ElemNet and IRNet used."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
