"""A user's own composition CSV as a dataset (suite ``custom``).

Why: researchers bring their own measurements; they get the same validation as the
benchmark sets (errors name the file, the data row, the value and the fix) and a split that is
recorded, never improvised: a seeded random 80/10/10 split, ``Split("random", …)``.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd

from harness.data.dataset import DataError, Dataset, Split, read_source
from harness.data.validate import check_splits, require_columns, validate_rows

FRACTIONS = (0.8, 0.1, 0.1)


def _stem(path: Path) -> str:
    """``my_set.csv.gz`` -> ``my_set``."""
    name = path.name.removesuffix(".gz")
    return name.rsplit(".", 1)[0] if "." in name else name


def random_split(n: int, seed: int) -> Split:
    """Seeded random 80/10/10 split of ``n`` rows (val and test get at least one row when n >= 3)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = n_test = max(1, int(round(FRACTIONS[1] * n))) if n >= 3 else 0
    return Split("random", np.sort(perm[n_val + n_test:]), np.sort(perm[:n_val]), np.sort(perm[n_val:n_val + n_test]))


def load_custom(
    path: str | Path,
    target: str,
    formula_col: str = "formula",
    id_col: str | None = None,
    *,
    drop_invalid: bool = False,
    seed: int = 0,
) -> Dataset:
    """Load a CSV (optionally .gz) with a formula column and a numeric target column.

    Ids come from ``id_col`` (must be unique) or are ``<stem>:<data row>``. ``sha256`` is that
    of the file's bytes.
    """
    path = Path(path)
    data, text = read_source(path)
    try:
        df = pd.read_csv(io.BytesIO(text), dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    needed = [formula_col, target] + ([id_col] if id_col else [])
    require_columns(list(df.columns), needed, str(path),
                    hint="Name the right ones with --formula-column / --target / --id-column.")
    name = _stem(path)
    rows = np.arange(1, len(df) + 1)  # data row = file line - 1, blank lines included
    blank = (df.fillna("") == "").all(axis=1).to_numpy()  # blank lines are not rows; numbering stays
    df, rows = df[~blank], rows[~blank]
    raw = pd.DataFrame({
        "id": df[id_col].astype(str) if id_col else [f"{name}:{r}" for r in rows],
        "formula": df[formula_col], "target": df[target], "where": str(path), "row": rows,
    })
    clean, dropped = validate_rows(raw, dataset=name, drop_invalid=drop_invalid, check_ids=id_col is not None)
    frame = clean[["id", "formula", "target"]].reset_index(drop=True)
    split = random_split(len(frame), seed)
    check_splits(name, [split], hint=f"{path} has {len(frame)} usable row(s); a random 80/10/10 "
                                    f"split needs at least 3 (and far more to learn anything).")
    sha = hashlib.sha256(data).hexdigest()
    if dropped:
        sha = hashlib.sha256(f"{sha}:drop_invalid".encode()).hexdigest()
    return Dataset(
        name=name, suite="custom", target=target, unit="", frame=frame, splits=[split], sha256=sha,
        source=str(path), split_scheme=f"random 80/10/10 (seed {seed})", dropped=dropped,
        notes={"split_seed": seed, "formula_col": formula_col, "id_col": id_col},
    )
