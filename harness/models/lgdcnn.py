"""L-G-DCNN: LSTM and GRU fused with a deep convolutional network (and its V1 variant).

H. Du, H. Wang, "Rational Design of Deep Learning Networks Based on a Fusion Strategy for
Improved Material Property Predictions", J. Chem. Theory Comput. 20, 6756-6771 (2024),
https://doi.org/10.1021/acs.jctc.4c00187. Reference code: github.com/dhw059/DeepModelFusion
(``lgdcnn/fusion_lstm_dcnn.py``; V1: ``fusion_lstm_dcnn_v1.py``).

CrabNet's transformer is replaced by recurrent "global" and convolutional "local" extractors:

    x      = CompositionInput.embed(Z, f)                      CrabNet's input stage, d = 512
    h1     = attend(BiLSTM(x))                                 2 x 256 = 512 features per element
    h2     = attend(BiGRU(h1))
    attend(h) = h + h * softmax_i(w2 ReLU(W1 h_i + b1) + b2)   soft attention over the elements
    c      = Conv1d_region(h2)                                 512 -> 512 channels, kernel 3, pad 1
    c      = c + Block(c), (1 + n_blocks) times                Block = ReLU-Conv1d-ReLU-Conv1d
    V1:  c = maxpool_features(h1 + h2 + c; kernel 3, stride 1, pad 1)
    (mu, log sigma) = gated_mean(ResidualNetwork(c_i))         CrabNet's output head

Trained with CrabNet's recipe (RobustL1, Lamb + Lookahead, cyclic LR 1e-4..6e-3, SWA, 300 epochs),
as the reference code does.

What is adapted, and why:
- **Padding never leaks.** The reference code runs the RNNs, the attention softmax and the
  convolutions over padded positions, so a prediction depends on how much padding a batch has.
  Here the RNNs read packed sequences (``pack_padded_sequence``), the attention softmax is
  masked to real elements, and padded positions are zeroed before every convolution (so they
  act exactly like the convolution's own zero padding).
- **Element order is canonical.** RNNs and convolutions see a sequence, so order matters.
  The model sorts each row itself (largest fraction first, ties by atomic number, padding
  last) so any column order of the same composition gives the same prediction.
- ``n_blocks`` counts the residual blocks after the first one, as the reference code's
  ``blocks`` argument does: ``n_blocks=2`` ("L-G-DCNN-2B") is three residual blocks. The
  reference's ``max_pool1d(kernel 1, stride 1)`` between blocks is the identity: left out.
  The released code prints "Model size: 8635911 parameters"; ``out_hidden=()`` gives exactly
  that model (its output layer is a single ``Linear(512, 3)``).
- Output head: CrabNet's residual network (1024-512-256-128), as the harness's design asks;
  ``out_hidden=()`` selects the reference code's single linear layer instead.
- Fractional encodings: CrabNet's (resolution 5000, sin/cos); the reference code used
  resolution 2000 with sin only. Fraction jitter (0.02) as CrabNet, in ``forward``.
- V1's max-pool runs over the feature axis: the reference code applies ``F.max_pool1d`` to a
  ``[B, L, 512]`` tensor, which pools the last (feature) axis; it never mixes elements.
- The BiLSTM and BiGRU share one attention scorer, as in the reference code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from harness.featurize.composition import CompositionBatch, element_table
from harness.models.blocks import (
    CompositionInput,
    ResidualNetwork,
    canonical_order,
    gated_mean,
    jitter_fractions,
)
from harness.models.crabnet import CRABNET_TRAINING, EMBEDDINGS
from harness.models.registry import COMPOSITION_TOKENS, ModelSpec, register


@dataclass
class LGDCNNConfig:
    d_model: int = 512  # CrabNet's embedding width; each RNN direction has d_model / 2 units
    n_blocks: int = 2  # residual conv blocks after the first ("L-G-DCNN-2B": 2)
    kernel_size: int = 3
    fusion: bool = False  # V1: max-pool over features of (LSTM + GRU + DCNN) outputs
    embedding: str = "mat2vec"
    fractional_resolution: int = 5000
    out_hidden: tuple[int, ...] = (1024, 512, 256, 128)  # () = the reference code's Linear head
    fraction_noise: float = 0.02
    residual_bias: bool = False

    def __post_init__(self) -> None:
        self.out_hidden = tuple(int(width) for width in self.out_hidden)  # YAML gives lists
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.d_model < 2 or self.d_model % 2:
            raise ValueError(f"d_model must be even (two RNN directions of d_model/2), got {self.d_model}")
        if self.n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {self.n_blocks}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (length-preserving), got {self.kernel_size}")
        if self.fractional_resolution < 2 or self.fraction_noise < 0:
            raise ValueError("fractional_resolution must be >= 2 and fraction_noise >= 0")
        if any(width < 1 for width in self.out_hidden):
            raise ValueError(f"out_hidden widths must be positive, got {self.out_hidden}")


class ConvBlock(nn.Module):
    """DPCNN's residual unit ``ReLU-Conv1d-ReLU-Conv1d``, with padded positions zeroed before each conv."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:  # x [B, C, L], keep [B, 1, L]
        x = self.conv1(F.relu(x) * keep)
        return self.conv2(F.relu(x) * keep)


