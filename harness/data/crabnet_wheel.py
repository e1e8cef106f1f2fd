"""The ``crabnet28`` suite and the element tables, read straight from the ``crabnet==2.0.8`` wheel.

Why the wheel: it is the one public, versioned, checksummable place where the 28 CrabNet /
L-G-DCNN benchmark CSVs (with their published splits) and the element property tables live,
and any machine with the package index can fetch it. It is downloaded once into
``cache_dir()/crabnet``, checked against a pinned sha256 and read with ``zipfile``; nothing
is extracted or installed.

Two layouts:

* 18 "extended" sets, ``crabnet/data/benchmark_data/<name>/{train,val,test}.csv``: one
  ``Split("fixed")``; ids are ``<name>:<row>`` over train, val, test concatenated.
* 10 matbench-derived sets, ``crabnet/data/matbench_cv/<name>/{train,val,test}{0..4}.csv``:
  CrabNet's own five folds. CrabNet built each fold by averaging the target per formula inside
  each part, so a formula appears once per fold but its target can differ between folds, and a
  formula whose duplicates straddled the test boundary was kept out of test. The frame is
  therefore the union of distinct (formula, target) rows over all 15 files, in file order, and
  each fold's index arrays point at its own rows: every fold covers each formula exactly once,
  fold test parts are disjoint, but they need not cover all formulas (castelli: 2,255 of
  9,646 formulas are ever tested). Leakage (a test formula in the same fold's train/val) is
  checked on load.

``Dataset.sha256`` is the sha256 of the CSV bytes actually read, concatenated in the order
above, so every dataset has its own version id.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from harness.data.catalog import CATALOG, FIXED
from harness.data.dataset import DataError, Dataset, Split
from harness.data.fetch import cached_file
from harness.data.validate import check_splits, parse_targets, require_columns, validate_rows
from harness.paths import cache_dir

VERSION = "2.0.8"
WHEEL_NAME = f"crabnet-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "4901565abaa5b4cd1a7841b9de647a3906df21676b226a7abf972d113f92054a"
DATA_PREFIX = "crabnet/data/"
PARTS = ("train", "val", "test")
N_FOLDS = 5

def _download(dest_dir: Path) -> Path:
    """pip-download the wheel into a fresh temp folder inside ``dest_dir``; return its path."""
    tmp = Path(tempfile.mkdtemp(prefix="download-", dir=dest_dir))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.10",
           "--only-binary=:all:", f"crabnet=={VERSION}", "-d", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    got = tmp / WHEEL_NAME
    if proc.returncode != 0 or not got.is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise DataError(
            f"could not download crabnet=={VERSION} (needed for the crabnet28 suite) with\n"
            f"  {' '.join(cmd)}\n{tail}\nCheck the network / package index (pip config), or put "
            f"{WHEEL_NAME} into {dest_dir} yourself."
        )
    return got


def wheel_path(download: bool = True) -> Path | None:
    """The verified wheel in ``cache_dir()/crabnet``, fetched once if missing.

    With ``download=False`` returns None instead of fetching. A file whose sha256 is wrong is
    removed and a DataError raised.
    """
    return cached_file(cache_dir() / "crabnet", WHEEL_NAME, WHEEL_SHA256, _download, fetch=download,
                       advice=f"the package index serves different bytes for crabnet=={VERSION}: do not use them.")


def _member(name: str) -> str:
    return name if name.startswith("crabnet/") else DATA_PREFIX + name.lstrip("/")


def read_wheel_bytes(member: str, wheel: Path | None = None) -> bytes:
    """Bytes of one wheel member (full path, or relative to ``crabnet/data/``)."""
    member = _member(member)
    with zipfile.ZipFile(wheel or wheel_path()) as zf:
        try:
            return zf.read(member)
        except KeyError:
            folder = member.rsplit("/", 1)[0] + "/"
            near = [n for n in zf.namelist() if n.startswith(folder) and n.endswith(".csv")]
            raise DataError(f"{member} is not in {WHEEL_NAME}; CSVs in {folder}: {near}") from None


def read_wheel_csv(member: str, wheel: Path | None = None) -> pd.DataFrame:
    """A CSV from the wheel, e.g. ``read_wheel_csv("element_properties/mat2vec.csv")``.

    ``member`` is a path inside the wheel (``crabnet/data/...``) or relative to
    ``crabnet/data/``. For the element tables (first column = element symbol) use
    ``index_col=0`` on the result's first column as needed.
    """
    return pd.read_csv(io.BytesIO(read_wheel_bytes(member, wheel)))


def members(name: str) -> list[str]:
    """The wheel members of one crabnet28 dataset, in the order they are read and hashed."""
    spec = CATALOG[name]
    if spec.split_scheme == FIXED:
        return [f"{DATA_PREFIX}benchmark_data/{name}/{p}.csv" for p in PARTS]
    return [f"{DATA_PREFIX}matbench_cv/{name}/{p}{k}.csv" for k in range(N_FOLDS) for p in PARTS]


def _read_raw(name: str, wheel: Path) -> tuple[pd.DataFrame, str]:
    """All member rows (formula, target as text, where, row, member index) and their sha256."""
    h, frames = hashlib.sha256(), []
    with zipfile.ZipFile(wheel) as zf:
        for k, m in enumerate(members(name)):
            try:
                data = zf.read(m)
            except KeyError:
                raise DataError(f"{m} is missing from {wheel}; is this the crabnet=={VERSION} wheel?") from None
            h.update(data)
            df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
            require_columns(list(df.columns), ("formula", "target"), m)
            frames.append(pd.DataFrame({
                "formula": df["formula"], "target": df["target"], "where": m,
                "row": np.arange(1, len(df) + 1), "member": k,
            }))
    return pd.concat(frames, ignore_index=True), h.hexdigest()


def _sha_with_drops(sha: str, dropped: int) -> str:
    """A dataset with dropped rows is not the source's dataset: give it its own id."""
    return sha if dropped == 0 else hashlib.sha256(f"{sha}:drop_invalid".encode()).hexdigest()


