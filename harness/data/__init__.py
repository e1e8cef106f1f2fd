"""The dataset layer: catalog, fetching into the cache, loading with validation.

Everything downstream (featurizers, trainers, tuning, leaderboards) receives a validated
``Dataset`` whose splits come from the dataset's definition. Entry points:

* ``load_dataset(name)`` for a catalog name (suites ``crabnet28``, ``matbench``, ``structures``, ``jarvis``),
* ``load_custom(path, target)`` for a user's CSV, ``load_custom_structures`` for structure files,
* ``fetch(names)`` to put sources into the cache ahead of a cluster run,
* ``data_table()`` for ``harness data list``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd

from harness.data import crabnet_wheel, matbench, structures
from harness.data.catalog import (CATALOG, MATBENCH_STRUCTURE_TASKS, SUITES, WITH_STRUCTURES, DatasetSpec, get_spec,
                                  list_specs, resolve_datasets)
from harness.data.crabnet_wheel import read_wheel_csv
from harness.data.custom import load_custom
from harness.data.dataset import DataError, Dataset, Split
from harness.data.structures import load_custom_structures

__all__ = [
    "CATALOG", "SUITES", "DataError", "Dataset", "DatasetSpec", "Split", "count_rows", "data_table",
    "fetch", "get_spec", "list_specs", "load_custom", "load_custom_structures", "load_dataset", "read_wheel_csv",
    "resolve_datasets",
]


def load_dataset(name: str, *, drop_invalid: bool = False, with_structures: bool = False,
                 cutoff: float = structures.CUTOFF) -> Dataset:
    """Load a catalog dataset (fetching its source once if needed), validated and split.

    ``with_structures``: a Matbench structure task (``MATBENCH_STRUCTURE_TASKS``) also gets its
    structures, from matbench's json (downloaded once); matbench_phonons always has them.
    ``cutoff``: a structure with an atom that has no neighbour this close (Å) is invalid (the
    radius of radius graphs).
    """
    spec = get_spec(name)
    if spec.suite == "crabnet28":
        return crabnet_wheel.load_crabnet(spec.name, drop_invalid=drop_invalid)
    if spec.kind == "structure":
        return structures.load_structure_dataset(spec.name, drop_invalid=drop_invalid, cutoff=cutoff)
    dataset = matbench.load_matbench(spec.name, drop_invalid=drop_invalid)
    if spec.name in WITH_STRUCTURES:  # composition and structure models share its rows and folds
        return structures.attach_matbench_structures(dataset, drop_invalid=drop_invalid, cutoff=cutoff)
    if with_structures and spec.name in MATBENCH_STRUCTURE_TASKS:
        attached = structures.attach_matbench_structures(dataset, drop_invalid=drop_invalid, cutoff=cutoff)
        # Its structures are read only by sweeps with a structure model, so its data version stays
        # that of the compositions every sweep reads (the structure file's is recorded beside it):
        # CrabNet's runs from a sweep with CGCNN and from one without must name the same data. Rows
        # dropped for their structures change the rows, hence the version.
        if attached.dropped == dataset.dropped:  # the features still depend on the structures: cache_salt
            salt = attached.notes["structures_sha256"][:16]
            attached = replace(attached, sha256=dataset.sha256, notes={**attached.notes, "cache_salt": salt})
        return attached
    return dataset


def _inputs(spec: DatasetSpec) -> str:
    if spec.kind == "structure" or spec.name in WITH_STRUCTURES:
        return "composition, structure"
    if spec.name in MATBENCH_STRUCTURE_TASKS:
        return "composition, structure (downloaded)"  # matbench's json, for structure models
    return "composition"


def fetch(names: list[str]) -> dict[str, Path]:
    """Make sure each dataset's source is local; return where it lives (the wheel for crabnet28)."""
    out = {}
    for name in names:
        spec = get_spec(name)
        if spec.kind == "structure":
            src = structures.SOURCES.get(spec.name.split(":")[0])
            out[spec.name] = (structures.sdist_path() if src and src.where == "sdist"
                              else Path(structures.load_structure_dataset(spec.name).notes["source_file"]))
            continue
        out[spec.name] = (crabnet_wheel.wheel_path() if spec.suite == "crabnet28"
                          else matbench.source_path(spec.name))
        if spec.name in WITH_STRUCTURES:
            structures.matbench_structure_path(spec.name, str(out[spec.name]))
    return out


def count_rows(name: str) -> int | None:
    """Rows ``load_dataset(name)`` gives (before validation), read cheaply from the local source.

    None when the source is not local yet (nothing is downloaded here). For CrabNet's CV sets
    this is the number of distinct (formula, target) rows over the five folds.
    """
    spec = get_spec(name)
    if spec.kind == "structure":
        return structures.count_rows(spec.name)
    module = crabnet_wheel if spec.suite == "crabnet28" else matbench
    return module.count_rows(spec.name)


def data_table(suite: str | None = None) -> pd.DataFrame:
    """One row per dataset: name, suite, inputs, rows, target, unit, split (scheme)."""
    specs = list_specs(suite)
    return pd.DataFrame({
        "name": [s.name for s in specs],
        "suite": [s.suite for s in specs],
        # what the models can read: structure models need structures; every dataset has compositions
        "inputs": [_inputs(s) for s in specs],
        "rows": pd.Series([count_rows(s.name) for s in specs], dtype=object),  # None: not local yet
        "target": [s.target for s in specs],
        "unit": [s.unit for s in specs],
        "split": [s.split_scheme for s in specs],
    })
