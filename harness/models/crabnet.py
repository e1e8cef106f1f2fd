"""CrabNet: compositionally restricted attention-based network.

A. Y.-T. Wang, S. K. Kauwe, R. J. Murdock, T. D. Sparks, "Compositionally restricted
attention-based network for materials property predictions", npj Comput. Mater. 7, 77 (2021),
https://doi.org/10.1038/s41524-021-00545-1. Reference code: github.com/anthony-wang/CrabNet
(``kingcrab.py``, ``model.py``) and the crabnet==2.0.8 wheel. HotCrab is the same network with
a one-hot (atomic number) element table instead of mat2vec.

A composition is a set of elements ``Z_i`` with molar fractions ``f_i`` (i = 1..n, padded to L).

    e_i   = W m(Z_i) + b                       m: frozen element table (mat2vec, 200-d; one-hot, 118-d)
    p_i   = PE(f_i)                            first  d/2 features: linear fraction
    q_i   = PE(0.0025 (log2 f_i)^2)            second d/2 features: log fraction (clipped to <= 1)
    x_i   = 2^a e_i + [2^((1-b)^2) p_i ; 2^((1-c)^2) q_i]      a, b, c learnable, start at 1
    h     = TransformerEncoder(x, key padding mask)            3 post-norm layers, 4 heads, FF 2048
    (mu_i, s_i, g_i) = ResidualNetwork(h_i)                    1024-512-256-128, LeakyReLU, per element
    mu    = mean_i(mu_i) * sigmoid(mean_i(g_i)),  log sigma = mean_i(s_i)   (means over real elements)

``PE(v)`` is a table lookup at ``k = round(5000 v) - 1`` (v clipped to [1/5000, 1]) into a
sinusoid table ``PE[k, j] = sin(k / 50^(2j/(d/2)))`` for even ``j`` and ``cos`` for odd ``j``:
CrabNet's "fractional encoding", Vaswani's positional encoding with the position replaced by the
(discretised) fraction. The forward pass returns ``[B, 2] = (mu, log sigma)`` for the RobustL1
loss ``sqrt(2) |y - mu| exp(-log sigma) + log sigma`` (aleatoric uncertainty).

The input stage and the output head are shared with L-G-DCNN (``blocks.py``).

Faithful to the paper's code, with these adaptations, none of which changes the mathematics:
- ``batch_first`` tensors, ``torch.nn.TransformerEncoder`` with ``src_key_padding_mask`` as there;
  the third output ``g`` (a sigmoid gate on the mean, CrabNet's ``avg`` branch with
  ``out_dims=3``) is kept, so the output head has CrabNet's exact shape.
- The scalers use the paper-era forms ``2^a`` and ``2^((1-b)^2)``; the crabnet 2.x rewrite
  replaced them by plain ``a, b`` (same values at initialisation up to the factor 2 on ``e``).
- CrabNet's training-time fraction jitter (``fudge`` 0.02: ``f <- f (1 + 0.02 N(0,1))``,
  renormalised) lives in ``forward`` (training mode only) instead of the training loop, so the
  one shared trainer needs no model-specific code.
- ``fraction_weighted`` (multiply ``h_i`` by ``f_i`` before the output network) is off as in
  the paper's code; the 2.0.8 wheel turns it on by a changed default. The 2.0.8 wheel also never
  passes ``elem_prop`` to its embedder (its HotCrab silently used mat2vec); here it does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor, nn

from harness.featurize.composition import CompositionBatch, element_table
from harness.models.blocks import (  # noqa: F401  (FractionalEncoder, ResidualNetwork: re-exported)
    CompositionInput,
    FractionalEncoder,
    ResidualNetwork,
    gated_mean,
    jitter_fractions,
)
from harness.models.registry import COMPOSITION_TOKENS, ModelSpec, register

EMBEDDINGS = ("mat2vec", "onehot")


@dataclass
class CrabNetConfig:
    d_model: int = 512
    n_layers: int = 3
    heads: int = 4
    dim_feedforward: int = 2048
    dropout: float = 0.1
    embedding: str = "mat2vec"  # "mat2vec" (CrabNet) | "onehot" (HotCrab)
    fractional_resolution: int = 5000
    out_hidden: tuple[int, ...] = (1024, 512, 256, 128)
    fraction_noise: float = 0.02  # CrabNet's "fudge": relative jitter of fractions while training
    fraction_weighted: bool = False  # scale h_i by f_i before the output network (paper code: off)
    residual_bias: bool = False  # bias of the residual projections in the output network

    def __post_init__(self) -> None:
        self.out_hidden = tuple(int(width) for width in self.out_hidden)  # YAML gives lists
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.d_model < 2 or self.d_model % 2:
            raise ValueError(f"d_model must be even (two fractional encodings of d_model/2), got {self.d_model}")
        if self.heads < 1 or self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.n_layers < 1 or self.dim_feedforward < 1 or self.fractional_resolution < 2:
            raise ValueError("n_layers, dim_feedforward must be >= 1 and fractional_resolution >= 2")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.fraction_noise < 0:
            raise ValueError(f"fraction_noise must be >= 0, got {self.fraction_noise}")
        if not self.out_hidden or min(self.out_hidden) < 1:
            raise ValueError(f"out_hidden needs at least one positive width, got {self.out_hidden}")


class CrabNet(CompositionInput):
    """``forward(batch) -> [B, 2]``: predicted mean and log standard deviation (scaled units).

    ``element_features(batch)`` gives the per-element features the output head reads (CECV).
    """

    def __init__(self, config: CrabNetConfig, table: Tensor | None = None) -> None:
        d = config.d_model
        table = element_table(config.embedding) if table is None else table
        super().__init__(d, table, config.fractional_resolution)  # embedding, embed_in, scalers
        self.config = config
        layer = nn.TransformerEncoderLayer(
            d, config.heads, config.dim_feedforward, config.dropout, batch_first=True
        )
        # No nested tensors: a prototype API that warns on every evaluation, and batches come
        # trimmed to their longest formula already.
        self.transformer = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.output_nn = ResidualNetwork(d, 3, config.out_hidden, config.residual_bias)

    def reset_parameters(self) -> None:
        """Fresh weights, initialised as at construction.

        PyTorch's default initialisers; the encoder layers then start as copies of the first,
        as ``nn.TransformerEncoder`` builds them (deep copies of one layer) and so CrabNet did.
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.reset_parameters()
        for module in self.modules():
            if isinstance(module, nn.MultiheadAttention):
                module._reset_parameters()  # xavier in-projection, zero biases
        first = self.transformer.layers[0].state_dict()
        for layer in self.transformer.layers[1:]:
            layer.load_state_dict(first)
        for scaler in (self.emb_scaler, self.pos_scaler, self.pos_scaler_log):
            nn.init.ones_(scaler)

    def forward(self, batch: CompositionBatch) -> Tensor:
        x, real = self.element_features(batch)
        return gated_mean(self.output_nn(x), ~real)

    def element_features(self, batch: CompositionBatch) -> tuple[Tensor, Tensor]:
        """``([B, L, d_model], real [B, L])``: encoder output per element, zero at padding."""
        elements, fractions = batch.elements, batch.fractions
        padding = elements == 0  # [B, L]
        if self.training and self.config.fraction_noise > 0:
            fractions = jitter_fractions(fractions, padding, self.config.fraction_noise)

        x = self.transformer(self.embed(elements, fractions), src_key_padding_mask=padding)
        if self.config.fraction_weighted:
            x = x * fractions.unsqueeze(-1)
        return x.masked_fill(padding.unsqueeze(-1), 0.0), ~padding


