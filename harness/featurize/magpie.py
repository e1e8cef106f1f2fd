"""Composition -> the 145 Magpie attributes of Ward et al. (2016), via matminer.

L. Ward, A. Agrawal, A. Choudhary, C. Wolverton, "A general-purpose machine learning framework
for predicting properties of inorganic materials", npj Comput. Mater. 2, 16028 (2016): the
composition attributes IRNet (Jha et al. 2019) and the classical baselines read. matminer's

    Stoichiometry()                       6   L_p norms of the fractions, p = 0, 2, 3, 5, 7, 10
    ElementProperty.from_preset("magpie") 132 min/max/range/mean/avg_dev/mode of 22 element properties
    ValenceOrbital(props=["frac"])        4   fraction of valence electrons in s, p, d, f
    IonProperty(fast=True)                3   neutral ionic compound possible, max/avg ionic character

in one ``MultipleFeaturizer`` = 145 columns, computed once per unique composition (formulas
that differ only in element order or scale, "Fe2O3" / "O3Fe2" / "Fe4O6", share one row) and
cached on disk under ``cache_dir()/features/magpie/<dataset.cache_key>-<MAGPIE_VERSION>.npz``.

Missing values, explicitly:
- matminer's ``impute_nan=True`` (its default since 0.9) replaces an element property that the
  Magpie/pymatgen tables lack (e.g. the melting point of Og, the electronegativity of He) by that
  property's mean over the elements of the table. The rule depends only on the periodic table,
  never on a dataset, so it cannot leak anything. Ward 2016 / IRNet had NaN there instead.
- Anything still non-finite afterwards is replaced by the column mean over the dataset's rows
  (targets unused), and the count is logged and kept in ``info["n_imputed"]``. None is expected:
  every element H..Og alone featurizes to finite values, and a composition's attributes are
  fraction-weighted statistics of those. Every row then has 145 finite values (checked).

Features are kept raw, as IRNet's code fed them. Models that need standardised inputs do it
themselves from training rows only: IRNet with a standardiser whose mean/std come from the
batches it trains on (``harness/models/irnet.py``), scikit-learn models with a ``StandardScaler``
fitted inside their pipeline (``harness/models/classical.py``). Features never see a split, so
one cached matrix serves every split and fold without test-set leakage.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from harness.data.dataset import DataError, Dataset
from harness.featurize.base import minibatches
from harness.featurize.composition import parse_formula
from harness.paths import cache_dir

log = logging.getLogger(__name__)

N_MAGPIE = 145
MAGPIE_FORMAT = 1  # bump when the columns or the imputation rule change: old cache files are ignored
FORMULAS_PER_JOB = 5000  # a worker costs ~1 s to start; one process does ~1000 formulas/s


def magpie_version() -> str:
    """Featurizer version in cache file names: our format and matminer's version (its tables)."""
    import matminer

    return f"v{MAGPIE_FORMAT}-matminer{matminer.__version__}"


