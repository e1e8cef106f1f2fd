"""A Matbench-submission-compatible ``results.json.gz`` per model, from the final runs.

The layout is what ``matbench.MatbenchBenchmark.to_file`` writes (matbench 0.6, benchmark
``matbench_v0.1``), gzip-compressed as the submissions in the matbench repository are::

    {"@module": "matbench.bench", "@class": "MatbenchBenchmark", "version": ...,
     "tasks": {"matbench_steels": {"@module": "matbench.task", "@class": "MatbenchTask",
                                   "benchmark_name": "matbench_v0.1", "dataset_name": ...,
                                   "results": {"fold_0": {"data": {mbid: prediction, ...},
                                                          "parameters": {...},
                                                          "scores": {"mae", "rmse", "mape", "max_error"}},
                                               ...}}},
     "user_metadata": {...}, "benchmark_name": "matbench_v0.1", "datestamp": ..., "hash": ...}

``hash`` is matbench's ``hash_dictionary``: sha256 of ``json.dumps`` of the recursively
key-sorted dictionary without the hash. Matbench's loader validates every task on load: all
five folds recorded, each fold's predictions keyed by exactly the official test mbids. So only
complete tasks go in (all 5 folds, the full data: no subsample, no dropped rows); the page
says which tasks were left out and why. One prediction per fold: that of the fold's final fit
with the lowest seed (Matbench records one model per fold); the leaderboard's own numbers
average all seeds. ``datestamp`` is the end time of the latest run used (not the clock), so
regeneration gives the same bytes.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import math

import numpy as np
import pandas as pd

from harness.leaderboard.store import OK
from harness.leaderboard.tables import SuiteTables, params_of

BENCHMARK = "matbench_v0.1"
MATBENCH_VERSION = "0.6"  # the matbench release whose validation file holds the official folds
N_FOLDS = 5
DATESTAMP_FMT = "%Y.%m.%d %H:%M.%S"


def immutify(d: dict) -> dict:
    """matbench.util.immutify_dictionary: keys sorted recursively, arrays as tuples."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.ndarray, pd.Series)):
            out[k] = tuple(v.tolist())
        elif isinstance(v, list):
            out[k] = tuple(v)
        elif isinstance(v, dict):
            out[k] = immutify(v)
        elif hasattr(v, "dtype"):
            out[k] = v.item()
        else:
            out[k] = v
    return dict(sorted(out.items(), key=lambda item: item[0]))


def hash_dictionary(d: dict) -> str:
    """matbench.util.hash_dictionary."""
    return hashlib.sha256(json.dumps(immutify(d)).encode("utf-8")).hexdigest()


def scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """matbench.data_ops.score_array for regression: mae, rmse, mape (|truth| > 1e-5), max_error."""
    truth, pred = np.asarray(truth, float), np.asarray(pred, float)
    err = pred - truth
    mask = np.abs(truth) > 1e-5
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(math.sqrt(np.mean(err ** 2))),
        "mape": float(np.mean(np.abs(err[mask] / truth[mask]))) if mask.any() else float("nan"),
        "max_error": float(np.max(np.abs(err))),
    }


