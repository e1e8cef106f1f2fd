"""MLflow (the only source of truth) -> ``leaderboards/``: pages, plots, CSV exports.

For each (dataset, model) a page uses the runs of the most recent sweep that evaluated that
pair (the latest with final runs; else the latest with a search). Output, for a suite ``S``::

    <out>/README.md                     index of the suites in <out>, protocols, budget, commands
    <out>/S.md                          the suite page
    <out>/S/<dataset>.md                one page per dataset
    <out>/S/<dataset>/*.png             its plots
    <out>/S/<dataset>/record.json       what the suite page says of it (records.py)
    <out>/S/<dataset>/runs.json.gz      the runs its pages are computed from (rundata.py)
    <out>/S/{results,fits,significance,models}.csv
    <out>/S/index.json                  the suite's rows of README.md's tables
    <out>/matbench/matbench_v0.1_<model>/results.json.gz   (suite matbench: submission files)

Pages hold nothing that is not derived from the store (no clock, no host), so regenerating
them from the same store gives the same bytes (PNG included). The whole tree is written to a
temporary folder first, then each file is moved into place (subfolder files first, the suite
page and README last) and files of the suite's folder that the new tree does not hold are
removed: a reader never sees half a file, and a page never links to a missing plot.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from harness.console import make_console, progress
from harness.leaderboard import matbench_export, plots, records, rundata
from harness.leaderboard.render import (
    csv_bytes,
    fits_frame,
    models_frame,
    render_dataset,
    entry_from_readme,
    readme_entry,
    render_readme,
    render_suite,
    results_frame,
    significance_frame,
    slug,
)
from harness.leaderboard.store import SuiteData, load_suite, suites_in_store
from harness.leaderboard.tables import SuiteTables, build_tables
from harness.paths import shared_dir

PACKAGED_REFERENCE = Path(__file__).resolve().parent.parent / "resources" / "reference_results.csv"

__all__ = ["LeaderboardError", "reference_results", "suites_in_store", "write_leaderboard", "write_all",
           "suite_tables"]


class LeaderboardError(RuntimeError):
    pass


def reference_results() -> pd.DataFrame:
    """Published numbers: ``../shared/reference_results.csv`` if present, else the packaged copy."""
    shared = shared_dir()
    path = shared / "reference_results.csv" if shared else None
    if path is None or not path.is_file():
        path = PACKAGED_REFERENCE
    return pd.read_csv(path)


def suite_tables(tracking_uri: str, suite: str, with_artifacts: bool = True) -> SuiteTables:
    data: SuiteData = load_suite(tracking_uri, suite, with_artifacts=with_artifacts)
    if with_artifacts:  # pages: made of what each dataset's run data keeps (rundata.py), as composed pages are
        data = rundata.round_trip(data)
    return build_tables(data, reference_results())


def _not_run(suite: str, present: list[str]) -> list[str]:
    try:
        from harness.data.catalog import CATALOG, SUITES
    except ImportError:
        return []
    # runs carry their dataset's own suite (matbench_phonons stays `matbench` in `structures`)
    return [d for d in SUITES.get(suite, []) if d not in set(present) and CATALOG[d].suite == suite]


EXPORTS = [
    ("results.csv", "one row per (dataset, model): every number of the tables above, published rows too"),
    ("fits.csv", "one row per final fit: status, metrics, hyperparameters, run id"),
    ("significance.csv", "the paired test of each dataset's two best models"),
    ("models.csv", "per model: average rank and cost totals"),
]


def dataset_files(t: SuiteTables, dataset: str) -> dict[str, bytes]:
    """One dataset's page, plots and record (paths relative to the output folder)."""
    suite = t.data.suite
    base = f"{suite}/{slug(dataset)}"
    files: dict[str, bytes] = {}
    made: dict[str, str | None] = {}
    residual_png, train_logged = plots.residuals(t, dataset)
    for key, png in (("parity", plots.parity(t, dataset)), ("residuals", residual_png),
                     ("learning_curves", plots.learning_curves(t, dataset)),
                     ("trial_curves", plots.trial_curves(t, dataset)), ("pareto", plots.pareto(t, dataset))):
        if png is not None:
            files[f"{base}/{key}.png"] = png
            made[key] = f"{slug(dataset)}/{key}.png"
    files[f"{base}.md"] = render_dataset(t, dataset, made, train_logged).encode("utf-8")
    files[f"{base}/{records.RECORD}"] = records.record_bytes(records.record_of(t, dataset))
    files[f"{base}/{rundata.RUNS}"] = rundata.runs_bytes(rundata.runs_of(t.data, dataset))
    return files


def suite_files(t: SuiteTables) -> dict[str, bytes]:
    """Every file of one suite (paths relative to the output folder) except README.md: the
    dataset pages from the store, the suite page composed from the datasets' records."""
    suite = t.data.suite
    blocks: dict[str, dict[str, dict]] = {}
    if suite == "matbench":  # which tasks go into the submission files: in the records
        for model in t.models:
            blocks[model], status = matbench_export.store_blocks(t, model)
            t.submissions.update({(d, model): s for d, s in status.items()})
    files: dict[str, bytes] = {}
    # plots are most of the time (seconds per dataset): say how far it is
    for dataset in progress(t.datasets, len(t.datasets), f"{suite}: dataset pages and plots", min_total=2):
        files.update(dataset_files(t, dataset))
    recs = {d: records.load_record_bytes(files[f"{suite}/{slug(d)}/{records.RECORD}"]) for d in t.datasets}
    files.update(composed_files(suite, recs, lambda model, task: blocks[model][task]))
    return files


