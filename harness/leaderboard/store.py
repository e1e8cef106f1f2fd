"""Read what a leaderboard needs out of MLflow (the only source of truth).

For one suite: the final runs (``stage=final``), the search parent runs (``stage=search``)
and the trial runs (``stage=trial``) of each (dataset, model)'s latest sweep, the test
predictions of the final runs (``predictions_test.csv``; ``predictions_train.csv`` too when a
sweep logged it), the final runs' per-epoch history (``epoch_*`` metrics) and the trials'
``val_mae`` curves. Everything is sorted, so two reads of the same store give equal frames.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

# What a final run's state means for the tables.
OK = "ok"  # finished with a test MAE
NO_METRIC = "no test_mae"  # finished, but the metric is not in the store
FAILED = "failed"  # FAILED or KILLED
RUNNING = "running"  # not terminated (still running, or its driver died)

TEST_PREDICTIONS = "predictions_test.csv"
TRAIN_PREDICTIONS = "predictions_train.csv"
HISTORY_METRICS = ("epoch_train_mae", "epoch_val_mae")


def search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=5000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def experiment_ids(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def _float(value) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def _seed_key(seed: str):
    try:
        return (0, int(seed), "")
    except (TypeError, ValueError):
        return (1, 0, str(seed))


def _split_key(split: str):
    if split.startswith("fold") and split[4:].isdigit():
        return (1, int(split[4:]), split)
    return (0, 0, split)


@dataclass
class SuiteData:
    """Everything one suite's pages are built from."""

    suite: str
    tracking_uri: str
    finals: pd.DataFrame  # one row per final run of the chosen sweeps
    searches: pd.DataFrame  # one row per search parent run of the chosen sweeps
    trials: pd.DataFrame  # one row per trial run of the chosen sweeps
    pairs: pd.DataFrame  # one row per (dataset, model) that has any run: sweep_id, label
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)  # final run -> test predictions
    train_predictions: dict[str, pd.DataFrame] = field(default_factory=dict)
    histories: dict[str, pd.DataFrame] = field(default_factory=dict)  # final run -> epoch, train_mae, val_mae
    trial_curves: dict[str, pd.DataFrame] = field(default_factory=dict)  # trial run -> epoch, val_mae

    @property
    def datasets(self) -> list[str]:
        return sorted(self.pairs["dataset"].unique(), key=str.lower) if not self.pairs.empty else []

    @property
    def models(self) -> list[str]:
        if self.pairs.empty:
            return []
        labels = self.labels
        return sorted(labels, key=lambda m: (labels[m].lower(), m))

    @property
    def labels(self) -> dict[str, str]:
        if self.pairs.empty:
            return {}
        return dict(zip(self.pairs["model"], self.pairs["model_label"]))


RUN_COLUMNS = [
    "run_id", "status", "start_time", "end_time", "stage", "dataset", "model", "model_label", "split",
    "split_scheme", "seed", "sweep_id", "unit", "target", "hardware", "git_commit", "harness_version",
    "max_epochs", "num_samples", "subsample", "data_rows", "data_dropped", "data_sha256", "input_kind",
    "trial_state", "trial_id", "trained_on", "error", "final_status", "parent_run_id", "metrics", "params",
    "dataset_options",
]


def _run_row(run) -> dict:
    tags, info = run.data.tags, run.info
    return {
        "run_id": info.run_id,
        "status": info.status,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "stage": tags.get("stage", ""),
        "dataset": tags.get("dataset", ""),
        "model": tags.get("model", ""),
        "model_label": tags.get("model_label") or tags.get("model", ""),
        "split": tags.get("split", ""),
        "split_scheme": tags.get("split_scheme", ""),
        "seed": tags.get("seed", ""),
        "sweep_id": tags.get("sweep_id", ""),
        "unit": tags.get("unit", ""),
        "target": tags.get("target", ""),
        "hardware": tags.get("hardware", ""),
        "git_commit": tags.get("git_commit", ""),
        "harness_version": tags.get("harness_version", ""),
        "max_epochs": tags.get("max_epochs", ""),
        "num_samples": tags.get("num_samples", ""),
        "subsample": tags.get("data_subsample", ""),
        "data_rows": tags.get("data_rows", ""),
        "data_dropped": tags.get("data_dropped", ""),
        "data_sha256": tags.get("data_sha256", ""),
        "input_kind": tags.get("input_kind", ""),
        "trial_state": tags.get("trial_state", ""),
        "trial_id": tags.get("trial_id", ""),
        "trained_on": tags.get("trained_on", ""),
        "error": tags.get("error", ""),
        "final_status": tags.get("final_status", ""),
        "parent_run_id": tags.get("mlflow.parentRunId", ""),
        "metrics": dict(run.data.metrics),
        "params": dict(run.data.params),
        "dataset_options": tags.get("dataset_options", ""),  # a user's file: how the sweep loaded it
    }


