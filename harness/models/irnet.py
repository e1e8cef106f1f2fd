"""IRNet, SRNet and PlainNet: deep fully connected regressors on the 145 Magpie attributes.

D. Jha, L. Ward, Z. Yang, C. Wolverton, I. Foster, W.-k. Liao, A. Choudhary, A. Agrawal,
"IRNet: A General Purpose Deep Residual Regression Framework for Materials Discovery", KDD 2019,
https://doi.org/10.1145/3292500.3330703; and D. Jha et al., "Enabling deeper learning on big
data for materials informatics applications", Sci. Rep. 11, 4244 (2021),
https://doi.org/10.1038/s41598-021-83193-1. Reference code: github.com/NU-CUCIS/IRNet
(``dl_regressors.py``; architecture strings such as ``1024BARx4-512BARx3-...-32BARx1-1``).

A layer is ``h = ReLU(BatchNorm(W x + b))``. The shortcut mode chooses where residuals go:

- ``individual`` (IRNet, "BAR"): every layer ``x <- h(x) + s(x)``, ``s`` the identity where the
  width stays, else a linear projection ``P x + c`` (the reference code's ``fully_connected``,
  which has a bias); the first layer projects the input (145 -> 1024).
- ``stack`` (SRNet, "BAxnR"): one shortcut around each stack of equal-width layers,
  ``x <- stack(x) + s(x)``, projected where the width changes (the first stack: from the input).
- ``none`` (PlainNet, "BA").

After the last hidden layer one ``Linear(width, 1)`` predicts the (scaled) target.
17 layers: 1024x4, 512x3, 256x3, 128x3, 64x2, 32x1 -> 1. 48 layers: as the reference code
writes it, 1024x4 twice, 512x4 twice, 256x4 twice, 128x4 twice, 64x4 twice, 32x4, 16x3 -> 1
(= 1024x8, 512x8, 256x8, 128x8, 64x8, 32x4, 16x3 -> 1; the split into stacks of 4 matters only
for SRNet's shortcuts). Paper recipe: Adam, lr 1e-4, batch 32, MAE loss, no dropout.

Adapted:
- Inputs are standardised with the mean/std of the training rows (``TrainStandardizer``, on by
  default; ``standardize_input=False`` feeds raw attributes as the reference code did). Raw
  Magpie columns span 1e-3..1e4, and the projection shortcut of the first layer adds them
  unnormalised to the 1024-wide features. The standardiser's statistics come only from batches
  seen in training mode (after one epoch: exactly the training split's); it has no parameters,
  so parameter counts are those of the layer table.
- Weights are initialised as the reference code's TF-slim layers (Glorot uniform, zero bias), not
  PyTorch's default; BatchNorm uses PyTorch's momentum 0.1 / eps 1e-5 (slim: decay 0.999, eps 1e-3,
  whose running averages lag far behind on small datasets).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.featurize.magpie import N_MAGPIE, TabularBatch
from harness.models.blocks import glorot_linear_init_
from harness.models.registry import MAGPIE, ModelSpec, register

IRNET17_STACKS = ((1024, 4), (512, 3), (256, 3), (128, 3), (64, 2), (32, 1))
IRNET48_STACKS = (
    (1024, 4), (1024, 4), (512, 4), (512, 4), (256, 4), (256, 4),
    (128, 4), (128, 4), (64, 4), (64, 4), (32, 4), (16, 3),
)
SHORTCUTS = ("individual", "stack", "none")


@dataclass
class IRNetConfig:
    stacks: tuple[tuple[int, int], ...] = IRNET17_STACKS  # (width, layers) per stack
    shortcut: str = "individual"  # "individual" (IRNet) | "stack" (SRNet) | "none" (PlainNet)
    standardize_input: bool = True

    def __post_init__(self) -> None:
        self.stacks = tuple((int(w), int(n)) for w, n in self.stacks)  # YAML gives lists
        if not self.stacks or min(min(w, n) for w, n in self.stacks) < 1:
            raise ValueError(f"stacks need at least one (width >= 1, layers >= 1) pair, got {self.stacks}")
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}")

    @property
    def depth(self) -> int:
        """Weighted layers, the number in the paper's names: hidden layers + the output layer."""
        return sum(n for _, n in self.stacks) + 1