def build_crabnet(config: CrabNetConfig, feature_info: dict | None = None) -> CrabNet:
    return CrabNet(config)


# The CrabNet recipe (model.py): Lamb + Lookahead, cyclic LR 1e-4..6e-3, SWA, RobustL1,
# batch 2**round(log2 N - 4) in [128, 4096] (batch_size None), 300 epochs.
CRABNET_TRAINING = {
    "optimizer": "lamb_lookahead",
    "loss": "robust_l1",
    "scheduler": "cyclic",
    "base_lr": 1e-4,
    "max_lr": 6e-3,
    "swa": True,
    "batch_size": None,
    "epochs": 300,
}
PAPER = "Wang, Kauwe, Murdock, Sparks, npj Comput. Mater. 7, 77 (2021), doi:10.1038/s41524-021-00545-1"

CRABNET = ModelSpec(
    name="crabnet",
    input_kind=COMPOSITION_TOKENS,
    config_cls=CrabNetConfig,
    build=build_crabnet,
    train_defaults=CRABNET_TRAINING,
    search_space="crabnet.yaml",
    paper=PAPER,
    display_name="CrabNet",
)
register(CRABNET, groups=("all-composition",))
register(
    dataclasses.replace(CRABNET, name="hotcrab", display_name="HotCrab", config_overrides={"embedding": "onehot"}),
    groups=("all-composition",),
)
