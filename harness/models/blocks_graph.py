"""Building blocks shared by the crystal-graph models (ALIGNN, Crysformer, CGCNN, SchNet, LERN).

Everything reads the batch layout of ``harness/featurize/graph_types.py``: ``edge_index`` row 0
is the neighbour ``j`` (source), row 1 the centre ``i`` (target); ``lg_edge_index`` joins two
bonds ``a -> b`` that share their centre atom, messages flowing to ``b``.

- :class:`RBFExpansion` ``d -> exp(-gamma (d - mu_k)^2)``, ``mu_k`` evenly spaced in
  ``[vmin, vmax]`` (``bins`` of them). ``gamma`` defaults to ``1 / spacing`` as in ALIGNN's
  ``RBFExpansion`` (a quirk kept on purpose: 1/spacing, not 1/spacing^2); CGCNN passes
  ``1 / step^2`` (its ``GaussianDistance`` with ``var = step``). Its far tail is cut to 0
  (:func:`drop_subnormal_tail`).
- :class:`ElementTable` a frozen per-element feature table looked up by atomic number
  (the CGCNN 92-d one-hot-binned atom features of Xie & Grossman, ``cgcnn_atom_features``).
- :func:`atom_embedding` ``"learned"`` (``nn.Embedding`` by Z) or ``"cgcnn"`` (table -> linear).
- :func:`mlp` Linear/activation stacks for readouts and embeddings.
- :func:`scatter_sum` / :func:`scatter_mean` segment sums with ``index_add_`` (faster on CPU and
  GPU than ``scatter_add_`` on an expanded index, and what PyG falls back to without
  torch-scatter anyway).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

MAX_Z = 118  # learned embeddings cover H..Og
CGCNN_MAX_Z = 100  # the CGCNN atom_init table covers H..Fm


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """``out[index[e]] += src[e]`` along dim 0, ``out`` of ``dim_size`` rows."""
    out = src.new_zeros((dim_size,) + tuple(src.shape[1:]))
    return out.index_add_(0, index, src)


def scatter_mean(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Mean of the rows of ``src`` in each segment (empty segments give 0)."""
    total = scatter_sum(src, index, dim_size)
    count = torch.zeros(dim_size, dtype=src.dtype, device=src.device)
    count.index_add_(0, index, torch.ones_like(index, dtype=src.dtype))
    return total / count.clamp(min=1).view((-1,) + (1,) * (src.dim() - 1))


GAUSSIAN_TAIL = 1e-30  # basis values below this become exactly 0 (float32's smallest normal: 1.2e-38)


def drop_subnormal_tail(basis: Tensor) -> Tensor:
    """``basis`` (non-negative Gaussian values) with every entry under ``GAUSSIAN_TAIL`` set to 0.

    Why: ``exp(-gamma (d - mu_k)^2)`` lands in float32's subnormal range for centres ``mu_k``
    far from ``d``, and x86 CPUs take a slow microcode path for every multiply-add that reads or
    yields a subnormal. The basis feeds the first linear layer of every edge, so the backward
    matmuls over the edges ran at a fifth of their speed. On an Intel Xeon (1 thread) a training
    step on matbench_phonons took 195 ms with the tail and 35 ms without for CGCNN (batch 64),
    54 and 10 ms for SchNet (batch 32); an epoch of 500 mp_2018 structures 6.3 s and 1.8 s
    (CGCNN), 3.4 s and 0.8 s (SchNet). The penalty depends on the CPU: on an earlier session's
    machine that CGCNN epoch took 1.4 s with the tail. ``torch.set_flush_denormal`` does as well,
    but only in the thread that calls it: torch's intra-op workers kept producing subnormals.
    A value under 1e-30 beside the O(1) values of the same row carries nothing; its gradient is
    0 instead of ~1e-30.
    """
    return basis.masked_fill(basis < GAUSSIAN_TAIL, 0.0)


