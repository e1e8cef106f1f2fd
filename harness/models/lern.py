"""LERN: a ResNet over local-environment matrices, applied per site and pooled over sites.

Li et al., J. Mater. Inf. (2024) (LERN, "local environment ResNet"): a ResNet-34-style 2-D CNN
that reads a small matrix describing the local environment of an adsorption site (rows =
properties of the atoms around the site, columns = neighbours / shells) and predicts the
hydrogen adsorption energy at that site.

Adaptation (this harness predicts bulk properties of whole crystals): the same CNN reads the
local-environment matrix of EVERY site of the crystal (``site_env`` [N, 1, 6, 11] from the
``crystal_graph_lern`` featurizer: 6 neighbour properties — Z, electronegativity, coordination
number, an elemental reference property, distance, valence — over 11 columns of neighbour
shells), gives one vector per site, and the vectors are averaged over the sites of each
structure (``global_mean_pool``) before an MLP predicts the property. The paper's model is the
per-site part; the pooling and the head are ours. Mean pooling keeps predictions of intensive
properties unchanged under a change of unit cell.

    s_n      = site_env of site n, standardised cell by cell      [1, 6, 11]
    f_n      = AvgPool(Stage4(Stage3(Stage2(Stage1(ReLU(BN(Conv1x1_32(s_n))))))))   [256]
    Stage k  = BasicBlocks: [3x3, 32] x 3 | [3x3, 64] x 4, stride 2 | [3x3, 128] x 6, s2 | [3x3, 256] x 3, s2
    BasicBlock(x) = ReLU(BN(Conv3x3(ReLU(BN(Conv3x3_s(x))))) + P(x)),  P = Conv1x1_s + BN where the
                    stride or width changes, else identity (He et al. 2016, ResNet-34 layout with
                    the widths halved: 32/64/128/256)
    y        = MLP(mean_{n in structure} f_n)                        256 -> 128 -> 1, ReLU

Also adapted: no max-pool after the stem (a 6x11 input has nothing to spare), and the inputs
are standardised cell by cell with the mean/std of the training rows (the featurizer already
divides each row by a fixed constant of the periodic table, so all are O(1); standardising
centres them, column by column; the statistics come only from batches seen in training mode,
as IRNet's ``TrainStandardizer``; ``standardize_input=False`` feeds them as featurized). Written with
``torch.nn`` building blocks (torchvision is not a dependency). Recipe (not stated in the
summary we follow): Adam, lr 1e-3, batch 64, MSE, cosine schedule, 300 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn
from torch_geometric.nn import global_mean_pool

from harness.featurize.graph_types import GraphBatch
from harness.models.blocks_graph import graph_sizes
from harness.models.irnet import TrainStandardizer
from harness.models.registry import CRYSTAL_GRAPH_LERN, ModelSpec, register

RESNET34_STAGES = ((32, 3, 1), (64, 4, 2), (128, 6, 2), (256, 3, 2))  # (width, blocks, stride)


@dataclass
class LERNConfig:
    stem_width: int = 32
    stages: tuple[tuple[int, int, int], ...] = RESNET34_STAGES
    head_hidden: tuple[int, ...] = (128,)
    env_shape: tuple[int, int, int] = (1, 6, 11)  # channels, properties, neighbour columns
    standardize_input: bool = True

    def __post_init__(self) -> None:
        self.stages = tuple((int(w), int(n), int(s)) for w, n, s in self.stages)  # YAML gives lists
        self.head_hidden = tuple(int(w) for w in self.head_hidden)
        self.env_shape = tuple(int(v) for v in self.env_shape)
        if self.stem_width < 1 or not self.stages or min(min(w, n, s) for w, n, s in self.stages) < 1:
            raise ValueError(f"stem_width and every (width, blocks, stride) must be >= 1, got {self.stages}")
        if any(w < 1 for w in self.head_hidden):
            raise ValueError(f"head_hidden widths must be >= 1, got {self.head_hidden}")
        if len(self.env_shape) != 3 or min(self.env_shape) < 1:
            raise ValueError(f"env_shape must be (channels, rows, columns), got {self.env_shape}")


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with BN, ReLU, and a (projection) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class LERN(nn.Module):
    """``forward(batch: GraphBatch) -> [B]``; reads ``batch.graph.site_env`` [N, C, H, W]."""

    def __init__(self, config: LERNConfig) -> None:
        super().__init__()
        self.config = config
        channels, rows, cols = config.env_shape
        self.standardize = TrainStandardizer(channels * rows * cols) if config.standardize_input else nn.Identity()
        self.stem = nn.Sequential(
            nn.Conv2d(channels, config.stem_width, 1, bias=False),
            nn.BatchNorm2d(config.stem_width),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        width = config.stem_width
        for out_width, n_blocks, stride in config.stages:
            for k in range(n_blocks):
                blocks.append(BasicBlock(width, out_width, stride if k == 0 else 1))
                width = out_width
        self.body = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = []
        for hidden in config.head_hidden:
            head += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        head.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*head)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's ResNet init: Kaiming-normal (fan_out) convs, BN weight 1 / bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
            elif isinstance(module, (nn.Linear, TrainStandardizer)):
                module.reset_parameters()

    def site_features(self, site_env: Tensor) -> Tensor:
        """``[N, C, H, W] -> [N, width]``: the per-site CNN (the paper's network without its head)."""
        n = site_env.shape[0]
        x = self.standardize(site_env.reshape(n, -1)).view_as(site_env)
        return self.pool(self.body(self.stem(x))).flatten(1)

    def forward(self, batch: GraphBatch) -> Tensor:
        g = batch.graph
        site_env = getattr(g, "site_env", None)
        if site_env is None:
            raise ValueError(
                "LERN needs per-site local environments (graph.site_env); use input kind 'crystal_graph_lern'"
            )
        if tuple(site_env.shape[1:]) != self.config.env_shape:
            raise ValueError(
                f"site_env has shape {tuple(site_env.shape[1:])} per site, LERN expects {self.config.env_shape}"
            )
        index, n_graphs = graph_sizes(g)
        return self.head(global_mean_pool(self.site_features(site_env), index, n_graphs)).squeeze(-1)


def build_lern(config: LERNConfig, feature_info: dict | None = None) -> LERN:
    shape = (feature_info or {}).get("site_env_shape")
    if shape is not None and tuple(shape) != config.env_shape:
        config = LERNConfig(**{**config.__dict__, "env_shape": tuple(shape)})
    return LERN(config)


LERN_TRAINING = {
    "optimizer": "adam",
    "lr": 1e-3,
    "batch_size": 64,
    "loss": "mse",
    "scheduler": "cosine",
    "epochs": 300,
}
PAPER = "Li et al., J. Mater. Inf. (2024), LERN (adapted: per-site, pooled over sites)"

LERN_SPEC = register(
    ModelSpec(
        name="lern",
        input_kind=CRYSTAL_GRAPH_LERN,
        config_cls=LERNConfig,
        build=build_lern,
        train_defaults=LERN_TRAINING,
        search_space="lern.yaml",
        paper=PAPER,
        display_name="LERN",
    ),
    groups=("all-structure",),
)
