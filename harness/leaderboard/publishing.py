"""Publishing generated pages into the committed ``leaderboards/``, one suite at a time.

A suite's committed pages are replaced by a fresh store's pages only when nothing on them would
be lost: every measured (dataset, model) number they show must be in the new pages too, over at
least as many folds or seeds (read from the ``<suite>/results.csv`` exports, which carry every
number of the tables). The rule is per suite, so that a store that starts empty (a new machine)
can publish a suite it has caught up on while another suite's committed pages, from an earlier
store, stay as they are. README.md is then composed from every published suite's
``<suite>/index.json`` (its rows of the index and budget tables).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness.leaderboard.build import compose_readme, entry_bytes, publish
from harness.leaderboard.render import entry_from_readme

KEY = ["suite", "dataset", "model"]


def measured_results(pages: Path) -> pd.DataFrame:
    """The measured rows (a finite test MAE) of every ``<suite>/results.csv`` under ``pages``."""
    frames = [pd.read_csv(path, dtype={"dataset": str, "model": str})
              for path in sorted(Path(pages).glob("*/results.csv"))]
    if not frames:
        return pd.DataFrame(columns=KEY + ["label", "mae", "n", "kind"])
    rows = pd.concat(frames, ignore_index=True)
    return rows[(rows["kind"] == "measured") & rows["mae"].map(lambda v: math.isfinite(float(v)))]


def missing_by_suite(published: Path, new: Path) -> dict[str, list[str]]:
    """Per suite of ``published``: the measured results that ``new`` lacks (or holds over fewer
    folds/seeds), as ``suite / dataset / model (why)``; a suite ``new`` covers maps to []."""
    old, fresh = measured_results(published), measured_results(new).set_index(KEY)
    missing: dict[str, list[str]] = {}
    for _, row in old.iterrows():
        key = tuple(row[k] for k in KEY)
        lacking = missing.setdefault(key[0], [])
        where = f"{key[0]} / {key[1]} / {row['label']}"
        if key not in fresh.index:
            lacking.append(f"{where} (no result)")
        elif float(fresh.loc[key, "n"]) < float(row["n"]):
            lacking.append(f"{where} ({fresh.loc[key, 'n']:g} folds/seeds, published {row['n']:g})")
    return missing


def missing_results(published: Path, new: Path) -> list[str]:
    """Every suite's lacking results (see :func:`missing_by_suite`); empty when ``new`` covers all."""
    return [m for lacking in missing_by_suite(published, new).values() for m in lacking]


def suites_in_pages(pages: Path) -> list[str]:
    """The suites a page folder holds (``<suite>.md`` beside a ``<suite>/`` folder)."""
    return sorted(p.stem for p in Path(pages).glob("*.md") if p.name != "README.md" and (p.parent / p.stem).is_dir())


def publish_suites(published: Path, new: Path, apply: bool) -> tuple[list[str], dict[str, list[str]]]:
    """(the suites of ``new`` that cover their published pages, {suite: what it lacks} for the
    others). With ``apply`` the covering suites' pages replace the published ones (files of such a
    suite that the new pages lack are removed) and README.md is composed again; the others stay."""
    published, new = Path(published), Path(new)
    missing = missing_by_suite(published, new)
    covered, lacking = [], {}
    for suite in suites_in_pages(new):
        if missing.get(suite):
            lacking[suite] = missing[suite]
        else:
            covered.append(suite)
    if apply and covered:
        for suite in covered:
            files = {f"{suite}.md": (new / f"{suite}.md").read_bytes()}
            files.update({path.relative_to(new).as_posix(): path.read_bytes()
                          for path in sorted((new / suite).rglob("*")) if path.is_file()})
            if f"{suite}/index.json" not in files:  # pages written before index.json existed
                entry = entry_from_readme((new / "README.md").read_text(encoding="utf-8"), suite)
                if entry is not None:
                    files[f"{suite}/index.json"] = entry_bytes(entry)
            publish(published, files, managed_dirs=[suite])
        publish(published, {"README.md": compose_readme(published)}, managed_dirs=[])
    return covered, lacking
