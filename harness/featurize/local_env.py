"""Per-site local-environment matrices for LERN (Li et al., J. Mater. Inf. 2024).

LERN reads, for one site, a 6 × 11 matrix: 6 properties (rows) of the site itself (column 0)
and of its 10 nearest neighbours sorted by distance (columns 1-10; zero-padded when a radius
graph gives fewer). Rows, each divided by a fixed scale so that all are O(1) (a constant of the
periodic table, never of the data, so nothing leaks between splits):

====  ==============================  =======  ===========================================
row   property                        scale    source
====  ==============================  =======  ===========================================
0     atomic number Z                 100      pymatgen
1     Pauling electronegativity       4        Magpie table (matminer; noble gases imputed)
2     coordination number             12       from the graph (below)
3     covalent radius (reference)     200 pm   Magpie table (matminer)
4     distance to the site            8 Å      the graph's bond length (0 for the site itself)
5     valence electrons               12       Magpie ``NValence`` (matminer)
====  ==============================  =======  ===========================================

Coordination number: pymatgen's ``MinimumDistanceNN`` rule (neighbours within (1 + 0.1) × the
nearest-neighbour distance) applied to the graph's neighbour list, so at most k (12). CrystalNN
would cost ~20 ms per site (hours for mp_2018_subset); this rule is exact for CN ≤ 12 (bcc 8,
fcc 12, rock salt 6) and needs no extra neighbour search.
"""

from __future__ import annotations

import functools

import numpy as np

N_COLUMNS = 11  # the site + its 10 nearest neighbours
SITE_ENV_ROWS = ("Z/100", "pauling_electronegativity/4", "coordination_number/12", "covalent_radius_pm/200",
                 "distance_A/8", "valence_electrons/12")
SITE_ENV_SHAPE = (len(SITE_ENV_ROWS), N_COLUMNS)
CN_TOLERANCE = 0.1  # pymatgen MinimumDistanceNN's default


@functools.lru_cache(maxsize=1)
def element_table() -> np.ndarray:
    """[119, 4]: Z, electronegativity, covalent radius, valence electrons (scaled); row 0 zeros."""
    import warnings

    from matminer.utils.data import MagpieData
    from pymatgen.core import Element

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        props = MagpieData().all_elemental_props
    table = np.zeros((119, 4))
    for z in range(1, 119):
        symbol = Element.from_Z(z).symbol
        table[z] = [z, props["Electronegativity"][symbol], props["CovalentRadius"][symbol], props["NValence"][symbol]]
    table = np.nan_to_num(table)
    return table / np.array([100.0, 4.0, 200.0, 12.0])


def coordination_numbers(n_atoms: int, centre: np.ndarray, dist: np.ndarray, tol: float = CN_TOLERANCE) -> np.ndarray:
    """Per atom: neighbours (in the list) within (1 + tol) × its nearest distance."""
    nearest = np.full(n_atoms, np.inf)
    np.minimum.at(nearest, centre, dist)
    return np.bincount(centre[dist <= (1 + tol) * nearest[centre]], minlength=n_atoms)


def site_environments(z: np.ndarray, centre: np.ndarray, nbr: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """[N, 6, 11] float32 matrices from one structure's neighbour list (grouped by centre)."""
    n = len(z)
    table = element_table()
    cn = coordination_numbers(n, centre, dist) / 12.0
    out = np.zeros((n, 6, N_COLUMNS), dtype=np.float32)
    rows = lambda idx: np.column_stack([table[z[idx]][:, :2], cn[idx], table[z[idx]][:, 2], np.zeros(len(idx)),  # noqa: E731
                                        table[z[idx]][:, 3]])
    out[:, :, 0] = rows(np.arange(n))
    # Columns by (distance to 1e-4 Å, Z, CN): equidistant neighbours are ordered by what they
    # are, not by site index, so a supercell or a shifted cell gives the same matrix.
    order = np.lexsort((cn[nbr], z[nbr], np.round(dist, 4), centre))
    centre, nbr, dist = centre[order], nbr[order], dist[order]
    start = np.searchsorted(centre, np.arange(n))
    rank = np.arange(len(centre)) - start[centre]
    use = rank < N_COLUMNS - 1
    vals = rows(nbr[use])
    vals[:, 4] = dist[use] / 8.0
    out[centre[use], :, rank[use] + 1] = vals
    return out
