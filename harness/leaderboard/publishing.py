"""Publishing generated pages into the committed ``leaderboards/``, one dataset at a time.

A dataset's committed pages are replaced by a fresh store's only when nothing on them would be
lost: every measured (model) number they show must be in the new pages too, over at least as
many folds or seeds (read from the datasets' records, ``<suite>/<dataset>/record.json``). The
rule is per dataset, so that a store that starts empty (a leaderboard job on a new machine)
publishes each dataset it has caught up on, while the other datasets' pages, from an earlier
store, stay as they are. The suite page, its CSV exports and Matbench submission files are then
composed from the records of the datasets it shows (``harness.leaderboard.records``), and
README.md from every suite's ``<suite>/index.json``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness.leaderboard import matbench_export, records
from harness.leaderboard.build import compose_readme, composed_files, publish
from harness.leaderboard.render import slug
from harness.leaderboard.tables import finite


KEY = ["suite", "dataset", "model"]


def measured_results(pages: Path) -> pd.DataFrame:
    """The measured rows (a finite test MAE) of every ``<suite>/results.csv`` under ``pages``."""
    frames = [pd.read_csv(path, dtype={"dataset": str, "model": str})
              for path in sorted(Path(pages).glob("*/results.csv"))]
    if not frames:
        return pd.DataFrame(columns=KEY + ["label", "mae", "n", "kind"])
    rows = pd.concat(frames, ignore_index=True)
    return rows[(rows["kind"] == "measured") & rows["mae"].map(lambda v: math.isfinite(float(v)))]


def lacking(old: dict | None, new: dict) -> list[str]:
    """The measured results of the ``old`` record (a dataset's) that ``new`` lacks or holds over
    fewer folds/seeds, as ``suite / dataset / model (why)``."""
    if old is None:
        return []
    fresh = {r["model"]: r for r in new["results"]}
    out = []
    for r in old["results"]:
        if not finite(r["value"]):
            continue
        where = f"{old['suite']} / {old['dataset']} / {r['label']}"
        mine = fresh.get(r["model"])
        if mine is None or not finite(mine["value"]):
            out.append(f"{where} (no result)")
        elif mine["n_units"] < r["n_units"]:
            out.append(f"{where} ({mine['n_units']} folds/seeds, published {r['n_units']})")
    return out


def suites_in_pages(pages: Path) -> list[str]:
    """The suites a page folder holds (``<suite>.md`` beside a ``<suite>/`` folder)."""
    return sorted(p.stem for p in Path(pages).glob("*.md") if p.name != "README.md" and (p.parent / p.stem).is_dir())


def missing_by_suite(published: Path, new: Path) -> dict[str, list[str]]:
    """Per suite of ``published``: the measured results that ``new`` lacks (or holds over fewer
    folds/seeds) on the datasets ``new`` shows, as ``suite / dataset / model (why)``."""
    out: dict[str, list[str]] = {}
    for suite in suites_in_pages(published):
        old = records.read_records(published, suite)
        fresh = records.read_records(new, suite) if (Path(new) / suite).is_dir() else {}
        out[suite] = [m for d in sorted(old) for m in (lacking(old[d], fresh[d]) if d in fresh else [])]
    return out


def missing_results(published: Path, new: Path) -> list[str]:
    """Every suite's lacking results (see :func:`missing_by_suite`); empty when ``new`` covers all it shows."""
    return [m for lacking_ in missing_by_suite(published, new).values() for m in lacking_]


def _dataset_files(folder: Path, suite: str, dataset: str, record: dict) -> dict[str, bytes]:
    """One dataset's page, plots and record from ``folder`` (the record written if the folder's pages predate records)."""
    base = Path(folder) / suite
    files = {f"{suite}/{slug(dataset)}.md": (base / f"{slug(dataset)}.md").read_bytes()}
    if (base / slug(dataset)).is_dir():
        files.update({p.relative_to(folder).as_posix(): p.read_bytes()
                      for p in sorted((base / slug(dataset)).rglob("*")) if p.is_file()})
    files[f"{suite}/{slug(dataset)}/{records.RECORD}"] = records.record_bytes(record)
    return files


def publish_suites(published: Path, new: Path, apply: bool) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """({suite: its datasets whose new pages hold every published result}, {suite: what the
    others lack}). A dataset the published pages do not show is taken once it has a measured
    result (a store whose first searches are still running publishes no empty row). With ``apply`` those datasets' pages replace the published ones, each suite
    page is composed again from its datasets' records (the new ones and the published ones kept),
    files of the suite that neither holds are removed, and README.md is composed again."""
    published, new = Path(published), Path(new)
    taken: dict[str, list[str]] = {}
    lacks: dict[str, list[str]] = {}
    for suite in suites_in_pages(new):
        old = records.read_records(published, suite) if (published / suite).is_dir() else {}
        fresh = records.read_records(new, suite)
        source: dict[str, Path] = {d: published for d in old}
        for d in sorted(fresh):
            missing = lacking(old.get(d), fresh[d])
            if missing:
                lacks.setdefault(suite, []).extend(missing)
            elif d in old or any(finite(r["value"]) for r in fresh[d]["results"]):
                source[d] = new  # (a dataset new to the pages: once it has a measured result)
        taken[suite] = [d for d in sorted(source) if source[d] == new]
        if not apply or not taken[suite]:
            continue
        chosen = {d: (fresh if source[d] == new else old)[d] for d in source}
        files: dict[str, bytes] = {}
        for d, folder in source.items():
            files.update(_dataset_files(folder, suite, d, chosen[d]))

        def block_of(model: str, task: str) -> dict:
            path = source[task] / suite / f"matbench_v0.1_{slug(model)}" / "results.json.gz"
            return matbench_export.file_blocks(path)[task]

        files.update(composed_files(suite, chosen, block_of))
        publish(published, files, managed_dirs=[suite])
    if apply and any(taken.values()):
        publish(published, {"README.md": compose_readme(published)}, managed_dirs=[])
    return {s: d for s, d in taken.items() if d}, lacks
