"""The ``matbench`` suite: Matbench v0.1's 13 tasks with the official five folds.

Why: the public Matbench leaderboard only means something if every entry is scored on the
same folds. Matbench v0.1 made them with ``KFold(n_splits=5, shuffle=True,
random_state=18012019)`` over the task in matbench order (``StratifiedKFold`` with the same
arguments for the three classification tasks); ``tests/test_data.py`` proves that recomputing
them reproduces matbench's own ``folds.json.gz`` exactly.

Sources, first found wins:

1. ``data_dir()/matbench_v0.1/matbench_<task>.csv.gz`` (mbid, composition, target column);
   folds from ``data_dir()/matbench_v0.1/folds.json.gz`` when present;
2. ``data_dir()/matbench_v0.1/matbench_<task>.json.gz`` or ``cache_dir()/matbench/…`` in
   matbench's own json layout;
3. a download of ``https://ml.materialsproject.org/projects/matbench_<task>.json.gz`` into the cache.

Matbench's json layout is ``{"index": [mbid…], "columns": [input, target], "data": [[input,
value]…]}``; structure tasks carry pymatgen Structure dicts, of which only the composition
is kept (``Structure.from_dict(d).composition.formula``).

Matbench defines only train/test. Each fold's train part is split again, 90/10, into
train/val with ``numpy.random.default_rng(0)`` (recorded in ``Dataset.notes``), so that
early stopping and tuning never see the fold's test rows.
Classification targets (True/False) become 1.0/0.0.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from harness.data.catalog import CATALOG, MATBENCH_TASKS
from harness.data.dataset import DataError, Dataset, Split, read_source
from harness.data.validate import check_splits, require_columns, validate_rows
from harness.paths import cache_dir, data_dir

URL = "https://ml.materialsproject.org/projects/{name}.json.gz"
FOLD_SEED = 18012019
N_FOLDS = 5
VAL_FRACTION = 0.1
VAL_SEED = 0
TIMEOUT_S = 60
_BOOLS = {"true": 1.0, "false": 0.0}


def _task(name: str) -> str:
    return name.removeprefix("matbench_")


def _open_bytes(path: Path) -> bytes:
    return read_source(path)[1]


def read_matbench_csv(path: Path, target: str) -> pd.DataFrame:
    """Rows of a shared ``matbench_<task>.csv.gz``: mbid, composition, target (as text)."""
    df = pd.read_csv(io.BytesIO(_open_bytes(path)), dtype=str, keep_default_na=False)
    require_columns(list(df.columns), ("mbid", "composition", target), path.name)
    return pd.DataFrame({"mbid": df["mbid"], "composition": df["composition"], "target": df[target]})


def read_matbench_json(path: Path, target: str | None = None) -> pd.DataFrame:
    """Rows of a file in matbench's json layout: mbid, composition, target, problem.

    Works for composition tasks and structure tasks (composition from the Structure dict).
    ``problem`` names an unreadable structure; the validator reports it with the row.
    """
    from pymatgen.core import Structure

    content = _open_bytes(path)  # unreadable or bad gzip: its own DataError
    try:
        doc = json.loads(content)
    except ValueError as exc:
        raise DataError(f"{path}: not readable as (gzipped) json ({exc}); delete it to download again") from None
    if not isinstance(doc, dict) or not {"index", "columns", "data"} <= set(doc):
        keys = list(doc) if isinstance(doc, dict) else type(doc).__name__
        raise DataError(f"{path}: expected matbench's layout with keys index, columns, data; found {keys}")
    columns = list(doc["columns"])
    kinds = [c for c in ("composition", "structure") if c in columns]
    if len(columns) != 2 or len(kinds) != 1:
        raise DataError(f"{path}: expected 2 columns, composition or structure and the target; "
                        f"columns present: {columns}")
    if target is not None:
        require_columns(columns, (target,), path.name)
    kind = kinds[0]
    col_in, col_t = columns.index(kind), 1 - columns.index(kind)
    if len(doc["index"]) != len(doc["data"]):
        raise DataError(f"{path}: {len(doc['index'])} ids in index but {len(doc['data'])} data rows")
    comps, targets, problems = [], [], []
    for entry in doc["data"]:
        value, problem = entry[col_in], None
        if kind == "structure":
            try:
                value = Structure.from_dict(value).composition.formula
            except Exception as exc:  # a malformed dict can fail in many ways
                value, problem = None, f"unreadable structure ({type(exc).__name__}: {exc})"
        comps.append(value)
        targets.append(entry[col_t])
        problems.append(problem)
    return pd.DataFrame({"mbid": [str(i) for i in doc["index"]], "composition": comps,
                         "target": targets, "problem": problems})


def official_folds(ids: list[str] | np.ndarray, targets=None, task_type: str = "regression") -> list[np.ndarray]:
    """Matbench v0.1 test positions per fold, over the rows in matbench order.

    ``KFold(5, shuffle=True, random_state=18012019)``; classification tasks stratify on
    ``targets`` with ``StratifiedKFold`` (same arguments), as matbench does.
    """
    # imported here: scikit-learn costs ~1 s to import, and every Ray worker imports this module
    from sklearn.model_selection import KFold, StratifiedKFold

    x = np.zeros(len(ids))
    if task_type == "classification":
        splitter = StratifiedKFold(n_splits=N_FOLDS, shuffle=True, random_state=FOLD_SEED)
        return [test for _, test in splitter.split(x, np.asarray(targets))]
    splitter = KFold(n_splits=N_FOLDS, shuffle=True, random_state=FOLD_SEED)
    return [test for _, test in splitter.split(x)]


def _folds_file() -> Path | None:
    base = data_dir()
    path = base / "matbench_v0.1" / "folds.json.gz" if base else None
    return path if path and path.is_file() else None


@functools.lru_cache(maxsize=2)
def _read_json_cached(path: Path, mtime: float) -> dict:
    return json.loads(_open_bytes(path))  # folds.json.gz holds all 13 tasks: parse it once


def read_official_test_ids(name: str, path: Path) -> list[list[str]]:
    """Test mbids per fold for ``matbench_<task>`` from matbench's folds.json(.gz)."""
    doc = _read_json_cached(path, path.stat().st_mtime)
    try:
        folds = doc["test_ids"][name]
        return [list(folds[f"fold_{k}"]) for k in range(N_FOLDS)]
    except (KeyError, TypeError):
        raise DataError(f"{path}: no test_ids[{name!r}][fold_0..fold_4]") from None


