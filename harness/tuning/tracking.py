"""MLflow bookkeeping: store set-up, run tags, per-trial child runs, final-evaluation runs.

All MLflow writes happen in the driver (through a Tune callback and after final fits), so
workers never touch the store and a sqlite file is never written by two processes. Metrics go
out with ``log_batch`` (one call per epoch, not one per metric). The trial -> run mapping is
kept in the experiment directory so that a resumed sweep continues the same runs instead of
duplicating them (Ray's ``MLflowLoggerCallback`` keeps no such state).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from harness.provenance import git_commit, package_versions

EXPERIMENT = "harness"
MAX_PARAM_LEN = 6000  # MLflow's limit for a param value

# Result keys Ray adds to every report; not ours to log as metrics.
_RAY_KEYS = {
    "time_this_iter_s", "time_total_s", "timestamp", "training_iteration", "time_since_restore",
    "iterations_since_restore", "timesteps_total", "episodes_total", "pid", "done",
    "timesteps_since_restore", "checkpoint_dir_name",
}


def default_tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def prepare_store(tracking_uri: str, workdir: Path, experiment: str = EXPERIMENT) -> str:
    """Create the schema (once, here in the driver) and the experiment; return its id.

    Concurrent first use of a fresh sqlite file fails schema migration, so this must run
    before any trial starts. Artifacts of a sqlite store go under ``<workdir>/mlartifacts``.
    """
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:"):
        location = (Path(workdir).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(experiment, artifact_location=location)


def provenance_tags() -> dict[str, str]:
    tags = {"harness_version": package_versions()["harness"], "git_commit": git_commit()}
    tags.update({f"version.{k}": v for k, v in package_versions().items()})
    return tags


def flatten(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(f"{name}.", value))
        else:
            out[name] = str(value)[:MAX_PARAM_LEN]
    return out


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in result.items():
        if key in _RAY_KEYS or key == "config" or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int) -> None:
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])


class TrialRunLogger(tune.Callback):
    """One MLflow child run per Tune trial, under the search's parent run."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        tags: dict[str, str],
        mapping_file: Path,
        finished_key: str,
        error_key: str = "trial_error",
        kept_runs: Iterable[str] = (),
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.tags = tags
        self.mapping_file = Path(mapping_file)
        self.finished_key = finished_key
        self.error_key = error_key
        self._load_state()
        # Trial runs of a search's experiments before a --retry-failed: they keep what they
        # recorded (see on_experiment_end).
        self.kept_runs = frozenset(kept_runs)

    def _load_state(self) -> None:
        self.runs: dict[str, str] = (
            json.loads(self.mapping_file.read_text()) if self.mapping_file.exists() else {}
        )
        self._client: MlflowClient | None = None
        self._last_step: dict[str, int] = {}  # trial -> last epoch already in MLflow
        self._nodes: dict[str, list[str]] = {}
        self._trained_on: dict[str, str] = {}  # trial id -> the trained_on tag already logged
        self._closed: dict[str, bool] = {}  # trial -> its run is already terminated

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    def __setstate__(self, state: dict) -> None:
        # Tuner.restore brings back the callback as it was pickled when the sweep started;
        # the trial -> run mapping on disk is the current truth.
        self.__dict__.update(state)
        self.__dict__.setdefault("kept_runs", frozenset())  # pickled before the attribute existed
        self._load_state()

    def _save_mapping(self) -> None:
        tmp = self.mapping_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.runs, indent=1, sort_keys=True))
        os.replace(tmp, self.mapping_file)

    def run_id(self, trial) -> str:
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        tags = {
            **self.tags,
            "mlflow.parentRunId": self.parent_run_id,
            "mlflow.runName": f"{self.tags.get('model')}-{trial.trial_id}",
            "stage": "trial",
            "trial_id": trial.trial_id,
            "trial_state": "running",
        }
        run = self.client.create_run(self.experiment_id, tags=tags)
        params = flatten("", {k: v for k, v in trial.config.items()})
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        self.runs[trial.trial_id] = run.info.run_id
        # A run made in this driver session is open and empty: no need to ask the server.
        self._closed[trial.trial_id] = False
        self._last_step[trial.trial_id] = 0
        self._save_mapping()
        return run.info.run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self.run_id(trial)

    def _logged_until(self, trial_id: str, run_id: str) -> int:
        """Last epoch of this run already in MLflow (after a restore, epochs since the last
        checkpoint are trained again; they are not logged twice)."""
        if trial_id not in self._last_step:
            history = self.client.get_metric_history(run_id, "val_mae")
            self._last_step[trial_id] = max((m.step for m in history), default=0)
        return self._last_step[trial_id]

    def _is_closed(self, trial_id: str, run_id: str) -> bool:
        """A run already terminated is final. After a driver was killed between closing a run
        and Ray's next snapshot, Ray may replay that trial; MLflow keeps what it recorded."""
        if trial_id not in self._closed:
            self._closed[trial_id] = self.client.get_run(run_id).info.status != "RUNNING"
        return self._closed[trial_id]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.run_id(trial)
        if self._is_closed(trial.trial_id, run_id):
            return
        tags = []
        node = result.get("node_id")
        nodes = self._nodes.setdefault(trial.trial_id, [])
        if isinstance(node, str) and node not in nodes:
            nodes.append(node)
            tags.append(RunTag("node_ids", ",".join(nodes)))
        trained_on = result.get("trained_on")
        if isinstance(trained_on, str) and trained_on != self._trained_on.get(trial.trial_id):
            self._trained_on[trial.trial_id] = trained_on
            tags.append(RunTag("trained_on", trained_on))
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = {} if self.error_key in result else numeric_metrics(result)
        if step <= self._logged_until(trial.trial_id, run_id):
            metrics = {}
        if metrics or tags:
            # one request per epoch: the metrics and any new tag together
            now = int(time.time() * 1000)
            self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()],
                                  tags=tags)
        if metrics:
            self._last_step[trial.trial_id] = step

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        if self._is_closed(trial.trial_id, run_id):
            return
        self._closed[trial.trial_id] = True
        last = trial.last_result or {}
        if self.error_key in last:
            self.client.log_batch(run_id, tags=[
                RunTag("trial_state", "failed"), RunTag("error", str(last[self.error_key])[:5000]),
            ])
            self.client.set_terminated(run_id, "FAILED")
            return
        state = "completed" if last.get(self.finished_key) else "pruned"
        self.client.log_batch(run_id, tags=[RunTag("trial_state", state)])
        self.client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.run_id(trial)
        if self._is_closed(trial.trial_id, run_id):
            return
        self._closed[trial.trial_id] = True
        reason = _error_text(trial)
        self.client.log_batch(
            run_id,
            tags=[RunTag("trial_state", "failed"), RunTag("error", reason[:5000])],
        )
        self.client.set_terminated(run_id, "FAILED")

    def on_experiment_end(self, trials, **info):
        """Mark the runs of trials this experiment no longer has as ``trial_state`` ``lost``.

        A trial started after Ray's last experiment snapshot is not restored when a killed driver
        resumes (Ray runs a fresh trial in its place, and the restored searcher never saw its
        result). If its run is still RUNNING it would stay so for ever and show as a running trial
        on the pages: it is closed as KILLED. If it had already finished (a short trial can start
        and end between two snapshots, which come at most every 10 s), MLflow keeps what it
        recorded, status and metrics, but the run is tagged ``lost`` too: the search that resumed
        does not count it, so it is not one of the search's trials.

        The ``kept_runs``, trials of the experiments before a --retry-failed, keep what they
        recorded (failed trials stay failed: they ran, and failed); one still RUNNING is closed
        as lost. (The runs of an experiment every trial of which was killed for memory are
        tagged lost: the node's trouble, not the search's trials.)

        The runs are read from MLflow (this search's trial runs), not only from the trial -> run
        mapping: a driver killed between creating a trial's run and saving the mapping leaves a
        run the mapping does not name, and the trial, if restored, gets a second one.
        """
        current = {t.trial_id: self.runs.get(t.trial_id) for t in trials}
        for run in self._trial_runs():
            run_id, trial_id = run.info.run_id, run.data.tags.get("trial_id")
            if current.get(trial_id) == run_id or (run_id in self.kept_runs and run.info.status != "RUNNING"):
                continue
            if run.info.status == "RUNNING":
                self._closed[trial_id] = True
                self.client.log_batch(run_id, tags=[RunTag("trial_state", "lost"), RunTag("error", _LOST_RUNNING)])
                self.client.set_terminated(run_id, "KILLED")
            elif run.data.tags.get("trial_state") != "lost":
                tags = [RunTag("trial_state", "lost")]
                if "error" not in run.data.tags:
                    tags.append(RunTag("error", _LOST_FINISHED))
                self.client.log_batch(run_id, tags=tags)

    def _trial_runs(self) -> list:
        """This search's trial runs in MLflow (all pages)."""
        query = f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and tags.stage = 'trial'"
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], query, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs


MEMORY_KILL = "running low on memory"  # in Ray's message when its memory monitor kills a worker

_LOST_RUNNING = ("lost when the sweep's driver was killed before Ray saved the trial; "
                 "the resumed search ran another trial in its place")
_LOST_FINISHED = ("finished after Ray's last snapshot of the search, then the sweep's driver was killed: "
                  "the resumed search did not count it and ran another trial in its place")


def _error_text(trial) -> str:
    """The last lines of the trial's error, for the run's ``error`` tag."""
    path = getattr(trial, "error_file", None) or ""
    try:
        if path and Path(path).is_file():
            lines = Path(path).read_text().strip().splitlines()
            # Ray's memory-monitor kill ends in a table of processes: its reason line comes first
            reason = [line for line in lines if MEMORY_KILL in line][-1:]
            return "\n".join(reason + lines[-6:])
    except OSError:
        pass
    return str(getattr(trial, "error_msg", "") or "unknown error")
