"""Per-dataset records: everything a suite page says about one dataset, beside that dataset's page.

A suite page (its tables, CSV exports, Matbench submission files and README rows) is composed
from one record per dataset (``<suite>/<dataset>/record.json``), and ``harness leaderboard``
itself writes every suite page that way: store -> tables -> records -> suite page. So a suite's
pages can hold datasets generated from different MLflow stores (a leaderboard job that starts
again on a new machine publishes each dataset once its store has caught up on that dataset,
while the other datasets' pages, from an earlier store, stay as they are; see
``harness.leaderboard.publishing``), and composing the pages of one store from its own records
gives the bytes that store's pages always had.

Pages written before records existed are read back from their exports and tables
(:func:`legacy_records`): results.csv, fits.csv, significance.csv, the suite page's tables,
index.json, and the submission files' datestamps. What those do not hold is derived as the
store would have (fold flags, pooled seeds), or marked as estimated (a sweep's searches per
dataset, when one sweep spans several datasets and some of its searches left no final fit).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
from pathlib import Path

import pandas as pd

from harness.leaderboard import matbench_export
from harness.leaderboard.render import _row_cells, cell_text, entry_from_readme, slug
from harness.leaderboard.store import OK, SuiteData
from harness.leaderboard.tables import (
    FIT_METRICS,
    SEEDS,
    PairResult,
    Significance,
    SuiteTables,
    average_ranks,
    finite,
    flag_partial_folds,
    fold_number,
    n_folds_of,
    published_numbers,
)

RECORD = "record.json"
FORMAT = 1
_FLOAT_FIELDS = {f.name for f in dataclasses.fields(PairResult) if f.type == "float"}
_SIG_FLOATS = ("statistic", "p_value")


def record_path(folder: Path, suite: str, dataset: str) -> Path:
    return Path(folder) / suite / slug(dataset) / RECORD


# ----------------------------------------------------------------------------- writing
def record_of(t: SuiteTables, dataset: str) -> dict:
    """The record of one dataset of ``t`` (tables made from a store)."""
    fits = t.fits[t.fits["dataset"] == dataset] if not t.fits.empty else t.fits
    return {
        "format": FORMAT, "suite": t.data.suite, "dataset": dataset,
        "info": t.info[dataset], "mad": t.mad[dataset], "n_test": int(t.n_test[dataset]),
        "notes": list(t.notes[dataset]), "end_time": t.ends.get(dataset, math.nan),
        "significance": dataclasses.asdict(t.significance[dataset]),
        "results": [dataclasses.asdict(t.results[(dataset, m)]) for m in t.models if (dataset, m) in t.results],
        "fits": fits.to_dict("records"),
        "sweeps": {sweep: {**{k: v for k, v in b.items() if k != "datasets"}, "dataset": b["datasets"][dataset]}
                   for sweep, b in sorted(t.sweeps.items()) if dataset in b["datasets"]},
        "submissions": {m: status for (d, m), status in sorted(t.submissions.items()) if d == dataset},
    }


def plain(value, nan=None):
    """JSON-ready: numpy scalars as Python ones, NaN as ``nan`` (null: strict JSON), infinities as strings."""
    if isinstance(value, dict):
        return {str(k): plain(v, nan) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, nan) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return nan if math.isnan(value) else str(value)
    return value


def record_bytes(record: dict) -> bytes:
    return (json.dumps(plain(record), indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _nan(value) -> float:
    if value is None or value == "":
        return math.nan
    return float(value)


def load_record(path: Path) -> dict:
    return load_record_bytes(Path(path).read_bytes(), str(path))


def load_record_bytes(blob: bytes, where: str = "record") -> dict:
    """A record as written by :func:`record_bytes` (NaN restored where null stands for it)."""
    record = json.loads(blob.decode("utf-8"))
    if record.get("format") != FORMAT:
        raise ValueError(f"{where}: record format {record.get('format')!r}, this harness reads {FORMAT}")
    for r in record["results"]:
        for name in _FLOAT_FIELDS:
            r[name] = _nan(r[name])
    for row in record["fits"]:
        for name in FIT_METRICS:
            row[name] = _nan(row.get(name))
    for name in _SIG_FLOATS:
        record["significance"][name] = _nan(record["significance"][name])
    record["mad"], record["end_time"] = _nan(record["mad"]), _nan(record["end_time"])
    return record


# ----------------------------------------------------------------------------- composing
def tables_from_records(suite: str, records: dict[str, dict], reference: pd.DataFrame) -> SuiteTables:
    """The suite's tables made of its datasets' records (average ranks and published numbers
    computed over all of them)."""
    # in the store's order (dataset, model): cost totals and average ranks are sums in that order
    results = dict(sorted(((d, r["model"]), PairResult(**r)) for d, rec in records.items() for r in rec["results"]))
    pairs = pd.DataFrame([{"dataset": d, "model": m, "sweep_id": r.sweep_id, "model_label": r.label}
                          for (d, m), r in sorted(results.items())],
                         columns=["dataset", "model", "sweep_id", "model_label"])
    data = SuiteData(suite, "", pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), pairs)
    # the order of the store's finals (sorted by dataset name, then model, split, seed)
    fits = [row for d in sorted(records) for row in records[d]["fits"]]
    sweeps: dict[str, dict] = {}
    for d in sorted(records):
        for sweep, b in records[d]["sweeps"].items():
            entry = sweeps.setdefault(sweep, {**{k: v for k, v in b.items() if k != "dataset"}, "datasets": {}})
            entry["datasets"][d] = b["dataset"]
    return SuiteTables(
        data, results,
        mad={d: rec["mad"] for d, rec in records.items()},
        n_test={d: rec["n_test"] for d, rec in records.items()},
        significance={d: Significance(**rec["significance"]) for d, rec in records.items()},
        published=published_numbers(suite, data.datasets, reference),
        notes={d: rec["notes"] for d, rec in records.items()},
        info={d: rec["info"] for d, rec in records.items()},
        average_rank=average_ranks(data.models, results),
        fits=pd.DataFrame(fits), sweeps=sweeps,
        ends={d: rec["end_time"] for d, rec in records.items()},
        submissions={(d, m): s for d, rec in records.items() for m, s in rec["submissions"].items()},
    )


def datasets_in(folder: Path, suite: str) -> list[str]:
    """The datasets whose pages ``folder`` holds for ``suite`` (from the suite's results.csv)."""
    path = Path(folder) / suite / "results.csv"
    if not path.is_file():
        return []
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return sorted(set(frame["dataset"]))


def read_records(folder: Path, suite: str) -> dict[str, dict]:
    """dataset -> record of the suite's pages in ``folder`` (record.json, else from the legacy pages)."""
    datasets = datasets_in(folder, suite)
    missing = [d for d in datasets if not record_path(folder, suite, d).is_file()]
    out = legacy_records(folder, suite, missing) if missing else {}
    for d in datasets:
        if d not in out:
            out[d] = load_record(record_path(folder, suite, d))
    return out


# ----------------------------------------------------------------------------- legacy pages
def _table_rows(markdown: str, first_header: str) -> list[list[str]]:
    """The body rows (cells, unescaped) of the first markdown table whose header starts with ``first_header``."""
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and _row_cells(line)[:len(first_header)] == first_header:
            rows = []
            for body in lines[i + 2:]:
                if not body.startswith("|"):
                    break
                rows.append(_row_cells(body))
            return rows
    return []


def _footnotes(markdown: str) -> list[str]:
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Where our protocol differs from the published one"):
            notes = []
            for body in lines[i + 2:]:
                m = re.match(r"(\d+)\. (.*)$", body)
                if not m:
                    break
                notes.append(m.group(2))
            return notes
    return []


def _split_scheme(dataset_page: Path) -> str:
    if not dataset_page.is_file():
        return ""
    m = re.search(r" · split: (.*?) · ", dataset_page.read_text(encoding="utf-8"))
    return m.group(1) if m else ""


def _int(text: str) -> int:
    return int(float(text)) if text not in ("", "n/a") else 0


def _list(text: str) -> list[str]:
    return text.split("; ") if text else []


def _legacy_result(row: dict, fits: pd.DataFrame, trials_shown: str) -> PairResult:
    mine = fits[fits["model"] == row["model"]]
    key = lambda s: (fold_number(s) is not None, fold_number(s) or 0, s)  # noqa: E731 (tables.pair_result's order)
    splits = sorted(set(mine["split"]), key=key)
    ok = mine[mine["state"] == OK]
    seeds = sorted(set(ok["seed"]), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    lo, hi = _nan(row["params_min"]), _nan(row["params_max"])
    trials = {k: _int(row[f"trials_{k}"]) for k in ("completed", "pruned", "failed")}
    # the other trial states by name, as the budget table shows them: "3 / 4 / 0 (+ 1 running)"
    other = re.search(r"\(\+ (.*)\)$", trials_shown)
    for part in other.group(1).split(", ") if other else []:
        count, _, state = part.partition(" ")
        trials[state] = int(count)
    if _int(row["trials_other"]) != sum(v for k, v in trials.items() if k not in ("completed", "pruned", "failed")):
        trials["other"] = _int(row["trials_other"])
    fold_mae = {}
    for part in _list(row["fold_mae"].replace(";", "; ")):
        split, _, value = part.partition("=")
        fold_mae[split] = float(value)
    pooled = _nan(row["pooled_mae"])
    return PairResult(
        dataset=row["dataset"], model=row["model"], label=row["label"], sweep_id=row["sweep_id"],
        n_fits=_int(row["fits"]), n_ok=_int(row["fits_ok"]), n_failed=_int(row["fits_failed"]),
        n_no_metric=_int(row["fits_no_test_mae"]), n_running=_int(row["fits_running"]),
        aggregate=row["aggregate"] or SEEDS, value=_nan(row["mae"]), spread=_nan(row["mae_std"]),
        n_units=_int(row["n"]), over=row["over"], mean_folds=_nan(row["mean_folds"]),
        std_folds=_nan(row["std_folds"]), fold_mae=fold_mae, pooled=pooled, pooled_std=_nan(row["pooled_std"]),
        pooled_seeds=len(seeds) if finite(pooled) else 0, splits=splits,
        ok_splits=[s for s in splits if s in set(ok["split"])], seeds=seeds,
        no_final_reason=row["no_final_reason"], rank=_nan(row["rank"]), mad_mae=_nan(row["mad_mae"]),
        params=[] if not finite(lo) else [lo] if lo == hi or not finite(hi) else [lo, hi],
        trials=trials if any(trials.values()) else {},
        search_epochs=_nan(row["epochs_search"]), final_epochs=_nan(row["epochs_final"]),
        search_cpu_h=_nan(row["search_cpu_h"]), search_gpu_h=_nan(row["search_gpu_h"]),
        final_cpu_h=_nan(row["final_cpu_h"]), final_gpu_h=_nan(row["final_gpu_h"]),
        max_epochs=row["max_epochs"], num_samples=row["num_samples"], subsample=row["subsample"],
        hardware=_list(row["hardware"]), git_commits=_list(row["git_commit"]),
    )


def _legacy_fits(path: Path) -> pd.DataFrame:
    fits = pd.read_csv(path, dtype=str, keep_default_na=False)
    for name in FIT_METRICS:
        fits[name] = [_nan(v) for v in fits[name]]
    for name in ("has_test_predictions", "has_train_predictions"):
        fits[name] = fits[name] == "True"
    return fits


def _legacy_sweeps(entry: dict, results: pd.DataFrame, fits: pd.DataFrame) -> dict[str, dict[str, dict]]:
    """dataset -> {sweep: its budget with this dataset's share}, from index.json's budget rows.

    A sweep's searches per dataset: one per (model, split) with a final fit, and the searches
    that left no fit go to the datasets where a model lacks a fold (marked ``searches_estimated``)."""
    out: dict[str, dict[str, dict]] = {}
    for cells in entry.get("budget", []):
        sweep = cells[1].strip("`")
        mine = results[results["sweep_id"] == sweep]
        datasets = sorted(set(mine["dataset"]))
        share, gaps = {}, []
        for d in datasets:
            f = fits[(fits["sweep_id"] == sweep) & (fits["dataset"] == d)]
            share[d] = len(set(zip(f["model"], f["split"])))
            splits = set(fits[fits["dataset"] == d]["split"])
            models = set(mine[mine["dataset"] == d]["model"])
            if any(set(f[f["model"] == m]["split"]) != splits for m in models):
                gaps.append(d)
        rest = _int(cells[4]) - sum(share.values())
        takers = gaps or datasets[-1:]
        for i, d in enumerate(takers):
            share[d] += rest // len(takers) + (1 if i < rest % len(takers) else 0)
        for d in datasets:
            f = fits[(fits["sweep_id"] == sweep) & (fits["dataset"] == d)]
            part = {"models": sorted(set(mine[mine["dataset"] == d]["model"])), "searches": share[d],
                    "finals": len(f)}
            if rest and d in takers:
                part["searches_estimated"] = True
            out.setdefault(d, {})[sweep] = {
                "num_samples": cells[5], "max_epochs": cells[6], "final_seeds": cells[7], "subsample": cells[9],
                "command": cells[10].strip("`"), "dataset": part}
    return out


def _legacy_submissions(folder: Path, suite: str, page: str, labels: dict[str, str]) -> dict[str, dict[str, dict]]:
    """dataset -> {model: {"end_time": ms} | {"left": why}}, from the suite page's submission table."""
    out: dict[str, dict[str, dict]] = {}
    model_of = {label: model for model, label in labels.items()}
    for cells in _table_rows(page, ["model", "file", "tasks included"]):
        model = model_of.get(cells[0])
        if model is None:
            continue
        path = re.match(r"\[(.*?)\]", cells[1])
        end = matbench_export.file_datestamp(Path(folder) / path.group(1)) if path else math.nan
        for task in ([] if cells[2] == "—" else cells[2].split(", ")):
            out.setdefault(task, {})[model] = {"end_time": end}
        for part in ([] if cells[3] == "—" else cells[3].split("; ")):
            task, _, why = part.partition(": ")
            out.setdefault(task, {})[model] = {"left": why}
    return out


def _date_ms(text: str) -> float:
    try:
        when = datetime.datetime.strptime(text, "%Y-%m-%d %H:%M UTC").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return math.nan
    return when.timestamp() * 1000


def legacy_records(folder: Path, suite: str, datasets: list[str] | None = None) -> dict[str, dict]:
    """Records of a suite's pages written before records existed (see the module docstring)."""
    folder = Path(folder)
    base = folder / suite
    results = pd.read_csv(base / "results.csv", dtype=str, keep_default_na=False)
    results = results[results["kind"] == "measured"]
    fits = _legacy_fits(base / "fits.csv")
    sig = pd.read_csv(base / "significance.csv", dtype=str, keep_default_na=False)
    page = (folder / f"{suite}.md").read_text(encoding="utf-8")
    index_path = base / "index.json"
    if index_path.is_file():
        entry = json.loads(index_path.read_text(encoding="utf-8"))
    else:
        entry = entry_from_readme((folder / "README.md").read_text(encoding="utf-8"), suite) or {}
    end = _date_ms(entry["index"][-1]) if entry.get("index") else math.nan
    notes, refs = _footnotes(page), {}
    for cells in _table_rows(page, ["dataset", "unit", "over"]):
        refs[cells[0]] = [int(n) for n in re.findall(r"\[(\d+)\]", cells[-1])]
    n_test = {cells[0]: _int(cells[2]) for cells in _table_rows(page, ["dataset", "MAD of test targets"])}
    pooled_cells = {(cells[0], cells[1]): cells[3] for cells in _table_rows(page, ["dataset", "model", "folds with a result"])}
    labels = dict(zip(results["model"], results["label"]))
    trials_shown = {(cells[0], cells[1]): cells[2]
                    for cells in _table_rows(page, ["dataset", "model", "trials (completed / pruned / failed)"])}
    sweeps = _legacy_sweeps(entry, results, fits)
    submissions = _legacy_submissions(folder, suite, page, labels) if suite == "matbench" else {}
    out = {}
    for dataset in datasets if datasets is not None else sorted(set(results["dataset"])):
        rows = results[results["dataset"] == dataset]
        mine = fits[fits["dataset"] == dataset]
        scheme = _split_scheme(base / f"{slug(dataset)}.md")
        here = [_legacy_result(row, mine, trials_shown.get((dataset, row["label"]), "")) for row in rows.to_dict("records")]
        flag_partial_folds(here, n_folds_of(scheme))
        for r in here:
            shown = pooled_cells.get((dataset, r.label))
            if shown is not None and not finite(r.pooled) and shown != cell_text(r):
                r.pooled_note = shown
        s = sig[sig["dataset"] == dataset]
        s = s.iloc[0].to_dict() if len(s) else {"best": "", "second": "", "paired": "", "n": "0",
                                                  "statistic": "", "p_value": "", "text": "—"}
        model_of = {r.label: r.model for r in here}
        significance = Significance(dataset, best=model_of.get(s["best"], ""), second=model_of.get(s["second"], ""),
                                    test=s["paired"], n=_int(s["n"]), statistic=_nan(s["statistic"]),
                                    p_value=_nan(s["p_value"]), text=s["text"])
        units = [u for u in rows["unit"] if u]
        out[dataset] = {
            "format": FORMAT, "suite": suite, "dataset": dataset, "legacy": True,
            "info": {"unit": units[0] if units else "", "split_scheme": scheme},
            "mad": _nan(rows["mad"].iloc[0]) if len(rows) else math.nan, "n_test": n_test.get(dataset, 0),
            "notes": [notes[n - 1] for n in refs.get(dataset, [])], "end_time": end,
            "significance": dataclasses.asdict(significance),
            "results": [dataclasses.asdict(r) for r in sorted(here, key=lambda r: (r.label.lower(), r.model))],
            "fits": mine.to_dict("records"),
            "sweeps": sweeps.get(dataset, {}),
            "submissions": submissions.get(dataset, {}),
        }
    return out


def lacking_models(published: Path, dataset: str, models: list[str]) -> dict[str, str]:
    """model -> what ``published`` lacks of it on ``dataset`` for the dataset to be complete (a
    result on every fold, cross-validation, or of every final fit, none failed or running); the
    models it has complete are left out. No published pages: every model, "no published pages"."""
    from harness.data import get_spec

    suite = get_spec(dataset).suite
    path = Path(published) / suite
    recs = read_records(published, suite) if path.is_dir() else {}
    rec = recs.get(dataset)
    if rec is None:
        return {model: "no published pages" for model in models}
    k = n_folds_of(rec["info"].get("split_scheme", ""))
    have = {r["model"]: r for r in rec["results"]}
    out = {}
    for model in models:
        r = have.get(model)
        if r is None or not finite(r["value"]):
            out[model] = "no result"
        elif r["n_failed"] or r["n_running"] or r["n_no_metric"] or (k and len(r["ok_splits"]) < k):
            out[model] = f"{len(r['ok_splits'])} fold(s), {r['n_ok']} of {r['n_fits']} fits"
    return out


def incomplete(published: Path, dataset: str, models: list[str]) -> list[str]:
    """:func:`lacking_models` as lines ``dataset / model: why`` (``dataset: no published pages``)."""
    lacks = lacking_models(published, dataset, models)
    if lacks and set(lacks.values()) == {"no published pages"}:
        return [f"{dataset}: no published pages"]
    return [f"{dataset} / {model}: {why}" for model, why in lacks.items()]


def models_to_run(published: Path, datasets: list[str], models: list[str], planned: list[str]) -> list[str]:
    """Which of a stage's ``models`` must run on its ``datasets`` for ``published`` to become complete.

    A dataset whose pages hold run data (``runs.json.gz``) takes models one by one
    (``harness.leaderboard.publishing``): only the models it lacks. Pages without run data are
    replaced as a whole, so there the new store needs every ``planned`` model of the dataset
    (all stages'), and this stage's models run unless the dataset is complete already."""
    from harness.data import get_spec
    from harness.leaderboard.rundata import RUNS

    todo: set[str] = set()
    for dataset in datasets:
        suite = get_spec(dataset).suite
        if (Path(published) / suite / slug(dataset) / RUNS).is_file():  # (records read once per dataset)
            todo |= set(lacking_models(published, dataset, models))
        elif incomplete(published, dataset, planned):
            todo |= set(models)
    return [m for m in models if m in todo]
