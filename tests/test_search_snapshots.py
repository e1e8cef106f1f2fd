"""A search restored from a snapshot whose files disagree runs exactly its trials.

Ray Tune writes a search's trial list and its searcher as separate files and copies them to the
experiment directory in a background thread; a driver killed during the copy leaves a searcher
older than the trial list. In CI (2026-12-05) a 5-trial search, resumed after its driver was
SIGKILLed, then ran 6 trials. Real parts: Ray, Tune, Optuna, MLflow, the trials, the snapshot
files Ray wrote. The one stand-in: the test puts the older searcher files (copies of what Ray
itself wrote a few steps earlier) beside the newer trial list, as the torn copy does, because a
SIGKILL cannot be timed into the copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from harness.tuning.tracking import default_tracking_uri

pytestmark = pytest.mark.slow

SEARCHER_FILES = ("search_gen_state-*", "searcher-state-*")
TRIAL_LIST = "experiment_state-*"
TRIALS = 4


@pytest.mark.parametrize("torn", ["older searcher", "newer searcher"])
def test_a_search_restored_from_a_torn_snapshot_runs_exactly_its_trials(torn: str, tmp_path: Path, monkeypatch):
    """*older searcher*: the trial list as of the stop beside the searcher of one trial before
    (what CI hit: without the fix Tune runs TRIALS + 1 trials). *newer searcher*: the searcher as
    of the stop beside the trial list of one trial before (without the fix: TRIALS - 1 trials,
    the lost trial holding the only concurrency slot, and its Optuna trial left RUNNING)."""
    import ray
    from ray.air.execution._internal.actor_manager import RayActorManager

    from harness.tuning.restored_search import ReconciledSearchGenerator, snapshot_trials
    from harness.tuning.sweep import SweepOptions, SweepOutOfMemory, run_sweep

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")  # a snapshot at every step: each count is seen
    saved: list[tuple[int, Path]] = []  # (trials the generator had made, copy of the snapshot's files)
    original_save = ReconciledSearchGenerator.save_to_dir

    def keeping_copies(self, dirpath, session_str):
        original_save(self, dirpath, session_str)  # Tune wrote the trial list just before
        copy = tmp_path / "snapshots" / str(len(saved))
        copy.mkdir(parents=True)
        for pattern in (*SEARCHER_FILES, TRIAL_LIST):
            for path in Path(dirpath).glob(pattern):
                shutil.copy2(path, copy / path.name)
        saved.append((self._counter, copy))

    # Stop the search mid-way, its state saved: Ray's own handler meets an OutOfMemoryError for
    # the 5th task result, and with --max-failures 0 the sweep stops instead of restoring.
    resolved = []
    original_resolved = RayActorManager._actor_task_resolved

    def killed_once(self, tracked_actor_task, result):
        resolved.append(True)
        if len(resolved) == 5:
            oom = ray.exceptions.OutOfMemoryError("worker killed (handed in by the test)")
            return self._actor_task_failed(tracked_actor_task=tracked_actor_task, exception=oom)
        return original_resolved(self, tracked_actor_task, result)

    monkeypatch.setattr(ReconciledSearchGenerator, "save_to_dir", keeping_copies)
    monkeypatch.setattr(RayActorManager, "_actor_task_resolved", killed_once)
    workdir = tmp_path / "w"
    opts = SweepOptions(models=["ridge"], datasets=["aflow__ael_bulk_modulus_vrh"], num_samples=TRIALS,
                        max_epochs=2, final_seeds=1, workdir=workdir, subsample=300, sampler="random",
                        seed=0, num_cpus=1, max_failures=0)
    with pytest.raises(SweepOutOfMemory):
        run_sweep(opts)
    monkeypatch.setattr(RayActorManager, "_actor_task_resolved", original_resolved)

    (experiment,) = [p for p in (workdir / "ray_results").iterdir() if p.is_dir()]
    made = len(snapshot_trials(experiment))
    assert 2 <= made < TRIALS, f"the search should stop mid-way ({made} trials in its snapshot)"
    by_count = {count: copy for count, copy in saved}  # the last snapshot of each count
    assert {made - 1, made} <= set(by_count), f"snapshots seen: {[c for c, _ in saved]}"
    if torn == "older searcher":  # the trial list as of the stop, the searcher of one trial before
        _copy(by_count[made - 1], SEARCHER_FILES, experiment)
    else:  # the searcher as of the stop, the trial list of one trial before
        _copy(by_count[made], SEARCHER_FILES, experiment)
        _copy(by_count[made - 1], (TRIAL_LIST,), experiment)
    assert len(snapshot_trials(experiment)) == (made if torn == "older searcher" else made - 1)

    (outcome,) = run_sweep(SweepOptions(models=[], datasets=[], workdir=workdir), resume=True)

    assert outcome.completed + outcome.pruned + outcome.failed == TRIALS
    assert len(outcome.test_mae) == 1 and outcome.test_mae[0] > 0
    client = MlflowClient(default_tracking_uri(workdir))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    counted = [r for r in runs if r.data.tags.get("stage") == "trial" and r.data.tags.get("trial_state") != "lost"]
    assert len(counted) == TRIALS and len({r.data.tags["trial_id"] for r in counted}) == TRIALS
    assert all(r.info.status == "FINISHED" for r in counted)
    # Optuna: every trial told (the one the older searcher never saw told its result; the one
    # the restored trial list lost told FAIL), none left RUNNING.
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    (study,) = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=study.study_name, storage=storage).trials
    assert all(t.state.is_finished() for t in trials), [t.state for t in trials]
    told = {t.user_attrs["ray_trial_id"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert {r.data.tags["trial_id"] for r in counted if r.data.tags["trial_state"] == "completed"} <= told


def _copy(snapshot: Path, patterns, experiment: Path) -> None:
    """Put a snapshot's files over the experiment's own (same names: same Tune session)."""
    for pattern in patterns:
        for path in snapshot.glob(pattern):
            assert (experiment / path.name).exists()
            shutil.copy2(path, experiment / path.name)
