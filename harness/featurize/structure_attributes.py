"""Structure -> Ward et al. (2017) Voronoi attributes, joined to the 145 Magpie attributes.

L. Ward et al., "Including crystal structure attributes in machine learning models of formation
energies via Voronoi tessellations", Phys. Rev. B 96, 024104 (2017): the structure attributes
IRNet (Jha et al. 2019/2021) adds to Magpie's composition attributes. matminer's presets for that
paper, in this order:

    SiteStatsFingerprint.from_preset("CoordinationNumber_ward-prb-2017")        5  effective CN: min/max/range/mean/avg_dev
    StructuralHeterogeneity()                                                    9  bond-length and cell-size variation
    ChemicalOrdering()                                                           3  Warren-Cowley-like order, shells 1-3
    MaximumPackingEfficiency()                                                   1
    SiteStatsFingerprint.from_preset("LocalPropertyDifference_ward-prb-2017")  110  22 elemental properties × 5 stats

= 128 columns (DESIGN.md says 126: matminer's presets add a "range" statistic the paper's count
may not; we keep matminer's set whole rather than drop columns by guesswork), then the 145 Magpie
columns of ``magpie.py`` → input kind ``magpie_structure`` with 273 features.

Cost: every featurizer runs its own Voronoi tessellation, ~1 s per structure on one core (hours
for mp_2018_subset on a laptop). Structures are featurized in a spawned process pool with a
progress bar, and cached under ``cache_dir()/features/magpie_structure/`` (plain tensors,
``torch.save``). A structure matminer fails on (rare: degenerate Voronoi cells) gets NaN, then
its column's mean over the dataset (targets unused), counted in ``info["n_imputed"]``, as
``magpie.py`` does for composition attributes.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from harness.data.dataset import Dataset
from harness.featurize.graphs import config_hash, save_tensors, structures_of
from harness.featurize.magpie import N_MAGPIE, MagpieFeatures, TabularFeatures, _impute_column_means
from harness.paths import cache_dir

log = logging.getLogger(__name__)

N_STRUCTURE = 128
ATTR_FORMAT = 1  # bump when the columns change: old cache files are ignored
CHECKPOINT_EVERY = 64  # rows between saves of an unfinished featurization (~1 min of work on 1 core)


@functools.lru_cache(maxsize=1)
def ward_featurizer():
    """matminer's Ward-2017 structure featurizers (128 columns)."""
    from matminer.featurizers.base import MultipleFeaturizer
    from matminer.featurizers.structure import (
        ChemicalOrdering, MaximumPackingEfficiency, SiteStatsFingerprint, StructuralHeterogeneity,
    )

    return MultipleFeaturizer([
        SiteStatsFingerprint.from_preset("CoordinationNumber_ward-prb-2017"),
        StructuralHeterogeneity(),
        ChemicalOrdering(),
        MaximumPackingEfficiency(),
        SiteStatsFingerprint.from_preset("LocalPropertyDifference_ward-prb-2017"),
    ])


def _row(structure) -> list[float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen/matminer warn per site about missing properties
        try:
            return [float(v) for v in ward_featurizer().featurize(structure)]
        except Exception:  # Voronoi failures: imputed below, counted
            return [float("nan")] * N_STRUCTURE


def _worker(record: dict) -> list[float]:
    from harness.data.structures import from_record

    return _row(from_record(record))


def structure_attributes(structures, label: str = "structures", done: np.ndarray | None = None,
                         checkpoint=None, checkpoint_every: int = CHECKPOINT_EVERY) -> np.ndarray:
    """[N, 128] Ward-2017 attributes (NaN where matminer failed), in parallel with a progress bar.

    ``done``: the rows of the first structures from an interrupted run, kept as they are; only
    the rest are computed. ``checkpoint(rows_so_far)`` is called every ``checkpoint_every`` rows
    (rows arrive in order), so that an interrupted run loses at most that many."""
    from harness.console import progress
    from harness.data.structures import to_record

    rows = [] if done is None else [np.asarray(r, dtype=np.float64) for r in done]
    todo = structures[len(rows):]
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    n_proc = max(1, min(cpus, len(todo) // 8))
    description = f"Ward-2017 attributes of {len(todo)} {label}" + (f" ({len(rows)} done before)" if rows else "")
    if n_proc == 1:
        computed = (_row(s) for s in todo)
    else:
        pool = get_context("spawn").Pool(n_proc)  # spawn: see graphs.build_arrays
        computed = pool.imap(_worker, [to_record(s) for s in todo], chunksize=4)
        description += f" ({n_proc} processes)"
    try:
        for row in progress(computed, len(todo), description):
            rows.append(np.asarray(row, dtype=np.float64))
            if checkpoint is not None and len(rows) % checkpoint_every == 0 and len(rows) < len(structures):
                checkpoint(np.stack(rows))
    finally:
        if n_proc > 1:
            pool.terminate()  # an interrupted run must not leave workers computing
    return np.asarray(rows, dtype=np.float64).reshape(len(structures), N_STRUCTURE)


def feature_names() -> list[str]:
    return list(ward_featurizer().feature_labels())


def cache_paths(dataset: Dataset) -> tuple[Path, Path]:
    """(the cache entry of ``dataset``'s attributes, the partial file of an unfinished run).

    ~1 s per structure is hours for a large set: progress is kept in the partial file, and a
    featurization stopped with its sweep continues where it was."""
    import matminer

    key = config_hash(dataset, {"format": ATTR_FORMAT, "matminer": matminer.__version__})
    path = cache_dir() / "features" / "magpie_structure" / f"{dataset.cache_key}-{key}.pt"
    return path, path.with_name(path.stem + ".partial-rows.pt")


class MagpieStructureFeatures(TabularFeatures):
    """145 Magpie + 128 Ward-2017 attributes per row (input kind ``magpie_structure``)."""

    @classmethod
    def from_dataset(cls, dataset: Dataset, cache: bool = True) -> "MagpieStructureFeatures":
        structures, _ = structures_of(dataset, "magpie_structure")
        magpie = MagpieFeatures.from_dataset(dataset, cache=cache)  # cached on its own
        path, partial = cache_paths(dataset)
        if cache and path.is_file():
            attrs = torch.load(path, weights_only=True)["values"].numpy()
        else:
            done = torch.load(partial, weights_only=True)["values"].numpy() if cache and partial.is_file() else None
            save = (lambda rows: save_tensors(partial, {"values": torch.from_numpy(rows)})) if cache else None
            start = time.perf_counter()
            attrs = structure_attributes(structures, dataset.name, done=done, checkpoint=save)
            log.info("Ward-2017 attributes of %s: %d structures in %.1f s (%d from an earlier run)", dataset.name,
                     len(structures), time.perf_counter() - start, 0 if done is None else len(done))
            if cache:
                save_tensors(path, {"values": torch.from_numpy(attrs)})
                partial.unlink(missing_ok=True)
        attrs = attrs.copy()
        names = feature_names()
        n_imputed = _impute_column_means(attrs, names)
        values = np.hstack([magpie.values, attrs])
        assert np.isfinite(values).all() and values.shape[1] == N_MAGPIE + N_STRUCTURE
        info = {"n_features": values.shape[1], "feature_names": magpie.info["feature_names"] + names,
                "n_magpie": N_MAGPIE, "n_structure": N_STRUCTURE,
                "n_imputed": magpie.info.get("n_imputed", 0) + n_imputed}
        return cls(values, info)