class TrainStandardizer(nn.Module):
    """``(x - mean) / std`` with the exact mean/std of every row seen in training mode.

    Each training-mode forward folds its batch into running float64 statistics (Chan et al.'s
    pairwise update) before normalising, so after one epoch they are those of the training
    split, and later epochs (the same rows again) leave them unchanged. Eval mode only reads
    them, so validation and test rows never enter. Buffers, not parameters: they travel in the
    state dict and checkpoints. Constant columns get std 1, as scikit-learn's StandardScaler.

    Inputs are clipped to each column's training range first (training rows are unchanged).
    Why: a column nearly constant on the training rows has a tiny std, and a test row outside
    its range becomes a huge input that a ReLU network extrapolates linearly (matbench_expt_gap
    fold 3: a Magpie column with training std 5.6e-7 puts Fe9Co7 at 2.7e6 std; the same case
    sent a ridge prediction 49,000 eV off, see ``harness/models/classical.py``).
    """

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(n_features, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(n_features, dtype=torch.float64))  # sum of squared deviations
        self.register_buffer("low", torch.full((n_features,), math.inf, dtype=torch.float64))
        self.register_buffer("high", torch.full((n_features,), -math.inf, dtype=torch.float64))

    def reset_parameters(self) -> None:
        for buffer in (self.count, self.mean, self.m2):
            buffer.zero_()
        self.low.fill_(math.inf)
        self.high.fill_(-math.inf)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints written before the range was kept have no low/high: load them as unbounded
        # (their behaviour when written) instead of failing a resumed trial on missing keys.
        for name, fill in (("low", -math.inf), ("high", math.inf)):
            state_dict.setdefault(prefix + name, torch.full_like(getattr(self, name), fill))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def _update(self, x: Tensor) -> None:
        n = x.shape[0]
        batch_mean = x.mean(dim=0)
        batch_m2 = ((x - batch_mean) ** 2).sum(dim=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += batch_m2 + delta**2 * (self.count * n / total)
        self.count.copy_(total)
        torch.minimum(self.low, x.min(dim=0).values, out=self.low)
        torch.maximum(self.high, x.max(dim=0).values, out=self.high)

    def forward(self, x: Tensor) -> Tensor:
        x64 = x.double()
        if self.training:
            self._update(x64)
        # torch.where, not `if self.count > 0`: no host sync per forward on a GPU. Before any
        # training row the bounds are (+inf, -inf) and the clamp result is discarded.
        x64 = torch.where(self.count > 0, torch.clamp(x64, self.low, self.high), x64)
        std = (self.m2 / self.count.clamp(min=1)).sqrt()
        std = torch.where(std < 10 * torch.finfo(torch.float64).eps, torch.ones_like(std), std)
        return ((x64 - self.mean) / std).to(x.dtype)


class Residual(nn.Module):
    """``body(x) + shortcut(x)``; the shortcut is a linear projection where the width changes."""

    def __init__(self, body: nn.Module, in_width: int, out_width: int) -> None:
        super().__init__()
        self.body = body
        self.shortcut = nn.Linear(in_width, out_width) if in_width != out_width else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.shortcut(x)


def fc_bn_relu(in_width: int, out_width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_width, out_width), nn.BatchNorm1d(out_width), nn.ReLU())


class IRNet(nn.Module):
    """``forward(batch) -> [B]`` predictions (scaled units) from ``batch.x`` ``[B, n_features]``."""

    def __init__(self, config: IRNetConfig, n_features: int = N_MAGPIE) -> None:
        super().__init__()
        self.config = config
        self.standardize = TrainStandardizer(n_features) if config.standardize_input else nn.Identity()
        stacks: list[nn.Module] = []
        width = n_features
        for out_width, n_layers in config.stacks:
            layers: list[nn.Module] = []
            stack_in = width
            for _ in range(n_layers):
                layer = fc_bn_relu(width, out_width)
                if config.shortcut == "individual":
                    layer = Residual(layer, width, out_width)
                layers.append(layer)
                width = out_width
            stack: nn.Module = nn.Sequential(*layers)
            if config.shortcut == "stack":
                stack = Residual(stack, stack_in, out_width)
            stacks.append(stack)
        self.hidden = nn.Sequential(*stacks)
        self.output = nn.Linear(width, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform weights and zero biases (TF-slim's defaults); fresh BatchNorm and standardiser."""
        glorot_linear_init_(self)
        for module in self.modules():
            if isinstance(module, (nn.BatchNorm1d, TrainStandardizer)):
                module.reset_parameters()

    def forward(self, batch: TabularBatch) -> Tensor:
        return self.output(self.hidden(self.standardize(batch.x))).squeeze(-1)


def build_irnet(config: IRNetConfig, feature_info: dict | None = None) -> IRNet:
    return IRNet(config, int((feature_info or {}).get("n_features", N_MAGPIE)))


# The paper recipe (IRNet's sample-run.config and dl_regressors.py): Adam, lr 1e-4, batch 32, MAE.
IRNET_TRAINING = {"optimizer": "adam", "lr": 1e-4, "batch_size": 32, "loss": "mae", "scheduler": "none"}
PAPER = (
    "Jha et al., KDD 2019, doi:10.1145/3292500.3330703; "
    "Jha et al., Sci. Rep. 11, 4244 (2021), doi:10.1038/s41598-021-83193-1"
)

IRNET17 = ModelSpec(
    name="irnet17",
    input_kind=MAGPIE,
    config_cls=IRNetConfig,
    build=build_irnet,
    train_defaults=IRNET_TRAINING,
    search_space="irnet.yaml",
    paper=PAPER,
    display_name="IRNet-17",
    # No fixed length: the reference trains until 200 epochs pass without a better validation
    # error (sample-run.config "patience": 200; dl_regressors.py counts it in epochs,
    # patience * train_size / batch_size steps, checked every 1,000 steps).
    paper_patience=200,
)
register(IRNET17, groups=("all-composition",))
register(
    dataclasses.replace(IRNET17, name="irnet48", display_name="IRNet-48", config_overrides={"stacks": IRNET48_STACKS}),
    groups=("all-composition",),
)
register(
    dataclasses.replace(IRNET17, name="srnet17", display_name="SRNet-17", config_overrides={"shortcut": "stack"}),
    groups=("all-composition",),
)
register(
    dataclasses.replace(IRNET17, name="plainnet17", display_name="PlainNet-17", config_overrides={"shortcut": "none"}),
    groups=("all-composition",),
)