class LGDCNN(CompositionInput):
    """``forward(batch) -> [B, 2]`` (mean, log std); ``element_features(batch)`` for CECV."""

    def __init__(self, config: LGDCNNConfig, table: Tensor | None = None) -> None:
        d, k = config.d_model, config.kernel_size
        table = element_table(config.embedding) if table is None else table
        super().__init__(d, table, config.fractional_resolution)
        self.config = config
        self.lstm = nn.LSTM(d, d // 2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(d, d // 2, batch_first=True, bidirectional=True)
        self.attention = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 1))
        self.region_conv = nn.Conv1d(d, d, k, padding=k // 2)
        self.blocks = nn.ModuleList(ConvBlock(d, k) for _ in range(config.n_blocks + 1))
        self.output_nn = ResidualNetwork(d, 3, config.out_hidden, config.residual_bias)

    def forward(self, batch: CompositionBatch) -> Tensor:
        h, real = self._encode(batch)
        return gated_mean(self.output_nn(h), ~real)

    def element_features(self, batch: CompositionBatch) -> tuple[Tensor, Tensor]:
        """``([B, L, d_model], real [B, L])`` in the batch's own column order, zero at padding."""
        h, _ = self._encode(batch, keep_order=True)
        return h, batch.elements != 0

    def _encode(self, batch: CompositionBatch, keep_order: bool = False) -> tuple[Tensor, Tensor]:
        elements, fractions = batch.elements, batch.fractions
        order = canonical_order(elements, fractions)  # from the clean fractions: jitter must not reorder
        if self.training and self.config.fraction_noise > 0:
            fractions = jitter_fractions(fractions, elements == 0, self.config.fraction_noise)
        elements, fractions = elements.gather(1, order), fractions.gather(1, order)
        real = elements != 0  # real elements now come first in every row
        lengths = real.sum(dim=1).cpu()  # pack_padded_sequence wants lengths on the CPU

        x = self.embed(elements, fractions)
        h1 = self._attend(self._run(self.lstm, x, lengths), real)
        h2 = self._attend(self._run(self.gru, h1, lengths), real)
        h = self._convolve(h2, real)
        if self.config.fusion:
            h = F.max_pool1d(h1 + h2 + h, kernel_size=3, stride=1, padding=1)  # over the feature axis
        h = h.masked_fill(~real.unsqueeze(-1), 0.0)
        if keep_order:  # undo the sort: row j of the output is column j of the batch
            h = h.gather(1, order.argsort(dim=1).unsqueeze(-1).expand_as(h))
        return h, real

    @staticmethod
    def _run(rnn: nn.RNNBase, x: Tensor, lengths: Tensor) -> Tensor:
        """Bidirectional RNN over the real elements only; zeros at padded positions."""
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out

    def _attend(self, h: Tensor, real: Tensor) -> Tensor:
        """Soft attention with a residual: ``h + h * alpha``, alpha a softmax over real elements."""
        score = self.attention(h).squeeze(-1).masked_fill(~real, float("-inf"))
        alpha = torch.softmax(score, dim=1).unsqueeze(-1)
        return h + h * alpha

    def _convolve(self, h: Tensor, real: Tensor) -> Tensor:
        """DPCNN without downsampling: region conv, then residual blocks; ``[B, L, C]`` in and out."""
        keep = real.unsqueeze(1).to(h.dtype)  # [B, 1, L]
        x = self.region_conv(h.transpose(1, 2) * keep)
        for block in self.blocks:
            x = x + block(x, keep)
        return x.transpose(1, 2)


def build_lgdcnn(config: LGDCNNConfig, feature_info: dict | None = None) -> LGDCNN:
    return LGDCNN(config)


PAPER = "Du, Wang, J. Chem. Theory Comput. 20, 6756 (2024), doi:10.1021/acs.jctc.4c00187"

LGDCNN_SPEC = ModelSpec(
    name="lgdcnn",
    input_kind=COMPOSITION_TOKENS,
    config_cls=LGDCNNConfig,
    build=build_lgdcnn,
    train_defaults=dict(CRABNET_TRAINING),  # the reference code trains exactly as CrabNet
    search_space="lgdcnn.yaml",
    paper=PAPER,
    display_name="L-G-DCNN",
)
register(LGDCNN_SPEC, groups=("all-composition",))
register(
    dataclasses.replace(LGDCNN_SPEC, name="lgdcnn_v1", display_name="L-G-DCNN-V1", config_overrides={"fusion": True}),
    groups=("all-composition",),
)
