"""Structure -> periodic crystal graph (+ line graph, + LERN local environments), cached.

Neighbours come from pymatgen's compiled ``Structure.get_neighbor_list`` (periodic images
included), never from Python loops or non-periodic ``radius_graph``:

* ``mode="knn"`` (default, k = 12, CGCNN/ALIGNN/Crysformer): the search radius starts from the
  density (the radius of a sphere holding ~1.5 k atoms) and grows by 25 % until every atom has at
  least k neighbours; then each atom keeps its k nearest, and (``ties=True``, the default, as
  ALIGNN does) also every further neighbour at the k-th distance (within 1e-4 Å). Why: with
  symmetric shells, "exactly k" must pick some of several equidistant neighbours, and any rule
  for that choice (index, image) changes with the cell: a supercell, a translated or a re-chosen
  cell would get different bond angles, so predictions would not be invariant. With ties kept the
  graph is a function of the crystal, and it still has exactly k edges per atom unless the k-th
  shell is degenerate (fcc primitive cell: 12; bcc: 8 + 6 = 14). ``ties=False`` keeps exactly k,
  the rest broken by (distance rounded to 1e-6 Å, neighbour index, image): deterministic, not
  invariant. A 1-atom cell gets edges to its own periodic images.
* ``mode="radius"``: every neighbour within ``cutoff``; an atom with none is a DataError.
* ``symmetric=True`` (off by default): also the reverse of every edge (j is among i's k nearest
  but i not among j's: j gets the edge i -> j too), duplicates merged, as the reference ALIGNN
  builder (``nearest_neighbor_edges`` with ``use_canonize`` + ``build_undirected_edgedata``)
  does. An atom then aggregates from >= k neighbours. A radius graph is symmetric already.

Conventions are those of :mod:`harness.featurize.graph_types` (edge j -> i: row 0 neighbour,
row 1 centre; ``edge_vec = r_j + image·lattice − r_i``). The line graph joins every ordered pair
of distinct edges that share their centre atom (ALIGNN's bond-pair graph, centred on i), with the
bond angle ``arccos(clip(cos))`` in [0, π]; ``line_pairs="chain"`` (symmetric graphs) joins bond
j -> i to bond i -> k instead, DGL's directed line graph as the reference ALIGNN uses.

Caching: the per-dataset arrays (atoms, edges, edge vectors, optional site environments) are
built once, in a process pool with a progress bar, and saved as a dict of plain tensors
(``torch.save``; loaded with ``weights_only=True``) at
``cache_dir()/features/<kind>/<dataset.cache_key>-<config hash>.pt``. The config hash covers the
neighbour rule, the format version and the row ids, so a subsample or a dropped row never reads
another dataset's graphs. The line graph is NOT stored: it is a pure function of the edges, k - 1
times larger than them (2 GB for mp_2018_subset), and costs microseconds per structure, so
``graph(i)`` derives it on the fly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from harness.data.dataset import DataError, Dataset
from harness.featurize.base import minibatches
from harness.featurize.graph_types import CrystalGraph, GraphBatch
from harness.paths import cache_dir

log = logging.getLogger(__name__)

GRAPH_FORMAT = 1  # bump when arrays or their meaning change: old cache files are ignored
MAX_Z = 100  # embedding tables of the models: atomic numbers 1..MAX_Z (MP/JARVIS stop at 94)
PARALLEL_MIN = 4000  # one process builds ~2-8k graphs/s; a spawned pool costs seconds to start
TIE_DECIMALS = 6  # order edges by distance rounded to 1e-6 Å, then neighbour index and image
TIE_TOL = 1e-4  # Å: neighbours this close to the k-th distance are kept with it (ties=True)
# Graphs (with their line graphs) kept in memory after their first batch, per CrystalGraphs, up to
# this many MiB (env HARNESS_GRAPH_MEMO_MB; 0 turns it off). Building a line graph costs ~1 ms a
# structure (1.36 s for matbench_phonons' 1,265): next to a GPU step that is a large share of an
# epoch (ALIGNN on an H200: 1.4 -> 1.0-1.1 s/epoch with this memo), next to a CPU step (~90 s) noise. Line graphs are not stored on disk (they are
# ~10x the bonds); in memory the first epoch's cost is paid once.
GRAPH_MEMO_MB = 1024


# ----------------------------------------------------------------------------- one structure


def neighbour_arrays(structure, *, k: int = 12, cutoff: float = 8.0, mode: str = "knn", ties: bool = True,
                     symmetric: bool = False):
    """(centre i, neighbour j, image offsets [E,3], distances) sorted by centre, then distance.

    knn: the ``k`` nearest per atom, plus those tied with the k-th when ``ties``; ``symmetric``
    adds the missing reverse edges. radius: all within ``cutoff``; ValueError naming an isolated atom.
    """
    n = len(structure)
    if mode == "knn":
        # radius of a sphere that holds ~1.5 k atoms at the cell's density; grown until enough
        r = (3 * 1.5 * k * structure.volume / (4 * np.pi * n)) ** (1 / 3)
        for _ in range(40):
            centre, nbr, images, dist = structure.get_neighbor_list(r)
            if len(centre) and np.bincount(centre, minlength=n).min() >= k:
                # every atom's k-th distance (+ tie tolerance) must lie inside the search sphere
                kth = _kth_distances(centre, dist, n, k)
                if kth.max() + TIE_TOL < r:
                    break
            r *= 1.25
        else:
            raise ValueError(f"fewer than {k} neighbours within {r:.0f} Å")
    elif mode == "radius":
        centre, nbr, images, dist = structure.get_neighbor_list(cutoff)
        counts = np.bincount(centre, minlength=n)
        if counts.min() == 0:
            i = int(np.argmin(counts))
            raise ValueError(f"isolated atom: site {i} ({structure[i].species_string}) has no neighbour "
                             f"within the {cutoff} Å cutoff")
    else:
        raise ValueError(f"unknown neighbour mode {mode!r}; use 'knn' or 'radius'")
    order = np.lexsort((images[:, 2], images[:, 1], images[:, 0], nbr, np.round(dist, TIE_DECIMALS), centre))
    centre, nbr, images, dist = centre[order], nbr[order], images[order], dist[order]
    if mode == "knn":
        if ties:
            keep = dist <= _kth_distances(centre, dist, n, k)[centre] + TIE_TOL
        else:
            start = np.searchsorted(centre, np.arange(n))  # first edge of every centre
            keep = (np.arange(len(centre)) - start[centre]) < k
        centre, nbr, images, dist = centre[keep], nbr[keep], images[keep], dist[keep]
        if symmetric:
            centre, nbr, images, dist = _with_reverse_edges(centre, nbr, images, dist)
    return centre, nbr, images.astype(np.int64), dist


def _with_reverse_edges(centre, nbr, images, dist):
    """The edge set plus each edge's reverse (j's image n seen from i -> i's image -n seen from j),
    without duplicates, in the same order as ``neighbour_arrays``'s (centre, distance, index, image)."""
    centre, nbr = np.concatenate([centre, nbr]), np.concatenate([nbr, centre])
    images, dist = np.concatenate([images, -images]), np.concatenate([dist, dist])
    key = np.column_stack([centre, nbr, images.astype(np.int64)])
    _, first = np.unique(key, axis=0, return_index=True)
    centre, nbr, images, dist = centre[first], nbr[first], images[first], dist[first]
    order = np.lexsort((images[:, 2], images[:, 1], images[:, 0], nbr, np.round(dist, TIE_DECIMALS), centre))
    return centre[order], nbr[order], images[order], dist[order]