def load_crabnet(name: str, *, drop_invalid: bool = False, wheel: Path | None = None) -> Dataset:
    """Load one crabnet28 dataset from the wheel (``wheel`` overrides the cached one)."""
    spec = CATALOG[name]
    wheel = wheel or wheel_path()
    raw, sha = _read_raw(name, wheel)
    raw["id"] = [f"{name}:{i}" for i in range(len(raw))]  # before dropping: ids stay stable
    rows, dropped = validate_rows(raw, dataset=name, drop_invalid=drop_invalid)
    part = rows["member"].to_numpy() % 3
    notes = {"wheel": WHEEL_NAME, "members": members(name)}

    if spec.split_scheme == FIXED:
        frame = rows[["id", "formula", "target"]].reset_index(drop=True)
        splits = [Split("fixed", *(np.flatnonzero(part == p) for p in range(3)))]
    else:
        # One frame row per distinct (formula, target), in order of first appearance.
        # (ids count these union rows, so they are stable unless --drop-invalid removed rows.)
        codes, uniques = pd.factorize(pd.MultiIndex.from_arrays([rows["formula"], rows["target"]]))
        frame = pd.DataFrame({
            "id": [f"{name}:{i}" for i in range(len(uniques))],
            "formula": uniques.get_level_values(0).astype(str),
            "target": uniques.get_level_values(1).astype(np.float64),
        })
        fold = rows["member"].to_numpy() // 3
        splits = []
        for k in range(N_FOLDS):
            idx = [codes[(fold == k) & (part == p)] for p in range(3)]
            _check_fold(name, k, idx, frame["formula"].to_numpy())
            splits.append(Split(f"fold{k}", *idx))
        notes["construction"] = ("union of distinct (formula, target) rows over the 15 fold files; "
                                 "CrabNet averaged targets per formula within each fold part")
    check_splits(name, splits, hint=f"The wheel member for that part ({spec.source}) has no usable rows.")
    return Dataset(name=name, suite=spec.suite, target=spec.target, unit=spec.unit, frame=frame,
                   splits=splits, sha256=_sha_with_drops(sha, dropped), source=f"{wheel}: {spec.source}",
                   split_scheme=spec.split_scheme, task_type=spec.task_type, dropped=dropped, notes=notes)


def _check_fold(name: str, k: int, idx: list[np.ndarray], formulas: np.ndarray) -> None:
    """No row twice in a fold, and no test formula in that fold's train or val."""
    allrows = np.concatenate(idx)
    if len(np.unique(allrows)) != len(allrows):
        raise DataError(f"{name}: fold {k} lists the same (formula, target) row in two parts")
    seen = set(formulas[idx[0]]) | set(formulas[idx[1]])
    leaked = [f for f in formulas[idx[2]] if f in seen]
    if leaked:
        raise DataError(f"{name}: fold {k} has test formulas also in its train/val, e.g. {leaked[:3]}")


def count_rows(name: str) -> int | None:
    """Rows ``load_crabnet`` would return (unvalidated); None if the wheel is not cached yet."""
    wheel = wheel_path(download=False)
    if wheel is None:
        return None
    if CATALOG[name].split_scheme == FIXED:
        with zipfile.ZipFile(wheel) as zf:
            return sum(max(zf.read(m).strip().count(b"\n"), 0) for m in members(name))
    raw, _ = _read_raw(name, wheel)
    raw["target"] = parse_targets(raw["target"])[0]
    return int(raw.drop_duplicates(["formula", "target"]).shape[0])