def _state(row) -> str:
    if row["status"] in ("FAILED", "KILLED"):
        return FAILED
    if row["status"] != "FINISHED":
        return RUNNING
    return OK if math.isfinite(_float(row["metrics"].get("test_mae"))) else NO_METRIC


def _choose_sweeps(rows: pd.DataFrame) -> pd.DataFrame:
    """(dataset, model) -> the latest sweep that has final runs, else the latest with any run."""
    out = []
    for (dataset, model), group in rows.groupby(["dataset", "model"], sort=True):
        finals = group[group["stage"] == "final"]
        chosen = (finals if not finals.empty else group)["sweep_id"].max()
        labels = group[group["sweep_id"] == chosen]["model_label"]
        out.append({"dataset": dataset, "model": model, "sweep_id": chosen,
                    "model_label": sorted(labels)[0] if len(labels) else model})
    return pd.DataFrame(out, columns=["dataset", "model", "sweep_id", "model_label"])


def load_suite(tracking_uri: str, suite: str, with_artifacts: bool = True) -> SuiteData:
    """Read one suite out of the store (``with_artifacts=False``: tags and metrics only)."""
    client = MlflowClient(tracking_uri)
    experiments = experiment_ids(client)
    runs = search_all(client, experiments, f"tags.suite = '{_quote(suite)}'") if experiments else []
    rows = pd.DataFrame([_run_row(r) for r in runs if r.data.tags.get("stage") in ("final", "search", "trial")],
                        columns=RUN_COLUMNS)
    pairs = _choose_sweeps(rows)
    keep = rows.merge(pairs[["dataset", "model", "sweep_id"]], on=["dataset", "model", "sweep_id"])
    keep["split_key"] = keep["split"].map(_split_key)
    keep["seed_key"] = keep["seed"].map(_seed_key)
    keep = keep.sort_values(["dataset", "model", "split_key", "seed_key", "start_time", "run_id"],
                            kind="mergesort").reset_index(drop=True)
    finals = keep[keep["stage"] == "final"].reset_index(drop=True)
    finals["state"] = pd.Series([_state(r) for _, r in finals.iterrows()], dtype=object)
    finals["test_mae"] = [_float(m.get("test_mae")) for m in finals["metrics"]]
    searches = keep[keep["stage"] == "search"].reset_index(drop=True)
    trials = keep[keep["stage"] == "trial"].reset_index(drop=True)
    trials["epochs"] = [_float(m.get("epoch")) for m in trials["metrics"]]
    data = SuiteData(suite, tracking_uri, finals, searches, trials, pairs)
    if with_artifacts:
        _load_artifacts(client, data)
    return data


def _read_csv_artifact(client: MlflowClient, run_id: str, name: str, where: Path) -> pd.DataFrame | None:
    try:
        names = {f.path for f in client.list_artifacts(run_id)}
    except Exception:  # an artifact store that cannot be listed: treat as "not logged"
        return None
    if name not in names:
        return None
    local = client.download_artifacts(run_id, name, str(where))
    frame = pd.read_csv(local, dtype={"id": str})
    if not {"id", "target", "prediction"} <= set(frame.columns):
        return None
    return frame


def _load_artifacts(client: MlflowClient, data: SuiteData) -> None:
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file, else
    with tempfile.TemporaryDirectory() as tmp:
        for k, row in data.finals.iterrows():
            run_id = row["run_id"]
            where = Path(tmp) / run_id
            where.mkdir()
            if row["status"] == "FINISHED":
                for name, store in ((TEST_PREDICTIONS, data.predictions), (TRAIN_PREDICTIONS, data.train_predictions)):
                    frame = _read_csv_artifact(client, run_id, name, where)
                    if frame is not None:
                        store[run_id] = frame
            history = {}
            for metric in HISTORY_METRICS:
                if metric in row["metrics"]:
                    points = client.get_metric_history(run_id, metric)
                    history[metric] = {m.step: m.value for m in points}
            if history:
                steps = sorted(set().union(*[set(h) for h in history.values()]))
                data.histories[run_id] = pd.DataFrame({
                    "epoch": steps,
                    **{m.removeprefix("epoch_"): [history.get(m, {}).get(s, np.nan) for s in steps]
                       for m in HISTORY_METRICS},
                })
    for _, row in data.trials.iterrows():
        if "val_mae" in row["metrics"]:
            points = sorted((m.step, m.value) for m in client.get_metric_history(row["run_id"], "val_mae"))
            data.trial_curves[row["run_id"]] = pd.DataFrame(points, columns=["epoch", "val_mae"])


def suites_in_store(tracking_uri: str) -> list[str]:
    client = MlflowClient(tracking_uri)
    experiments = experiment_ids(client)
    if not experiments:
        return []
    suites = set()
    for stage in ("final", "search"):  # a suite whose searches all failed still gets a page
        suites |= {run.data.tags.get("suite", "") for run in search_all(client, experiments, f"tags.stage = '{stage}'")}
    return sorted(s for s in suites if s)
