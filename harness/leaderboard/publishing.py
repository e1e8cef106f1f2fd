"""Publishing generated pages into the committed ``leaderboards/``, one dataset (or model) at a time.

A leaderboard job's store may start empty (a new machine), so its pages cannot simply replace
the committed ones. Per dataset:

- where both the committed pages and the new ones hold the dataset's run data
  (``<suite>/<dataset>/runs.json.gz``, ``harness.leaderboard.rundata``), each model is taken from
  the new pages when they hold it over as many folds/seeds as the committed ones or more, else kept,
  and the dataset's page, ranks, paired test and plots are computed again over all of them: a new
  store publishes each model as soon as it has it, whatever the other models' state;
- pages written before run data existed are replaced as a whole, only when nothing on them would
  be lost: every measured (model) number they show must be in the new pages too, over at least as
  many folds or seeds (read from the datasets' records, ``<suite>/<dataset>/record.json``).

The suite page, its CSV exports and Matbench submission files are then composed from the records
of the datasets it shows (``harness.leaderboard.records``), and README.md from every suite's
``<suite>/index.json``.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd

from harness.leaderboard import matbench_export, records, rundata
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


def run_data(folder: Path, suite: str, dataset: str) -> dict | None:
    """The dataset's run data in ``folder`` (None for pages written before run data existed)."""
    path = Path(folder) / suite / slug(dataset) / rundata.RUNS
    return rundata.load_runs_bytes(path.read_bytes(), str(path)) if path.is_file() else None


def newer_models(old: dict | None, new: dict) -> list[str]:
    """The models of dataset record ``new`` to take over ``old``'s (None: no published pages): a
    measured result that ``old`` lacks, or holds over as many folds/seeds or fewer; none with a
    final fit still running (committed pages would show it running for good)."""
    before = {r["model"]: r for r in old["results"]} if old else {}
    out = []
    for r in new["results"]:
        mine = before.get(r["model"])
        if finite(r["value"]) and not r["n_running"] and (
                mine is None or not finite(mine["value"]) or r["n_units"] >= mine["n_units"]):
            out.append(r["model"])
    return out


def _unrecoverable(record: dict, runs: dict, taken: list[str]) -> list[str]:
    """Models the published ``record`` shows measured that neither its run data nor ``taken``
    holds (a record and run data that disagree): merging would lose them, so the dataset is left as it is."""
    in_runs = {p["model"] for p in runs["pairs"]}
    return [r["model"] for r in record["results"]
            if finite(r["value"]) and r["model"] not in in_runs and r["model"] not in taken]


@dataclasses.dataclass
class Merged:
    """A dataset's pages computed again from run data of two page folders, model by model."""

    files: dict[str, bytes]
    record: dict
    taken: list[str]  # models from the new pages
    kept: list[str]  # models from the published pages
    blocks: dict[str, dict]  # model -> its Matbench task block (a complete model)


def merge_dataset(suite: str, dataset: str, old_runs: dict, new_runs: dict, taken: list[str]) -> Merged:
    """The dataset's pages with ``taken`` models from ``new_runs`` and the others from ``old_runs``."""
    from harness.leaderboard.build import dataset_files, reference_results
    from harness.leaderboard.tables import build_tables

    kept = sorted({p["model"] for p in old_runs["pairs"]} - set(taken))
    data = rundata.suite_data(suite, [rundata.only_models(old_runs, set(kept)), rundata.only_models(new_runs, set(taken))])
    t = build_tables(data, reference_results())
    blocks = {}
    if suite == "matbench":
        for model in t.models:
            got, status = matbench_export.store_blocks(t, model)
            t.submissions.update({(d, model): s for d, s in status.items()})
            blocks.update({model: got[dataset]} if dataset in got else {})
    files = dataset_files(t, dataset)
    record = records.load_record_bytes(files[f"{suite}/{slug(dataset)}/{records.RECORD}"])
    return Merged(files, record, sorted(taken), kept, blocks)