@dataclass
class TabularBatch:
    """A mini-batch of fixed-length feature vectors (Magpie attributes, element fractions)."""

    x: torch.Tensor  # FloatTensor [B, F]
    y: torch.Tensor  # FloatTensor [B], (scaled) targets

    def to(self, device: torch.device | str) -> "TabularBatch":
        return TabularBatch(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True))

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class TabularFeatures:
    """One float64 feature row per dataset row; batches are cast to float32 on the way out."""

    values: np.ndarray  # [N, F]
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.values.shape[0]

    def batches(
        self,
        indices: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[TabularBatch]:
        """Batches of rows ``indices``; ``y[i]`` is the target of row ``indices[i]``."""
        for rows, y_batch in minibatches(indices, y, batch_size, shuffle, generator):
            yield TabularBatch(torch.from_numpy(self.values[rows]).float(), y_batch)

    def matrix(self, indices: np.ndarray) -> np.ndarray:
        """``[len(indices), F]`` float64 rows, for scikit-learn."""
        return self.values[np.asarray(indices)]


def magpie_featurizer():
    """matminer's Ward-2016 composition featurizer: 6 + 132 + 4 + 3 = 145 columns."""
    from matminer.featurizers.base import MultipleFeaturizer
    from matminer.featurizers.composition import ElementProperty, IonProperty, Stoichiometry, ValenceOrbital

    return MultipleFeaturizer([
        Stoichiometry(),
        ElementProperty.from_preset("magpie", impute_nan=True),
        ValenceOrbital(props=["frac"], impute_nan=True),
        IonProperty(fast=True, impute_nan=True),
    ])


def _n_jobs(n_formulas: int) -> int:
    """Worker processes for matminer: one per FORMULAS_PER_JOB formulas, at most the CPUs we may use."""
    try:
        cpus = len(os.sched_getaffinity(0))  # respects taskset / Ray's CPU pinning
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, n_formulas // FORMULAS_PER_JOB))


def _canonical(formula: str, where: str) -> tuple[tuple[int, float], ...]:
    """(Z, fraction) pairs sorted by Z: one key per composition, whatever the element order."""
    try:
        return tuple(sorted(parse_formula(str(formula))))
    except Exception as error:  # pymatgen raises ValueError / KeyError / ... for bad formulas
        raise DataError(f"{where}: cannot featurize formula {formula!r}: {error}") from None


def featurize_formulas(
    formulas: Sequence[str], ids: Sequence[str] | None = None, n_jobs: int | None = None
) -> tuple[np.ndarray, list[str], int]:
    """``(values [N, 145], feature names, number of imputed cells)`` for ``formulas``."""
    from pymatgen.core import Composition, Element

    keys = [_canonical(f, f"id {ids[i]!r}" if ids is not None else f"row {i}") for i, f in enumerate(formulas)]
    unique = list(dict.fromkeys(keys))
    row_of = {key: i for i, key in enumerate(unique)}
    compositions = [Composition({Element.from_Z(z): amount for z, amount in key}) for key in unique]

    featurizer = magpie_featurizer()
    jobs = n_jobs or _n_jobs(len(unique))
    featurizer.set_n_jobs(jobs)
    # matminer's pool starts a fresh process for every chunk (maxtasksperchild=1), 10 formulas by
    # default: 4x slower than one process. Two chunks per worker keep that to a few starts.
    featurizer.set_chunksize(max(1, -(-len(unique) // (2 * jobs))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for every missing element property it imputes
        try:
            table = featurizer.featurize_many(compositions, pbar=False)
        except Exception:
            _raise_for_failing_formula(featurizer, compositions, unique, keys, formulas)
            raise
    values = np.asarray(table, dtype=np.float64)[[row_of[key] for key in keys]]
    names = list(featurizer.feature_labels())
    if values.shape[1:] != (N_MAGPIE,) or len(names) != N_MAGPIE:
        raise RuntimeError(f"matminer gave {values.shape[1:]} Magpie columns, expected {N_MAGPIE}")
    n_imputed = _impute_column_means(values, names)
    if values.shape != (len(formulas), N_MAGPIE) or not np.isfinite(values).all():  # never, by construction
        raise RuntimeError(f"Magpie features: expected {len(formulas)} finite rows of {N_MAGPIE}, got {values.shape}")
    return values, names, n_imputed


def _raise_for_failing_formula(featurizer, compositions, unique, keys, formulas) -> None:
    """Re-run one composition at a time to name the formula matminer failed on."""
    featurizer.set_n_jobs(1)
    for key, composition in zip(unique, compositions):
        try:
            featurizer.featurize(composition)
        except Exception as error:
            formula = formulas[keys.index(key)]
            raise DataError(f"Magpie featurization failed for formula {formula!r}: {error}") from error


def _impute_column_means(values: np.ndarray, names: list[str]) -> int:
    """Replace non-finite cells by their column's finite mean (0 if none); return how many."""
    bad = ~np.isfinite(values)
    count = int(bad.sum())
    if count:
        columns = np.where(bad.any(axis=0))[0]
        for col in columns:
            finite = values[~bad[:, col], col]
            values[bad[:, col], col] = finite.mean() if len(finite) else 0.0
        # the first few column names: a structure matminer fails on leaves all 128 of its columns
        # empty, and the whole list made one log line of 5,000 characters
        shown = ", ".join(names[c] for c in columns[:5]) + (f", … ({len(columns)} in all)" if len(columns) > 5 else "")
        log.warning("%d non-finite attribute value(s) in %d row(s), column(s) %s: replaced by column means",
                    count, int(bad.any(axis=1).sum()), shown)
    return count


class MagpieFeatures(TabularFeatures):
    """The 145 Magpie attributes of every row of a dataset (the ``magpie`` input kind)."""

    @classmethod
    def from_formulas(cls, formulas: Sequence[str], ids: Sequence[str] | None = None) -> "MagpieFeatures":
        values, names, n_imputed = featurize_formulas(formulas, ids)
        return cls(values, _info(names, n_imputed))

    @classmethod
    def from_dataset(cls, dataset: Dataset, cache: bool = True) -> "MagpieFeatures":
        formulas = dataset.frame["formula"].astype(str).tolist()
        # The cache key names the source bytes; this digest also checks the rows and their order.
        digest = hashlib.sha256("\n".join(formulas).encode()).hexdigest()
        path = cache_path(dataset)
        if cache and path.is_file():
            with np.load(path, allow_pickle=False) as saved:
                if str(saved["formulas_sha256"]) == digest:
                    return cls(saved["values"], _info(saved["names"].tolist(), int(saved["n_imputed"])))
            log.warning("Magpie cache %s does not match dataset %s; recomputing", path, dataset.name)
        start = time.perf_counter()
        values, names, n_imputed = featurize_formulas(formulas, dataset.frame["id"].astype(str).tolist())
        log.info("Magpie features of %s: %d rows in %.1f s", dataset.name, len(formulas), time.perf_counter() - start)
        if cache:
            _save(path, values=values, names=np.array(names), formulas_sha256=np.array(digest),
                  n_imputed=np.array(n_imputed))
        return cls(values, _info(names, n_imputed))


def cache_path(dataset: Dataset) -> Path:
    return cache_dir() / "features" / "magpie" / f"{dataset.cache_key}-{magpie_version()}.npz"


def _info(names: list[str], n_imputed: int) -> dict[str, Any]:
    return {"n_features": N_MAGPIE, "feature_names": list(names), "n_imputed": n_imputed}


def _save(path: Path, **arrays: np.ndarray) -> None:
    """Write atomically: concurrent featurizers of one dataset never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **arrays)
    os.chmod(partial, 0o644)  # mkstemp makes it private; a cache is for every user of the machine
    os.replace(partial, path)
