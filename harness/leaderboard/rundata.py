"""A dataset's runs beside its pages (``<suite>/<dataset>/runs.json.gz``): what its pages are made of.

Everything a dataset page, its plots and its record are computed from, read out of MLflow (the
:class:`~harness.leaderboard.store.SuiteData` rows of that dataset: final, search and trial runs
with their tags, params and metrics; the final fits' test predictions, train residuals and
learning curves; the trials' validation curves). With it, pages of one dataset can take each
model from a different store: a leaderboard job that starts again on a new machine publishes a
model once its new store holds it over as many folds/seeds as the committed pages (or it is new
there), and the dataset's page, ranks, paired test and plots are computed again over every model,
as one store holding all those runs would give them (``harness.leaderboard.publishing``).

``harness leaderboard`` itself writes pages this way too (store -> run data -> tables -> pages),
so pages made from one store and pages composed from run data are the same bytes.

Size: test predictions are kept exactly (the pooled MAE, the paired test and the Matbench
submission files use them); train predictions only feed the residual histograms, so they are
kept as residuals to 6 significant digits. Test targets are stored once per dataset.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd

from harness.leaderboard.records import plain
from harness.leaderboard.store import RUN_COLUMNS, SuiteData, _seed_key, _split_key

RUNS = "runs.json.gz"
FORMAT = 1
_EXTRA = {"finals": ["state", "test_mae"], "searches": [], "trials": ["epochs"]}
_NUMBER_COLUMNS = ("start_time", "end_time", "test_mae", "epochs")  # NaN in JSON as "nan"


def _number(value):  # NaN and infinities are written as strings (records.plain)
    return float(value) if isinstance(value, str) and value in ("nan", "inf", "-inf") else value


def _rows(frame: pd.DataFrame, dataset: str, extra: list[str]) -> list[dict]:
    if frame.empty:
        return []
    mine = frame[frame["dataset"] == dataset]
    return [{c: row[c] for c in RUN_COLUMNS + extra} for row in mine.to_dict("records")]


def _residuals(frame: pd.DataFrame) -> list[float]:
    values = frame["residual"] if "residual" in frame else frame["prediction"] - frame["target"]
    return [float(f"{v:.6g}") for v in values.to_numpy(float)]


def runs_of(data: SuiteData, dataset: str) -> dict:
    """The run data of one dataset of ``data``."""
    finals = _rows(data.finals, dataset, _EXTRA["finals"])
    trials = _rows(data.trials, dataset, _EXTRA["trials"])
    final_ids = [r["run_id"] for r in finals]
    targets: dict[str, float] = {}
    predictions = {}
    for run_id in final_ids:
        frame = data.predictions.get(run_id)
        if frame is None:
            continue
        ids = frame["id"].astype(str).tolist()
        entry = {"id": ids, "prediction": frame["prediction"].astype(float).tolist()}
        values = frame["target"].astype(float).tolist()
        if all(targets.setdefault(i, v) == v for i, v in zip(ids, values)):
            predictions[run_id] = entry
        else:  # another version of the data: this run keeps its own targets
            predictions[run_id] = {**entry, "target": values}
    return {
        "format": FORMAT, "suite": data.suite, "dataset": dataset,
        "pairs": data.pairs[data.pairs["dataset"] == dataset].to_dict("records"),
        "finals": finals,
        "searches": _rows(data.searches, dataset, _EXTRA["searches"]),
        "trials": trials,
        "targets": targets,
        "predictions": predictions,
        "train_residuals": {r: _residuals(data.train_predictions[r]) for r in final_ids if r in data.train_predictions},
        "histories": {r: data.histories[r].to_dict("list") for r in final_ids if r in data.histories},
        "trial_curves": {r["run_id"]: data.trial_curves[r["run_id"]].to_dict("list")
                         for r in trials if r["run_id"] in data.trial_curves},
    }


def runs_bytes(runs: dict) -> bytes:
    """gzip'd JSON, the same bytes for the same runs (no timestamp in the gzip header)."""
    text = json.dumps(plain(runs, nan="nan"), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0)


