"""ElemNet: a deep plain fully connected network on element fractions only.

D. Jha, L. Ward, A. Paul, W.-k. Liao, A. Choudhary, C. Wolverton, A. Agrawal, "ElemNet: Deep
Learning the Chemistry of Materials From Only Elemental Composition", Sci. Rep. 8, 17593 (2018),
https://doi.org/10.1038/s41598-018-35934-y. Reference code: github.com/NU-CUCIS/ElemNet
(``elemnet/dl_regressors.py``, ``sample/sample-run.config``: architecture
``1024x4D-512x3D-256x3D-128x3D-64x2-32x1-1``, dropouts ``[0.8, 0.9, 0.7, 0.8]``).

17 weighted layers: ``Linear -> ReLU`` x (1024x4, 512x3, 256x3, 128x3, 64x2, 32x1), then
``Linear(32, 1)``. Dropout follows each of the first four stacks; the reference code gives TF
*keep* probabilities 0.8, 0.9, 0.7, 0.8, i.e. drop probabilities 0.2, 0.1, 0.3, 0.2 here.
No batch normalisation, no shortcuts. Recipe: Adam, lr 1e-4, batch 32, MAE loss.

Adapted:
- Input: fractions of the elements H..Pu (94; ElemNet's 86 plus He, Ne, Ar, Po, At, Rn, Fr, Ra,
  see ``harness/featurize/fractions.py``). Columns of elements absent from a dataset stay zero.
- Dropout is off in evaluation. (The reference code also builds its evaluation graph with
  dropout when it predicts one target, so its test predictions are stochastic; we take that as
  unintended.)
- Weights are initialised as its TF-slim layers (Glorot uniform, zero bias), not PyTorch's default
  (weight variance 1/(3 fan_in)), which divides the activations' second moment by about 6 per
  ReLU layer and all but silences a 17-layer plain network at the start.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from harness.featurize.fractions import MAX_Z
from harness.featurize.magpie import TabularBatch
from harness.models.blocks import glorot_linear_init_
from harness.models.registry import ELEMENT_FRACTIONS, ModelSpec, register

ELEMNET_STACKS = ((1024, 4), (512, 3), (256, 3), (128, 3), (64, 2), (32, 1))
ELEMNET_DROPOUT = (0.2, 0.1, 0.3, 0.2)  # after stacks 1-4 (keep probabilities 0.8, 0.9, 0.7, 0.8)


@dataclass
class ElemNetConfig:
    stacks: tuple[tuple[int, int], ...] = ELEMNET_STACKS  # (width, layers) per stack
    dropout: tuple[float, ...] = ELEMNET_DROPOUT  # drop probability after stack i; none after the rest

    def __post_init__(self) -> None:
        self.stacks = tuple((int(w), int(n)) for w, n in self.stacks)  # YAML gives lists
        self.dropout = tuple(float(p) for p in self.dropout)
        if not self.stacks or min(min(w, n) for w, n in self.stacks) < 1:
            raise ValueError(f"stacks need at least one (width >= 1, layers >= 1) pair, got {self.stacks}")
        if len(self.dropout) > len(self.stacks):
            raise ValueError(f"{len(self.dropout)} dropout rates for {len(self.stacks)} stacks")
        if any(not 0.0 <= p < 1.0 for p in self.dropout):
            raise ValueError(f"dropout rates must be in [0, 1), got {self.dropout}")


class ElemNet(nn.Module):
    """``forward(batch) -> [B]`` predictions (scaled units) from fractions ``batch.x`` ``[B, n_elements]``."""

    def __init__(self, config: ElemNetConfig, n_features: int = MAX_Z) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = n_features
        for i, (out_width, n_layers) in enumerate(config.stacks):
            for _ in range(n_layers):
                layers += [nn.Linear(width, out_width), nn.ReLU()]
                width = out_width
            if i < len(config.dropout) and config.dropout[i] > 0:
                layers.append(nn.Dropout(config.dropout[i]))
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform weights and zero biases, TF-slim's ``fully_connected`` defaults."""
        glorot_linear_init_(self)

    def forward(self, batch: TabularBatch) -> Tensor:
        return self.net(batch.x).squeeze(-1)


def build_elemnet(config: ElemNetConfig, feature_info: dict | None = None) -> ElemNet:
    return ElemNet(config, int((feature_info or {}).get("n_features", MAX_Z)))


ELEMNET = ModelSpec(
    name="elemnet",
    input_kind=ELEMENT_FRACTIONS,
    config_cls=ElemNetConfig,
    build=build_elemnet,
    # dl_regressors.py: Adam, lr 1e-4, batch 32, MAE.
    train_defaults={"optimizer": "adam", "lr": 1e-4, "batch_size": 32, "loss": "mae", "scheduler": "none"},
    search_space="elemnet.yaml",
    paper="Jha et al., Sci. Rep. 8, 17593 (2018), doi:10.1038/s41598-018-35934-y",
    display_name="ElemNet",
    # No fixed length: dl_regressors.py loops until 200 epochs pass without a better validation
    # error (sample-run.config "patience": 200, counted in epochs; its num_epochs is never read).
    paper_patience=200,
)
register(ELEMNET, groups=("all-composition",))