def composed_files(suite: str, recs: dict[str, dict], block_of) -> dict[str, bytes]:
    """The suite page, its CSV exports, Matbench submission files and index.json, from the
    datasets' records (``block_of(model, task)``: the task's block of the model's submission)."""
    t = records.tables_from_records(suite, recs, reference_results())
    files = {f"{suite}/results.csv": csv_bytes(results_frame(t)), f"{suite}/fits.csv": csv_bytes(fits_frame(t)),
             f"{suite}/significance.csv": csv_bytes(significance_frame(t)), f"{suite}/models.csv": csv_bytes(models_frame(t))}
    submissions = None
    if suite == "matbench":
        submissions = {}
        for model in t.models:
            status = {d: t.submissions[(d, model)] for d in t.datasets if (d, model) in t.submissions}
            included = sorted(d for d, s in status.items() if "end_time" in s)
            path = None
            if included:
                path = f"{suite}/matbench_v0.1_{slug(model)}/results.json.gz"
                commits = {c for d in included for c in t.get(d, model).git_commits}
                files[path] = matbench_export.assemble(model, t.labels[model], {d: block_of(model, d) for d in included},
                                                       [status[d]["end_time"] for d in included], commits)
            submissions[model] = (path, included, {d: s["left"] for d, s in status.items() if "left" in s})
    files[f"{suite}/index.json"] = entry_bytes(readme_entry(t))
    exports = [(f"{suite}/{name}", what) for name, what in EXPORTS]
    files[f"{suite}.md"] = render_suite(t, _not_run(suite, t.datasets), exports, submissions).encode("utf-8")
    return files


def entry_bytes(entry: dict) -> bytes:
    return (json.dumps(entry, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def compose_readme(folder: Path) -> bytes:
    """README.md indexing the suites whose pages are in ``folder``, from their ``<suite>/index.json``
    (a suite written before index.json existed: its rows in the folder's README.md)."""
    folder = Path(folder)
    old_readme = (folder / "README.md").read_text(encoding="utf-8") if (folder / "README.md").is_file() else ""
    entries = []
    for page in sorted(folder.glob("*.md")):
        suite, index = page.stem, folder / page.stem / "index.json"
        if page.name == "README.md" or not (folder / suite).is_dir():
            continue
        entry = json.loads(index.read_text(encoding="utf-8")) if index.is_file() else entry_from_readme(old_readme, suite)
        if entry is not None:
            entries.append(entry)
    return render_readme(entries).encode("utf-8")


def publish(out_dir: Path, files: dict[str, bytes], managed_dirs: list[str]) -> None:
    """Write ``files`` under ``out_dir`` via a temporary tree; remove stale files of ``managed_dirs``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".leaderboard-"))
    try:
        for rel, content in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        # deepest files first: plots and dataset pages exist before the pages that link to them
        for rel in sorted(files, key=lambda r: (-r.count("/"), r == "README.md", r)):
            dest = out_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, dest)
        keep = {(out_dir / rel).resolve() for rel in files}
        for managed in managed_dirs:
            root = out_dir / managed
            if not root.is_dir():
                continue
            for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
                if path.is_file() and path.resolve() not in keep:
                    path.unlink()
                elif path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_all(tracking_uri: str, out_dir: Path, suites: list[str] | None = None) -> list[Path]:
    """Write the pages of ``suites`` (default: every suite in the store) and README.md into ``out_dir``."""
    out_dir = Path(out_dir)
    suites = suites if suites is not None else suites_in_store(tracking_uri)
    if not suites:
        raise LeaderboardError(f"no sweep in {tracking_uri}; run `harness sweep` first")
    files: dict[str, bytes] = {}
    for suite in suites:
        start = time.perf_counter()
        t = suite_tables(tracking_uri, suite)
        if t.data.pairs.empty:
            present = suites_in_store(tracking_uri)
            raise LeaderboardError(
                f"no runs of suite {suite!r} in {tracking_uri}; suites present: "
                f"{', '.join(present) or 'none'} (run `harness sweep` first)"
            )
        make_console().print(f"{suite}: {len(t.data.finals)} final fits and {len(t.data.trials)} trials of "
                             f"{len(t.datasets)} dataset(s) read from MLflow ({time.perf_counter() - start:.0f} s)",
                             highlight=False)
        files.update(suite_files(t))
    publish(out_dir, files, managed_dirs=list(suites))
    # the index of the folder: these suites, and those written there before (from other stores)
    publish(out_dir, {"README.md": compose_readme(out_dir)}, managed_dirs=[])
    return [out_dir / f"{s}.md" for s in suites]


def write_leaderboard(suite: str, tracking_uri: str, out_dir: Path) -> Path:
    """Write ``<out_dir>/<suite>.md`` (+ its dataset pages, plots, CSVs, README.md); return the page."""
    return write_all(tracking_uri, out_dir, [suite])[0]
