"""Composition -> fixed-length vector of element fractions: ElemNet's input.

ElemNet (Jha et al., Sci. Rep. 8, 17593, 2018) reads one molar fraction per element, in the
order of ``elements_tl`` in its code (github.com/NU-CUCIS/ElemNet, ``elemnet/data_utils.py``):
the 86 elements H..Pu without He, Ne, Ar, Po, At, Rn, Fr, Ra (absent from OQMD), kept here as
``ELEMNET_ELEMENTS``. ElemNet dropped any compound with another element.

Adapted: the harness's vocabulary is every element H..Pu (Z 1-94) in Z order, i.e. ElemNet's 86
plus the 8 it left out, because the CrabNet benchmark sets hold a few He/Ne/Ar compounds
(aflow__ael_*, aflow__Egap, aflow__energy_atom, mp_e_hull, mp_mu_b: 1-4 rows each) and a
benchmark may not drop rows. No catalog dataset has an element beyond Pu; a formula that does is
a clear error naming it. Fractions sum to 1 per row; computed per unique formula (cheap, no cache).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from harness.data.dataset import DataError, Dataset
from harness.featurize.composition import parse_formula
from harness.featurize.magpie import TabularFeatures

# ElemNet's 86 input elements, in its order (= increasing Z).
ELEMNET_ELEMENTS = (
    "H Li Be B C N O F Na Mg Al Si P S Cl K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y "
    "Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf "
    "Ta W Re Os Ir Pt Au Hg Tl Pb Bi Ac Th Pa U Np Pu"
).split()
MAX_Z = 94  # Pu, the last element of ElemNet's list


def element_symbols() -> list[str]:
    """The vocabulary, H..Pu in Z order (column ``Z - 1`` is element ``Z``)."""
    from pymatgen.core import Element

    return [Element.from_Z(z).symbol for z in range(1, MAX_Z + 1)]


class ElementFractions(TabularFeatures):
    """Molar fraction of each element H..Pu for every row (the ``element_fractions`` input kind)."""

    @classmethod
    def from_formulas(cls, formulas: Sequence[str], ids: Sequence[str] | None = None) -> "ElementFractions":
        values = np.zeros((len(formulas), MAX_Z), dtype=np.float64)
        rows: dict[str, np.ndarray] = {}
        for i, formula in enumerate(formulas):
            formula = str(formula)
            if formula not in rows:
                rows[formula] = _fraction_row(formula, f"id {ids[i]!r}" if ids is not None else f"row {i}")
            values[i] = rows[formula]
        symbols = element_symbols()
        return cls(values, {"n_features": MAX_Z, "feature_names": symbols, "elements": symbols})

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> "ElementFractions":
        frame = dataset.frame
        return cls.from_formulas(frame["formula"].tolist(), frame["id"].astype(str).tolist())


def _fraction_row(formula: str, where: str) -> np.ndarray:
    try:
        pairs = parse_formula(formula)
    except Exception as error:  # pymatgen raises several types for bad formulas
        raise DataError(f"{where}: cannot parse formula {formula!r} ({error})") from None
    row = np.zeros(MAX_Z, dtype=np.float64)
    for z, fraction in pairs:
        if z > MAX_Z:
            from pymatgen.core import Element

            raise DataError(
                f"{where}: formula {formula!r} contains {Element.from_Z(z).symbol} (Z={z}); "
                f"the element-fraction input covers H..Pu (Z <= {MAX_Z}) only"
            )
        row[z - 1] += fraction
    return row