def load_runs_bytes(blob: bytes, where: str = RUNS) -> dict:
    runs = json.loads(gzip.decompress(blob).decode("utf-8"))
    if runs.get("format") != FORMAT:
        raise ValueError(f"{where}: run data format {runs.get('format')!r}, this harness reads {FORMAT}")
    return runs


def empty(suite: str, dataset: str) -> dict:
    """Run data of a dataset with no run."""
    return {"format": FORMAT, "suite": suite, "dataset": dataset, "pairs": [], "finals": [], "searches": [],
            "trials": [], "targets": {}, "predictions": {}, "train_residuals": {}, "histories": {}, "trial_curves": {}}


def only_models(runs: dict, models: set[str]) -> dict:
    """``runs`` restricted to ``models`` (their pairs, runs, predictions and curves)."""
    keep = lambda rows: [r for r in rows if r["model"] in models]  # noqa: E731
    finals, trials = keep(runs["finals"]), keep(runs["trials"])
    final_ids, trial_ids = {r["run_id"] for r in finals}, {r["run_id"] for r in trials}
    pick = lambda d, ids: {k: v for k, v in d.items() if k in ids}  # noqa: E731
    predictions = pick(runs["predictions"], final_ids)
    used = {i for p in predictions.values() for i in p["id"]}
    return {**runs, "pairs": keep(runs["pairs"]), "finals": finals, "searches": keep(runs["searches"]),
            "trials": trials, "predictions": predictions,
            "targets": {i: v for i, v in runs["targets"].items() if i in used},
            "train_residuals": pick(runs["train_residuals"], final_ids),
            "histories": pick(runs["histories"], final_ids), "trial_curves": pick(runs["trial_curves"], trial_ids)}


def _frame(rows: list[dict], extra: list[str]) -> pd.DataFrame:
    restored = []
    for row in rows:
        row = dict(row)
        row["metrics"] = {k: _number(v) for k, v in row["metrics"].items()}
        for c in _NUMBER_COLUMNS:
            if c in row:
                row[c] = _number(row[c])
        restored.append(row)
    frame = pd.DataFrame(restored, columns=RUN_COLUMNS + extra)
    if frame.empty:
        return frame
    # the order load_suite gives: dataset, model, split, seed, start time, run id
    keys = pd.DataFrame({"dataset": frame["dataset"], "model": frame["model"],
                         "split": frame["split"].map(_split_key), "seed": frame["seed"].map(_seed_key),
                         "start": frame["start_time"], "run": frame["run_id"]})
    order = keys.sort_values(list(keys.columns), kind="mergesort").index
    return frame.loc[order].reset_index(drop=True)


def suite_data(suite: str, parts: list[dict]) -> SuiteData:
    """One :class:`SuiteData` of the run data of several datasets (or of parts of one dataset)."""
    pairs = pd.DataFrame([p for part in parts for p in part["pairs"]], columns=["dataset", "model", "sweep_id", "model_label"])
    pairs = pairs.sort_values(["dataset", "model"], kind="mergesort").reset_index(drop=True)
    data = SuiteData(suite, "", _frame([r for p in parts for r in p["finals"]], _EXTRA["finals"]),
                     _frame([r for p in parts for r in p["searches"]], _EXTRA["searches"]),
                     _frame([r for p in parts for r in p["trials"]], _EXTRA["trials"]), pairs)
    for part in parts:
        for run_id, p in part["predictions"].items():
            targets = p.get("target") or [part["targets"][i] for i in p["id"]]
            data.predictions[run_id] = pd.DataFrame({"id": p["id"], "target": np.asarray(targets, float),
                                                     "prediction": np.asarray(p["prediction"], float)})
        for run_id, values in part["train_residuals"].items():
            data.train_predictions[run_id] = pd.DataFrame({"residual": np.asarray(values, float)})
        for run_id, h in part["histories"].items():
            data.histories[run_id] = pd.DataFrame({k: [_number(v) for v in vals] for k, vals in h.items()})
        for run_id, c in part["trial_curves"].items():
            data.trial_curves[run_id] = pd.DataFrame({k: [_number(v) for v in vals] for k, vals in c.items()})
    return data


def round_trip(data: SuiteData) -> SuiteData:
    """``data`` as its datasets' run data give it back: what pages are made of, from a store or from run data."""
    return suite_data(data.suite, [runs_of(data, d) for d in data.datasets])