def source_path(name: str, download: bool = True) -> Path | None:
    """Where ``matbench_<task>``'s data lives; downloads it into the cache when needed."""
    candidates = []
    if data_dir() is not None:
        local = data_dir() / "matbench_v0.1"
        candidates += [local / f"{name}.csv.gz", local / f"{name}.json.gz"]
    cached = cache_dir() / "matbench" / f"{name}.json.gz"
    candidates.append(cached)
    for path in candidates:
        if path.is_file():
            return path
    return _download(URL.format(name=name), cached) if download else None


def _download(url: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name, dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, dest)  # atomic: concurrent loaders never read a partial file
    except (urllib.error.URLError, OSError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(
            f"could not download {url} ({exc}). Without network, point HARNESS_DATA_DIR at a folder "
            f"holding matbench_v0.1/{dest.name.replace('.json.gz', '.csv.gz')} (as in ../shared/data), "
            f"or put the file at {dest}."
        ) from None
    return dest


def load_matbench(name: str, *, drop_invalid: bool = False) -> Dataset:
    """Load ``matbench_<task>`` with the official folds, each split 90/10 into train/val."""
    spec = CATALOG[name]
    col = MATBENCH_TASKS[_task(name)][0]
    path = source_path(name)
    raw = read_matbench_csv(path, col) if path.name.endswith(".csv.gz") else read_matbench_json(path, col)
    classes = None
    if spec.task_type == "classification":
        raw["target"] = [_BOOLS.get(str(v).strip().lower(), v) for v in raw["target"]]
        classes = (0.0, 1.0)
    raw = raw.rename(columns={"mbid": "id", "composition": "formula"})
    raw["where"], raw["row"] = path.name, np.arange(1, len(raw) + 1)
    rows, dropped = validate_rows(raw, dataset=name, drop_invalid=drop_invalid, check_ids=True, classes=classes)

    folds_file = _folds_file()
    if folds_file is not None:
        test_ids = read_official_test_ids(name, folds_file)
        fold_note = f"official test ids from {folds_file.name}"
    else:  # computed over all rows in matbench order, before any drop: identical to the official
        ids = raw["id"].astype(str).to_numpy()
        test_ids = [list(ids[t]) for t in official_folds(ids, raw["target"].astype(str), spec.task_type)]
        fold_note = f"computed: {'Stratified' if classes else ''}KFold(5, shuffle=True, random_state={FOLD_SEED})"

    frame = rows[["id", "formula", "target"]].reset_index(drop=True)
    frame["id"] = frame["id"].astype(str)
    pos = pd.Series(np.arange(len(frame)), index=frame["id"])
    splits = []
    all_ids = set(raw["id"].astype(str))
    for k, tids in enumerate(test_ids):
        unknown = [t for t in tids if t not in all_ids]
        if unknown:
            raise DataError(f"{name}: fold {k} names test ids not in {path.name}, e.g. {unknown[:3]}")
        test = np.sort(pos.reindex(tids).dropna().to_numpy(dtype=np.int64))
        rest = np.setdiff1d(np.arange(len(frame)), test)
        perm = np.random.default_rng(VAL_SEED).permutation(len(rest))
        n_val = int(round(VAL_FRACTION * len(rest)))
        splits.append(Split(f"fold{k}", np.sort(rest[perm[n_val:]]), np.sort(rest[perm[:n_val]]), test))
    check_splits(name, splits)

    sha = hashlib.sha256(_open_bytes(path)).hexdigest()
    if dropped:
        sha = hashlib.sha256(f"{sha}:drop_invalid".encode()).hexdigest()
    notes = {"folds": fold_note, "source_file": str(path),
             "val_split": f"random {VAL_FRACTION:.0%} of each fold's train part, "
                          f"numpy default_rng({VAL_SEED}).permutation (Matbench defines only train/test)"}
    return Dataset(name=name, suite=spec.suite, target=spec.target, unit=spec.unit, frame=frame,
                   splits=splits, sha256=sha, source=str(path), split_scheme=spec.split_scheme,
                   task_type=spec.task_type, dropped=dropped, notes=notes)


def count_rows(name: str) -> int | None:
    """Rows in the local source (unvalidated), without downloading; None if not local."""
    path = source_path(name, download=False)
    if path is None:
        return None
    if path.name.endswith(".csv.gz"):
        return max(_open_bytes(path).strip().count(b"\n"), 0)
    return len(json.loads(_open_bytes(path))["index"])
