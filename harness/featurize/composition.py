"""Composition -> element tokens: what CrabNet-style models read.

A formula becomes two padded rows of length ``L`` (the most elements any formula of the
dataset has): the atomic numbers ``Z`` of its elements (0 = padding) and their molar fractions
(normalised to sum 1; 0 at padding). Elements are ordered by decreasing fraction, as CrabNet's
``get_edm`` does; the models are permutation invariant, so the order only makes rows stable.

Formulas are parsed with pymatgen's ``Composition``, once per unique formula.
Element property tables (mat2vec, one-hot, ...) come from the crabnet==2.0.8 wheel, re-indexed
by ``Z`` with a zero row 0 for padding, so ``table[elements]`` embeds a batch directly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from harness.data.dataset import DataError, Dataset
from harness.featurize.base import minibatches

N_ELEMENTS = 118  # H .. Og; token 0 is padding, so tables have 119 rows
ELEMENT_TABLES = ("mat2vec", "onehot", "magpie", "oliynyk", "jarvis", "ptable", "random_200")


@functools.lru_cache(maxsize=None)
def parse_formula(formula: str) -> tuple[tuple[int, float], ...]:
    """``"Fe2O3"`` -> ``((8, 0.6), (26, 0.4))``: (Z, fraction), largest fraction first."""
    from pymatgen.core import Composition, Element

    amounts = Composition(formula).get_el_amt_dict()
    # CrabNet drops amounts below 1e-6 (e.g. "Fe1O0"); so do we.
    amounts = {symbol: amount for symbol, amount in amounts.items() if abs(amount) >= 1e-6}
    total = sum(amounts.values())
    if not amounts or total <= 0:
        raise ValueError("no elements with a positive amount")
    pairs = [(Element(symbol).Z, amount / total) for symbol, amount in amounts.items()]
    return tuple(sorted(pairs, key=lambda pair: -pair[1]))  # stable: ties keep formula order


@dataclass
class CompositionBatch:
    """A mini-batch of element tokens. ``elements`` 0 and ``fractions`` 0 mark padding."""

    elements: torch.Tensor  # LongTensor [B, L], atomic numbers
    fractions: torch.Tensor  # FloatTensor [B, L], rows sum to 1
    y: torch.Tensor  # FloatTensor [B], (scaled) targets

    def to(self, device: torch.device | str) -> "CompositionBatch":
        return CompositionBatch(
            self.elements.to(device, non_blocking=True),
            self.fractions.to(device, non_blocking=True),
            self.y.to(device, non_blocking=True),
        )

    def __len__(self) -> int:
        return self.elements.shape[0]


@dataclass
class CompositionTokens:
    """Element tokens of every row of a dataset (the ``composition_tokens`` input kind)."""

    elements: torch.Tensor  # [N, L]
    fractions: torch.Tensor  # [N, L]
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_formulas(cls, formulas: Sequence[str], ids: Sequence[str] | None = None) -> "CompositionTokens":
        parsed = []
        for row, formula in enumerate(formulas):
            try:
                parsed.append(parse_formula(str(formula)))
            except Exception as error:  # pymatgen raises several types for bad formulas
                where = f"id {ids[row]!r}" if ids is not None else f"row {row}"
                raise DataError(
                    f"{where}: cannot parse formula {formula!r} ({error}); "
                    "fix or drop the row (--drop-invalid)"
                ) from None
        width = max((len(p) for p in parsed), default=1)
        elements = torch.zeros(len(parsed), width, dtype=torch.long)
        fractions = torch.zeros(len(parsed), width, dtype=torch.float32)
        for row, pairs in enumerate(parsed):
            for col, (z, fraction) in enumerate(pairs):
                elements[row, col] = z
                fractions[row, col] = fraction
        return cls(elements, fractions, {"max_elements": width})

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> "CompositionTokens":
        frame = dataset.frame
        return cls.from_formulas(frame["formula"].tolist(), frame["id"].astype(str).tolist())

    def __len__(self) -> int:
        return self.elements.shape[0]

    def batches(
        self,
        indices: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[CompositionBatch]:
        """Batches of rows ``indices``; ``y[i]`` is the target of row ``indices[i]``."""
        for rows, y_batch in minibatches(indices, y, batch_size, shuffle, generator):
            rows = torch.from_numpy(rows)
            elements, fractions = self.elements[rows], self.fractions[rows]
            # Trim columns that are padding in the whole batch: attention cost grows with L.
            width = max(int((elements != 0).sum(dim=1).max()), 1)
            yield CompositionBatch(elements[:, :width], fractions[:, :width], y_batch)

    def matrix(self, indices: np.ndarray) -> np.ndarray:
        raise TypeError("composition_tokens is not a tabular input kind; use a 'magpie' featurizer")


@functools.lru_cache(maxsize=None)
def _read_element_table(name: str) -> torch.Tensor:
    from pymatgen.core import Element

    from harness.data.crabnet_wheel import read_wheel_csv  # lazy: the wheel is fetched on first use

    frame = read_wheel_csv(f"crabnet/data/element_properties/{name}.csv")
    values = frame.iloc[:, 1:].to_numpy(dtype=np.float32)
    table = torch.zeros(N_ELEMENTS + 1, values.shape[1], dtype=torch.float32)
    # Index by symbol, not by position: some tables (magpie) stop before Og.
    for symbol, row in zip(frame.iloc[:, 0], values):
        table[Element(str(symbol).strip()).Z] = torch.from_numpy(np.nan_to_num(row))
    return table


def element_table(name: str) -> torch.Tensor:
    """Element property table ``[119, d]`` from the crabnet wheel: row ``Z``; row 0 = zeros."""
    if name not in ELEMENT_TABLES:
        raise ValueError(f"unknown element table {name!r}; known: {', '.join(ELEMENT_TABLES)}")
    return _read_element_table(name).clone()