def task_status(tables: SuiteTables, dataset: str, model: str) -> tuple[dict | None, str]:
    """(the task's results dict, "") when complete, else (None, why not)."""
    f = tables.data.finals
    runs = f[(f["dataset"] == dataset) & (f["model"] == model)]
    if runs.empty:
        return None, "no final runs"
    if any(s for s in runs["subsample"]):
        return None, f"subsample of {sorted(set(runs['subsample']))[0]} rows (Matbench needs every test id)"
    if any(d not in ("", "0") for d in runs["data_dropped"]):
        return None, "rows dropped by --drop-invalid"
    results, end = {}, []
    for k in range(N_FOLDS):
        fold = runs[(runs["split"] == f"fold{k}") & (runs["state"] == OK)]
        fold = fold[fold["run_id"].isin(tables.data.predictions.keys())]
        if fold.empty:
            missing = [j for j in range(N_FOLDS) if runs[(runs["split"] == f"fold{j}") & (runs["state"] == OK)].empty]
            return None, f"no successful fit with predictions for fold(s) {', '.join(map(str, missing)) or k}"
        fold = fold.assign(seed_num=[int(s) if str(s).isdigit() else 10 ** 9 for s in fold["seed"]])
        run = fold.sort_values(["seed_num", "run_id"]).iloc[0]
        pred = tables.data.predictions[run["run_id"]]
        results[f"fold_{k}"] = {
            "data": {str(i): float(p) for i, p in zip(pred["id"], pred["prediction"])},
            "parameters": {**params_of(run["params"]), "final_seed": str(run["seed"]),
                           "mlflow_run_id": run["run_id"]},
            "scores": scores(pred["target"].to_numpy(float), pred["prediction"].to_numpy(float)),
        }
        end.append(run["end_time"])
    return {"results": results, "end_time": max(end)}, ""


def task_block(dataset: str, results: dict) -> dict:
    return {"@module": "matbench.task", "@class": "MatbenchTask", "benchmark_name": BENCHMARK,
            "dataset_name": dataset, "results": results}


def store_blocks(tables: SuiteTables, model: str) -> tuple[dict[str, dict], dict[str, dict]]:
    """(the model's complete tasks as submission blocks, {(task): {"end_time": ms} or {"left": why}}) from the store."""
    blocks, status = {}, {}
    for dataset in tables.datasets:
        if not dataset.startswith("matbench_") or tables.get(dataset, model) is None:
            continue
        done, why = task_status(tables, dataset, model)
        if done is None:
            status[dataset] = {"left": why}
            continue
        blocks[dataset] = task_block(dataset, done["results"])
        status[dataset] = {"end_time": done["end_time"]}
    return blocks, status


def file_blocks(path) -> dict[str, dict]:
    """task -> its block, from a ``results.json.gz`` this module wrote."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)["tasks"]


def file_datestamp(path) -> float:
    """A ``results.json.gz``'s datestamp as epoch milliseconds (the end of the latest run used)."""
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        stamp = json.load(fh)["datestamp"]
    when = datetime.datetime.strptime(stamp, DATESTAMP_FMT).replace(tzinfo=datetime.timezone.utc)
    return when.timestamp() * 1000


def assemble(model: str, label: str, blocks: dict[str, dict], end_times: list[float], commits: set[str]) -> bytes:
    """The gzip bytes of one model's submission file made of ``blocks`` (task -> block)."""
    d = {
        "@module": "matbench.bench",
        "@class": "MatbenchBenchmark",
        "version": MATBENCH_VERSION,
        "tasks": immutify(blocks),
        "user_metadata": immutify({
            "algorithm": label,
            "harness_model": model,
            "git_commit": ", ".join(sorted(commits)),
            "note": "one prediction per fold: the final fit with the lowest seed; hyperparameters "
                    "searched on each fold's training data only (harness sweep)",
        }),
        "benchmark_name": BENCHMARK,
        "datestamp": datetime.datetime.fromtimestamp(max(end_times) / 1000, datetime.timezone.utc).strftime(DATESTAMP_FMT),
    }
    d["hash"] = hash_dictionary(d)
    raw = json.dumps(d).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(raw)
    return buf.getvalue()


def submission(tables: SuiteTables, model: str) -> tuple[bytes | None, list[str], dict[str, str]]:
    """(gzip bytes or None, tasks included, {task left out: why}) from the store."""
    blocks, status = store_blocks(tables, model)
    left_out = {d: s["left"] for d, s in status.items() if "left" in s}
    if not blocks:
        return None, [], left_out
    commits = {c for d in blocks for c in tables.get(d, model).git_commits}
    blob = assemble(model, tables.labels[model], blocks, [status[d]["end_time"] for d in blocks], commits)
    return blob, sorted(blocks), left_out