def publish_suites(published: Path, new: Path, apply: bool) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """({suite: what is taken from the new pages, per dataset}, {suite: the published results the
    new pages lack where a dataset cannot be merged}).

    Per dataset, where the new pages hold its run data: each model is taken from them where
    :func:`newer_models` says so, the published ones kept (from the published run data), and the
    dataset's page, ranks, paired test and plots computed again over all of them. Published pages
    without run data (written before it existed) are replaced only when the models taken hold every
    result they show; new pages without run data replace published ones as a whole, on the same
    condition. A dataset the published pages do not show is taken once it has a measured result (a
    store whose first searches are still running publishes no empty row). With ``apply`` the published pages are
    written: the datasets' files, each suite page composed again from its datasets' records (the
    new, merged and kept ones), files of the suite that none holds removed, and README.md composed again."""
    published, new = Path(published), Path(new)
    taken: dict[str, list[str]] = {}
    lacks: dict[str, list[str]] = {}
    for suite in suites_in_pages(new):
        old = records.read_records(published, suite) if (published / suite).is_dir() else {}
        fresh = records.read_records(new, suite)
        source: dict[str, Path] = {d: published for d in old}
        merged: dict[str, Merged] = {}
        for d in sorted(fresh):
            new_runs = run_data(new, suite, d)
            if new_runs is None:  # new pages written before run data existed: only as a whole
                missing = lacking(old.get(d), fresh[d])
                if missing:
                    lacks.setdefault(suite, []).extend(missing)
                elif d in old or any(finite(r["value"]) for r in fresh[d]["results"]):
                    source[d] = new  # (a dataset new to the pages: once it has a measured result)
                    taken.setdefault(suite, []).append(d)
                continue
            old_runs = run_data(published, suite, d) if d in old else None
            models = newer_models(old.get(d), fresh[d])
            if old_runs is None:  # nothing can be kept: the models taken must hold every published result
                lost = lacking(old.get(d), {**fresh[d], "results": [r for r in fresh[d]["results"] if r["model"] in models]})
            else:
                labels = {r["model"]: r["label"] for r in old[d]["results"]}
                lost = [f"{suite} / {d} / {labels[m]} (no result taken; the published run data lacks it)"
                        for m in _unrecoverable(old[d], old_runs, models)]
                said = {line.split(" (")[0]: line for line in lacking(old[d], fresh[d])}
                lost = [said.get(line.split(" (")[0], line) for line in lost]  # in lacking()'s words where it has some
            if lost or not models:  # the dataset is left as it is
                why = lost or lacking(old.get(d), fresh[d])
                if why:
                    lacks.setdefault(suite, []).extend(why)
                continue
            merged[d] = merge_dataset(suite, d, old_runs or rundata.empty(suite, d), new_runs, models)
            everything = {r["model"] for r in fresh[d]["results"]}
            if merged[d].kept or set(models) != everything:
                kept = f"; kept {', '.join(merged[d].kept)}" if merged[d].kept else ""
                taken.setdefault(suite, []).append(f"{d} ({', '.join(merged[d].taken)}{kept})")
            else:
                taken.setdefault(suite, []).append(d)
            source[d] = published
        if not apply or suite not in taken:
            continue
        chosen = {d: merged[d].record if d in merged else (fresh if source[d] == new else old)[d] for d in source}
        files: dict[str, bytes] = {}
        for d, folder in source.items():
            files.update(merged[d].files if d in merged else _dataset_files(folder, suite, d, chosen[d]))

        def block_of(model: str, task: str) -> dict:
            if task in merged:
                return merged[task].blocks[model]
            path = source[task] / suite / f"matbench_v0.1_{slug(model)}" / "results.json.gz"
            return matbench_export.file_blocks(path)[task]

        files.update(composed_files(suite, chosen, block_of))
        publish(published, files, managed_dirs=[suite])
    if apply and taken:
        publish(published, {"README.md": compose_readme(published)}, managed_dirs=[])
    return taken, lacks