class RBFExpansion(nn.Module):
    """``[*] -> [*, bins]``: Gaussian radial basis ``exp(-gamma (x - mu_k)^2)``."""

    def __init__(self, vmin: float, vmax: float, bins: int, gamma: float | None = None) -> None:
        super().__init__()
        if bins < 2 or not vmax > vmin:
            raise ValueError(f"RBF needs bins >= 2 and vmax > vmin, got bins={bins}, [{vmin}, {vmax}]")
        centers = torch.linspace(vmin, vmax, bins)
        self.register_buffer("centers", centers, persistent=False)
        spacing = (vmax - vmin) / (bins - 1)
        self.gamma = float(gamma) if gamma is not None else 1.0 / spacing
        self.bins = bins

    def forward(self, x: Tensor) -> Tensor:
        return drop_subnormal_tail(torch.exp(-self.gamma * (x.unsqueeze(-1) - self.centers.to(x.dtype)) ** 2))


@lru_cache(maxsize=1)
def _cgcnn_table() -> tuple[tuple[float, ...], ...]:
    import matminer

    path = Path(matminer.__file__).parent / "utils" / "data_files" / "cgcnn_atom_feature.json"
    with open(path) as f:
        raw = json.load(f)
    width = len(next(iter(raw.values())))
    rows = [[0.0] * width for _ in range(CGCNN_MAX_Z + 1)]  # row 0 unused (no element 0)
    for key, values in raw.items():
        rows[int(key)] = [float(v) for v in values]
    return tuple(tuple(r) for r in rows)


def cgcnn_atom_features() -> Tensor:
    """``[101, 92]`` CGCNN atom features (Xie & Grossman 2018, ``atom_init.json``), row = Z.

    Read from matminer's copy (``matminer/utils/data_files/cgcnn_atom_feature.json``; the same
    table as CGCNN's ``atom_init.json`` and jarvis-tools' ``atom_init.json`` that ALIGNN uses).
    """
    return torch.tensor(_cgcnn_table(), dtype=torch.float32)


class ElementTable(nn.Module):
    """``z [N] -> [N, F]``: frozen per-element features (a buffer; no parameters)."""

    def __init__(self, table: Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table.clone(), persistent=False)

    @property
    def width(self) -> int:
        return int(self.table.shape[1])

    def forward(self, z: Tensor) -> Tensor:
        rows = self.table.shape[0]
        if z.device.type == "cpu":
            if z.numel() and int(z.max()) >= rows:
                raise ValueError(f"atomic number {int(z.max())} is outside the element table (Z <= {rows - 1})")
        elif z.numel():
            # No host sync on an accelerator (int(z.max()) would make the host wait for the GPU
            # every step): the check runs on the device and fails, as a device-side assert
            # without this message, at a later kernel launch (CPU runs give the clear error).
            torch._assert_async((z < rows).all())
        return self.table.index_select(0, z)


def atom_embedding(kind: str, dim: int) -> nn.Module:
    """``z -> [N, dim]``: ``"learned"`` = ``nn.Embedding(119, dim)``; ``"cgcnn"`` = CGCNN table -> Linear."""
    if kind == "learned":
        return nn.Embedding(MAX_Z + 1, dim)
    if kind == "cgcnn":
        table = ElementTable(cgcnn_atom_features())
        return nn.Sequential(table, nn.Linear(table.width, dim))
    raise ValueError(f"atom embedding must be 'learned' or 'cgcnn', got {kind!r}")


ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "softplus": nn.Softplus, "gelu": nn.GELU}


def mlp(widths: tuple[int, ...] | list[int], activation: str = "silu", last_activation: bool = False) -> nn.Sequential:
    """``Linear(w0, w1), act, Linear(w1, w2), ...``; no activation after the last unless asked."""
    if len(widths) < 2:
        raise ValueError(f"mlp needs at least an input and an output width, got {widths}")
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if k < len(widths) - 2 or last_activation:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def graph_sizes(graph) -> tuple[Tensor, int]:
    """``(batch vector [N], number of graphs)`` of a PyG ``Batch`` (or a single graph)."""
    batch = getattr(graph, "batch", None)
    if batch is None:
        return torch.zeros(graph.num_nodes, dtype=torch.long, device=graph.z.device), 1
    return batch, int(graph.num_graphs)
