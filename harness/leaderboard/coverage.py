"""Does a newly generated leaderboard hold every result of the published one?

The committed ``leaderboards/`` are replaced by a fresh store's pages only when nothing on them
would be lost: every measured (suite, dataset, model) number they show must be in the new pages
too, over at least as many folds or seeds. Read from the ``<suite>/results.csv`` exports, which
carry every number of the tables.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

KEY = ["suite", "dataset", "model"]


def measured_results(pages: Path) -> pd.DataFrame:
    """The measured rows (a finite test MAE) of every ``<suite>/results.csv`` under ``pages``."""
    frames = [pd.read_csv(path, dtype={"dataset": str, "model": str})
              for path in sorted(Path(pages).glob("*/results.csv"))]
    if not frames:
        return pd.DataFrame(columns=KEY + ["label", "mae", "n"])
    rows = pd.concat(frames, ignore_index=True)
    return rows[(rows["kind"] == "measured") & rows["mae"].map(lambda v: math.isfinite(float(v)))]


def missing_results(published: Path, new: Path) -> list[str]:
    """The published measured results that ``new`` lacks (or holds over fewer folds/seeds), as
    ``suite / dataset / model (why)``; empty when ``new`` covers ``published``."""
    old, fresh = measured_results(published), measured_results(new).set_index(KEY)
    missing = []
    for _, row in old.iterrows():
        key = tuple(row[k] for k in KEY)
        where = f"{key[0]} / {key[1]} / {row['label']}"
        if key not in fresh.index:
            missing.append(f"{where} (no result)")
        elif float(fresh.loc[key, "n"]) < float(row["n"]):
            missing.append(f"{where} ({fresh.loc[key, 'n']:g} folds/seeds, published {row['n']:g})")
    return missing
