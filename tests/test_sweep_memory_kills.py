"""Ray's memory monitor killing trial workers (the node above its memory threshold) must not
crash the sweep: the killed trials are retried, and a search whose every trial was killed stops
the sweep with its state saved (or, when Tune raises instead, the search is restored and
retried, and then stops the same way); nothing ends in a traceback. ``--resume`` on a healthy
node then runs the search to its end.

Real parts: the embedded Ray's own memory monitor does the killing. Its threshold is set to 1 %
of the node's memory for the first run (``RAY_memory_usage_threshold``), so every trial worker is
killed as soon as the monitor looks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness.tuning.tracking import default_tracking_uri

pytestmark = pytest.mark.slow


def _sweep(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "sweep", *args]


def test_trial_workers_killed_for_memory_stop_the_sweep_cleanly_and_resume_finishes(tmp_path: Path):
    workdir = tmp_path / "w"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "250"}
    starved = {**env, "RAY_memory_usage_threshold": "0.01", "RAY_memory_monitor_refresh_ms": "100"}
    first = subprocess.run(
        _sweep("--models", "ridge", "--datasets", "aflow__ael_bulk_modulus_vrh", "--subsample", "300",
               "--num-samples", "2", "--max-epochs", "1", "--final-seeds", "1", "--workdir", str(workdir),
               "--num-cpus", "1", "--seed", "0", "--max-failures", "1", "--reuse-actors"),
        capture_output=True, text=True, env=starved, timeout=600)
    out = " ".join((first.stdout + first.stderr).split())
    # Whether Ray reports such a kill as an actor error (Tune retries, then fails the trial) or as
    # an OutOfMemoryError from an actor task (Tune raises; harness restores the search, see
    # search._fit_surviving_memory_kills), the sweep stops by its own message, state saved, and
    # says to resume. (Ray itself logs each killed trial's traceback: the sweep's ending counts.)
    assert first.returncode == 1, out[-4000:]
    ended = out.rsplit("Trial task failed", 1)[-1]
    assert ("ridge/aflow__ael_bulk_modulus_vrh/fixed: Ray killed the worker of every trial (2) for memory" in ended
            or "ridge/aflow__ael_bulk_modulus_vrh/fixed: Ray killed this search's trial workers for memory 2 times"
            in ended), out[-4000:]
    assert f"harness sweep --resume {workdir}" in ended
    (state,) = [json.loads(p.read_text()) for p in (workdir / "searches").glob("*.json")]
    assert state["stage"] == "searching"  # not judged on trials the node killed
    # --resume on a healthy node (the memory monitor leaves it alone) runs the search to its end
    done = subprocess.run(_sweep("--resume", str(workdir)), capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (state,) = [json.loads(p.read_text()) for p in (workdir / "searches").glob("*.json")]
    assert state["stage"] == "done" and "best_params" in state and state["trials"]["completed"] == 2
    client = MlflowClient(default_tracking_uri(workdir))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    finals = [r for r in runs if r.data.tags.get("stage") == "final"]
    assert len(finals) == 1 and finals[0].info.status == "FINISHED" and finals[0].data.metrics["test_mae"] > 0
    trials = [r for r in runs if r.data.tags.get("stage") == "trial"]
    counted = [r for r in trials if r.data.tags.get("trial_state") != "lost"]
    assert len(counted) == 2 and all(r.info.status == "FINISHED" for r in counted)
    # the killed trials' runs stay, closed, with Ray's reason, not counted as the search's trials
    # (none when the kills took the crash path: the restored search kept those trials' runs)
    killed = [r for r in trials if r.data.tags.get("trial_state") == "lost"]
    assert all(r.info.status != "RUNNING" and "running low on memory" in r.data.tags.get("error", "") for r in killed)


def test_a_memory_kill_raised_out_of_tune_restores_the_search_and_it_finishes(tmp_path: Path, monkeypatch, capfd):
    """The crash path itself, which the 1 % threshold above does not reliably produce: Ray's actor
    manager meeting an ``OutOfMemoryError`` for an actor task and raising "Caught unexpected
    exception" out of ``Tuner.fit`` in the middle of a search, trials still running (seen in a
    real 2-core run). The one stand-in: the test hands Ray's own ``_actor_task_failed`` that
    error in place of the third task result (Ray's kill cannot be timed); the exception, where
    it is raised, the restore, the continued search, the final fit and the records are real."""
    import ray
    from ray.air.execution._internal.actor_manager import RayActorManager

    from harness.tuning.sweep import SweepOptions, run_sweep

    resolved = []
    original = RayActorManager._actor_task_resolved

    def killed_once(self, tracked_actor_task, result):
        resolved.append(True)
        if len(resolved) == 3:
            oom = ray.exceptions.OutOfMemoryError("2 worker(s) were killed due to the node running low on memory "
                                                  "(handed in by the test)")
            return self._actor_task_failed(tracked_actor_task=tracked_actor_task, exception=oom)
        return original(self, tracked_actor_task, result)

    monkeypatch.setattr(RayActorManager, "_actor_task_resolved", killed_once)
    workdir = tmp_path / "w"
    (outcome,) = run_sweep(SweepOptions(
        models=["ridge"], datasets=["aflow__ael_bulk_modulus_vrh"], num_samples=3, max_epochs=2, final_seeds=1,
        workdir=workdir, subsample=300, sampler="random", seed=0, num_cpus=1, max_failures=1))
    printed = "".join(capfd.readouterr())
    assert "continuing the search from its saved state (1 of 1)" in printed
    # a trial restored without results yet is run again, not reported as a failure (CI printed one)
    assert "Failed to fetch metrics" not in printed
    assert len(resolved) > 3  # the search went on after the injected kill
    assert outcome.completed + outcome.pruned + outcome.failed == 3
    assert len(outcome.test_mae) == 1 and outcome.test_mae[0] > 0
    client = MlflowClient(default_tracking_uri(workdir))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    trials = [r for r in runs if r.data.tags.get("stage") == "trial"]
    # A trial started after Ray's last snapshot is not in the restored search (Ray runs another
    # in its place): its run is closed and tagged lost, not counted (CI 2026-12-05: 4 runs, 3 kept).
    lost = [r for r in trials if r.data.tags.get("trial_state") == "lost"]
    assert len(lost) <= 1 and all(r.info.status in ("KILLED", "FINISHED") for r in lost)
    counted = [r for r in trials if r.data.tags.get("trial_state") != "lost"]
    assert len(counted) == 3  # no duplicate run for the trial that was running when it happened
    assert len({r.data.tags["trial_id"] for r in counted}) == 3