def reverse_edges(centre: np.ndarray, nbr: np.ndarray, images: np.ndarray) -> np.ndarray:
    """For every edge (j's image n -> i), the index of its reverse (i's image -n -> j).

    Exact (integer atom indices and images, no distance matching); every edge must have one, as
    in a symmetric graph.
    """
    keys = np.column_stack([centre, nbr, images]).astype(np.int64)
    reverse_keys = np.column_stack([nbr, centre, -images]).astype(np.int64)
    uniq, inverse = np.unique(np.concatenate([keys, reverse_keys]), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    edge_of_key = np.full(len(uniq), -1, dtype=np.int64)
    edge_of_key[inverse[: len(keys)]] = np.arange(len(keys))
    rev = edge_of_key[inverse[len(keys):]]
    if (rev < 0).any():
        raise ValueError(f"{int((rev < 0).sum())} edge(s) without a reverse edge: the graph is not symmetric")
    return rev


def _kth_distances(centre: np.ndarray, dist: np.ndarray, n: int, k: int) -> np.ndarray:
    """Per atom, the distance of its k-th nearest neighbour (every atom has >= k here)."""
    by_centre = np.lexsort((dist, centre))
    start = np.searchsorted(centre[by_centre], np.arange(n))
    return dist[by_centre][start + k - 1]


def _graph_arrays(structure, k: int, cutoff: float, mode: str, site_env: bool, ties: bool = True,
                  symmetric: bool = False) -> dict:
    """Everything cached for one structure, as numpy arrays."""
    centre, nbr, images, dist = neighbour_arrays(structure, k=k, cutoff=cutoff, mode=mode, ties=ties,
                                                 symmetric=symmetric)
    cart = structure.cart_coords
    vec = cart[nbr] + images @ structure.lattice.matrix - cart[centre]
    z = np.array([site.specie.Z for site in structure], dtype=np.int64)
    if z.max() > MAX_Z:
        raise ValueError(f"element Z = {z.max()} beyond the models' embedding tables (Z <= {MAX_Z})")
    out = {"z": z, "src": nbr, "dst": centre, "vec": vec, "dist": dist}
    if symmetric and mode == "knn":
        out["rev"] = reverse_edges(centre, nbr, images)
    if site_env:
        from harness.featurize.local_env import site_environments

        out["site_env"] = site_environments(z, centre, nbr, dist)
    return out


def line_graph(dst: np.ndarray, edge_vec: np.ndarray,
               rev: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The line graph's edges (bond -> bond) and the angle each carries.

    ``rev is None`` ("centre" pairs): every ordered pair (a, b), a != b, of bonds into the same
    centre atom i: a = j -> i, b = k -> i; bond b aggregates the other bonds of its own centre.
    ``rev`` given ("chain" pairs, a symmetric graph): a = j -> i to rev[b] = i -> k for every pair
    of bonds into i, a == b included: the directed line graph (u -> v) -> (v -> w) with
    backtracking, as DGL's ``line_graph`` that the reference ALIGNN takes. Bond i -> k then carries
    i's angles to atom k. The angle is at i between j and k in both (0 for a == b).
    ``dst`` must be sorted (edges grouped by centre), as every graph built here is. numpy, not
    torch: on a few thousand pairs its repeat is ~10x faster than ``repeat_interleave``.
    """
    dst, edge_vec = np.asarray(dst), np.asarray(edge_vec, dtype=np.float64)
    if len(dst) == 0:
        return torch.zeros(2, 0, dtype=torch.long), torch.zeros(0)
    _, first, deg = np.unique(dst, return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(deg)), deg)  # centre group of each edge
    per_edge = deg[group]  # every edge pairs with each edge of its group
    a = np.repeat(np.arange(len(dst)), per_edge)
    offset = np.arange(len(a)) - np.repeat(np.cumsum(per_edge) - per_edge, per_edge)
    b = first[group[a]] + offset
    if rev is None:
        keep = a != b
        a, b = a[keep], b[keep]
    unit = edge_vec / np.maximum(np.linalg.norm(edge_vec, axis=1, keepdims=True), 1e-12)
    cos = np.einsum("ij,ij->i", unit[a], unit[b])
    target = b if rev is None else np.asarray(rev, dtype=np.int64)[b]
    return torch.from_numpy(np.stack([a, target])), torch.from_numpy(np.arccos(np.clip(cos, -1.0, 1.0))).float()


def _to_graph(arrays: dict, line: bool, line_pairs: str = "centre") -> CrystalGraph:
    vec = torch.as_tensor(arrays["vec"], dtype=torch.float32)
    dst = torch.as_tensor(arrays["dst"], dtype=torch.long)
    g = CrystalGraph(
        z=torch.as_tensor(arrays["z"], dtype=torch.long),
        edge_index=torch.stack([torch.as_tensor(arrays["src"], dtype=torch.long), dst]),
        edge_vec=vec,
        edge_length=torch.as_tensor(arrays["dist"], dtype=torch.float32),
        num_nodes=len(arrays["z"]),
    )
    if line:
        rev = arrays["rev"] if line_pairs == "chain" else None
        g.lg_edge_index, g.angle = line_graph(arrays["dst"], arrays["vec"], rev)
    if arrays.get("site_env") is not None:
        g.site_env = torch.as_tensor(arrays["site_env"], dtype=torch.float32).unsqueeze(1)  # [N, 1, 6, 11]
    if arrays.get("extra") is not None:
        g.extra = torch.as_tensor(arrays["extra"], dtype=torch.float32).reshape(1, -1)
    return g


def build_crystal_graph(structure, *, k: int = 12, cutoff: float = 8.0, mode: str = "knn", ties: bool = True,
                        line: bool = True, site_env: bool = False, symmetric: bool = False,
                        line_pairs: str = "centre") -> CrystalGraph:
    """One structure -> ``CrystalGraph`` (see the module docstring for the rules)."""
    GraphConfig(k=k, cutoff=cutoff, mode=mode, symmetric=symmetric, line_pairs=line_pairs)  # validates
    try:
        arrays = _graph_arrays(structure, k, cutoff, mode, site_env, ties, symmetric)
    except ValueError as exc:
        raise DataError(f"{structure.composition.reduced_formula}: {exc}") from None
    return _to_graph(arrays, line, line_pairs)


# ----------------------------------------------------------------------------- a whole dataset


LINE_PAIRS = ("centre", "chain")


@dataclass(frozen=True)
class GraphConfig:
    k: int = 12
    cutoff: float = 8.0
    mode: str = "knn"
    line_graph: bool = True
    site_env: bool = False
    ties: bool = True
    symmetric: bool = False  # add the reverse of every k-NN edge (the reference ALIGNN's graphs)
    # which bond pairs the line graph joins (see ``line_graph``): "centre" (default), or "chain"
    # (the reference ALIGNN's: DGL's directed line graph; needs symmetric=True)
    line_pairs: str = "centre"

    def __post_init__(self) -> None:
        if self.mode not in ("knn", "radius"):
            raise ValueError(f"mode={self.mode!r}: expected knn (k nearest neighbours) or radius (all within cutoff)")
        if self.k < 1 or not self.cutoff > 0:
            raise ValueError(f"k = {self.k}, cutoff = {self.cutoff}: expected k >= 1 and cutoff > 0 Å")
        if self.line_pairs not in LINE_PAIRS:
            raise ValueError(f"line_pairs={self.line_pairs!r}: expected one of {', '.join(LINE_PAIRS)}")
        if self.line_pairs == "chain" and not (self.symmetric and self.mode == "knn"):
            raise ValueError("line_pairs='chain' needs a symmetric k-NN graph (symmetric=True, mode='knn'): "
                             "every bond must have its reverse")

    @property
    def kind(self) -> str:
        """The cache folder's name (and the word in error messages)."""
        return "crystal_graph_lern" if self.site_env else "crystal_graph"


# Input kind (harness/models/registry.py) -> the graphs it reads.
GRAPH_KINDS: dict[str, GraphConfig] = {
    "crystal_graph": GraphConfig(k=12),  # directed k-NN graph + centre line graph (Crysformer)
    "periodic_graph": GraphConfig(k=12, line_graph=False),  # the same graph, no line graph (CGCNN, SchNet)
    "crystal_graph_lern": GraphConfig(k=12, line_graph=False, site_env=True),  # + site environments (LERN)
    # the reference ALIGNN's graphs: every k-NN bond and its reverse, DGL's directed line graph (ALIGNN)
    "crystal_graph_chain": GraphConfig(k=12, symmetric=True, line_pairs="chain"),
}


def graph_config(kind: str, graph: dict | None = None) -> GraphConfig:
    """The graphs of input kind ``kind`` with a sweep's neighbour settings (``k``, ``cutoff``,
    ``mode``) in place of the defaults; ValueError where the kind cannot have them (ALIGNN's
    chain line graph needs k-NN)."""
    if not graph:
        return GRAPH_KINDS[kind]
    try:
        return replace(GRAPH_KINDS[kind], **graph)
    except ValueError as exc:
        raise ValueError(f"input kind {kind!r} with {graph_text(graph)}: {exc}") from None


def graph_text(graph: dict | None) -> str:
    """``k-NN, k = 12`` / ``radius 6 Å``: the neighbour rule of a sweep's graphs, for people."""
    config = GraphConfig(**{**(graph or {}), "line_pairs": "centre", "symmetric": False})
    return f"radius {config.cutoff:g} Å" if config.mode == "radius" else f"k-NN, k = {config.k}"


def _safe_arrays(structure, config: GraphConfig) -> dict | str:
    """Arrays of one structure, or the error text (reported with the row's id by the caller)."""
    try:
        return _graph_arrays(structure, config.k, config.cutoff, config.mode, config.site_env, config.ties,
                             config.symmetric)
    except ValueError as exc:
        return str(exc)


def _worker(args) -> dict | str:
    """Pool worker: structures travel as JSON-able records (cheaper to send than Structures)."""
    from harness.data.structures import from_record

    record, config = args
    return _safe_arrays(from_record(record), config)


def _n_procs(n: int) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return 1 if n < PARALLEL_MIN else max(1, min(cpus, n // (PARALLEL_MIN // 2)))


def build_arrays(structures, ids, config: GraphConfig, label: str = "structures") -> dict[str, torch.Tensor]:
    """Graphs of many structures as concatenated tensors, built in parallel with a progress bar."""
    from harness.console import progress
    from harness.data.structures import to_record

    n_proc = _n_procs(len(structures))
    description = f"{config.kind} of {len(structures)} {label}" + (f" ({n_proc} processes)" if n_proc > 1 else "")
    if n_proc == 1:
        results = [_safe_arrays(s, config) for s in progress(structures, len(structures), description, min_total=1000)]
    else:
        jobs = [(to_record(s), config) for s in structures]
        # spawn: a forked child would inherit the parent's threads (torch, Ray) mid-lock
        with get_context("spawn").Pool(n_proc) as pool:
            results = list(progress(pool.imap(_worker, jobs, chunksize=64), len(jobs), description))
    bad = [(ids[i], r) for i, r in enumerate(results) if isinstance(r, str)]
    if bad:
        shown = "\n".join(f"  id {i!r}: {msg}" for i, msg in bad[:5])
        raise DataError(f"{label}: {len(bad)} structure(s) give no valid {config.kind}:\n{shown}\n"
                        f"Load the dataset with drop_invalid=True (--drop-invalid) and a matching cutoff, "
                        f"or use mode='knn'.")
    return pack(results)


def pack(results: list[dict]) -> dict[str, torch.Tensor]:
    """Per-structure arrays -> one dict of concatenated tensors plus per-structure counts."""
    cat = lambda key, dtype: torch.as_tensor(np.concatenate([r[key] for r in results]), dtype=dtype)  # noqa: E731
    out = {
        "z": cat("z", torch.int16), "src": cat("src", torch.int32), "dst": cat("dst", torch.int32),
        "vec": cat("vec", torch.float32), "dist": cat("dist", torch.float32),
        "n_atoms": torch.tensor([len(r["z"]) for r in results], dtype=torch.int64),
        "n_edges": torch.tensor([len(r["src"]) for r in results], dtype=torch.int64),
    }
    if results and "site_env" in results[0]:
        out["site_env"] = cat("site_env", torch.float32)
    if results and "rev" in results[0]:
        out["rev"] = cat("rev", torch.int32)  # per structure, like src/dst
    return out


@dataclass
class CrystalGraphs:
    """Crystal graphs of every row of a dataset (input kinds ``crystal_graph``, ``crystal_graph_lern``).

    Stored concatenated (``tensors``); ``graph(i)`` slices one out, ``batches`` yields
    :class:`GraphBatch` of PyG ``Batch`` es (``Batch.from_data_list``, which offsets
    ``lg_edge_index`` by edges through ``CrystalGraph.__inc__``).
    """

    tensors: dict[str, torch.Tensor]
    config: GraphConfig = field(default_factory=GraphConfig)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self._memo: dict[int, CrystalGraph] = {}
        self._memo_bytes = 0
        self._memo_limit = int(os.environ.get("HARNESS_GRAPH_MEMO_MB", GRAPH_MEMO_MB)) * 2**20
        zero = torch.zeros(1, dtype=torch.int64)
        self._atom_ptr = torch.cat([zero, torch.cumsum(self.tensors["n_atoms"], 0)]).tolist()
        self._edge_ptr = torch.cat([zero, torch.cumsum(self.tensors["n_edges"], 0)]).tolist()
        if not self.info:
            self.info = graph_info(self.config)

    @classmethod
    def from_dataset(cls, dataset: Dataset, config: GraphConfig | None = None, cache: bool = True) -> "CrystalGraphs":
        config = config or GraphConfig()
        structures, ids = structures_of(dataset, config.kind)
        path = cache_path(dataset, config)
        if cache and path.is_file():
            return cls(torch.load(path, weights_only=True), config)
        start = time.perf_counter()
        tensors = build_arrays(structures, ids, config, label=dataset.name)
        log.info("%s of %s: %d structures in %.1f s", config.kind, dataset.name, len(ids), time.perf_counter() - start)
        if cache:
            save_tensors(path, tensors)
        return cls(tensors, config)

    def __len__(self) -> int:
        return len(self.tensors["n_atoms"])

    def as_kind(self, kind: str) -> "CrystalGraphs | None":
        """These stored graphs read as input kind ``kind``, sharing the tensors; None if they can't be.

        Line graphs are built per batch, never stored, so graphs that differ only in the line
        graph share one copy: ``crystal_graph`` and ``periodic_graph`` (Crysformer and CGCNN/SchNet
        in the same sweep). The symmetric graphs of ``crystal_graph_chain`` (ALIGNN) are other
        edges, and LERN's site environments another field set: copies of their own.
        """
        target = GRAPH_KINDS.get(kind)
        if target is None or self.config.site_env or target.site_env:
            return None
        try:  # a sweep's neighbour settings apply to all its graph kinds alike
            target = replace(target, k=self.config.k, cutoff=self.config.cutoff, mode=self.config.mode)
        except ValueError:  # e.g. a chain line graph over radius graphs
            return None
        stored = lambda c: {k: v for k, v in c.__dict__.items() if k not in ("line_graph", "line_pairs")}  # noqa: E731
        if stored(target) != stored(self.config):
            return None
        if target.line_pairs == "chain" and "rev" not in self.tensors:
            return None
        return CrystalGraphs(self.tensors, target, graph_info(target))

    def graph(self, i: int) -> CrystalGraph:
        a0, a1 = self._atom_ptr[i], self._atom_ptr[i + 1]
        e0, e1 = self._edge_ptr[i], self._edge_ptr[i + 1]
        t = self.tensors
        arrays = {"z": t["z"][a0:a1], "src": t["src"][e0:e1], "dst": t["dst"][e0:e1],
                  "vec": t["vec"][e0:e1], "dist": t["dist"][e0:e1]}
        if "site_env" in t:
            arrays["site_env"] = t["site_env"][a0:a1]
        if self.config.line_pairs == "chain":
            arrays["rev"] = t["rev"][e0:e1].numpy()
        return _to_graph(arrays, self.config.line_graph, self.config.line_pairs)

    def batches(self, indices: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[GraphBatch]:
        """Batches of rows ``indices``; ``y[i]`` is the target of row ``indices[i]``."""
        from torch_geometric.data import Batch

        for rows, y_batch in minibatches(indices, y, batch_size, shuffle, generator):
            graphs = [self._remembered_graph(int(row)) for row in rows]
            yield GraphBatch(Batch.from_data_list(graphs), y_batch)

    def _remembered_graph(self, i: int) -> CrystalGraph:
        """``graph(i)``, kept for the next epoch while the memo is under its limit (GRAPH_MEMO_MB).

        Safe to share: ``Batch.from_data_list`` copies, and nothing writes into a batch's inputs.
        """
        g = self._memo.get(i)
        if g is None:
            g = self.graph(i)
            size = sum(v.numel() * v.element_size() for _, v in g if isinstance(v, torch.Tensor))
            if self._memo_bytes + size <= self._memo_limit:
                self._memo[i] = g
                self._memo_bytes += size
        return g

    def matrix(self, indices: np.ndarray) -> np.ndarray:
        raise TypeError(f"{self.config.kind} is not a tabular input kind; use 'magpie_structure'")


def graph_info(config: GraphConfig) -> dict[str, Any]:
    """What a model builder needs: the neighbour rule, which fields exist and their shapes."""
    from harness.featurize.local_env import SITE_ENV_ROWS, SITE_ENV_SHAPE

    # only the config: info must not depend on the rows (default_info builds models from a probe set)
    info = {"max_z": MAX_Z, "k": config.k if config.mode == "knn" else None, "cutoff": config.cutoff,
            "mode": config.mode, "ties": config.ties, "lg": config.line_graph, "site_env": config.site_env,
            "symmetric": config.symmetric, "line_pairs": config.line_pairs}
    if config.site_env:
        info["site_env_shape"] = (1, *SITE_ENV_SHAPE)
        info["site_env_rows"] = SITE_ENV_ROWS
    return info


def structures_of(dataset: Dataset, kind: str):
    if "structure" not in dataset.frame.columns:
        from harness.data.catalog import SUITES

        raise DataError(f"dataset {dataset.name!r} has no structures; input kind {kind!r} needs a structure "
                        f"dataset, e.g. {', '.join(SUITES['structures'])}")
    return dataset.frame["structure"].tolist(), dataset.frame["id"].astype(str).tolist()


def config_hash(dataset: Dataset, config: dict) -> str:
    """Featurizer config + format + row ids: different rows never share a cache file."""
    ids = hashlib.sha256("\n".join(dataset.frame["id"].astype(str)).encode()).hexdigest()
    return hashlib.sha256(json.dumps({**config, "ids": ids}, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(dataset: Dataset, config: GraphConfig) -> Path:
    # line graphs are built per batch from the stored edges, never stored: a model that needs
    # none (CGCNN, SchNet) reads the same file as one that does (ALIGNN)
    fields = {k: v for k, v in config.__dict__.items() if k not in ("line_graph", "line_pairs")}
    if config.symmetric:
        fields["reverse_index"] = True  # symmetric files store each edge's reverse (since 2026-12-03)
    else:
        del fields["symmetric"]  # added later: the files of every directed graph keep their names
    key = config_hash(dataset, {**fields, "format": GRAPH_FORMAT})
    return cache_dir() / "features" / config.kind / f"{dataset.cache_key}-{key}.pt"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Atomic write: concurrent featurizers of one dataset never read a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    os.close(fd)
    torch.save(tensors, partial)
    os.chmod(partial, 0o644)
    os.replace(partial, path)


@functools.lru_cache(maxsize=1)
def probe_structures() -> list:
    """Hematite, rock salt and cubic BaTiO3: the probe set of ``featurize.default_info``."""
    from pymatgen.core import Lattice, Structure

    return [
        Structure.from_spacegroup("R-3c", Lattice.hexagonal(5.035, 13.75), ["Fe", "O"],
                                  [[0, 0, 0.3553], [0.3059, 0, 0.25]]),
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure.from_spacegroup("Pm-3m", Lattice.cubic(4.0), ["Ba", "Ti", "O"],
                                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]),
    ]
