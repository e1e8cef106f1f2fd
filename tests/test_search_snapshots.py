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
TRIALS = 4


def test_a_search_restored_beside_an_older_searcher_runs_exactly_its_trials(tmp_path: Path, monkeypatch):
    import ray
    from ray.air.execution._internal.actor_manager import RayActorManager

    from harness.tuning.restored_search import ReconciledSearchGenerator, snapshot_trials
    from harness.tuning.sweep import SweepOptions, SweepOutOfMemory, run_sweep

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")  # a snapshot at every step: each count is seen
    saved: list[tuple[int, Path]] = []  # (trials the generator had made, copy of the searcher files)
    original_save = ReconciledSearchGenerator.save_to_dir

    def keeping_copies(self, dirpath, session_str):
        original_save(self, dirpath, session_str)
        copy = tmp_path / "searcher-versions" / str(len(saved))
        copy.mkdir(parents=True)
        for pattern in SEARCHER_FILES:
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
    assert 1 <= made < TRIALS, f"the search should stop mid-way ({made} trials in its snapshot)"
    older = [copy for count, copy in saved if count == made - 1]
    assert older, f"no searcher snapshot with {made - 1} trials among {[c for c, _ in saved]}"
    for path in older[-1].iterdir():  # the torn copy: newer trial list, older searcher
        assert (experiment / path.name).exists()
        shutil.copy2(path, experiment / path.name)

    (outcome,) = run_sweep(SweepOptions(models=[], datasets=[], workdir=workdir), resume=True)

    assert outcome.completed + outcome.pruned + outcome.failed == TRIALS  # not TRIALS + 1
    assert len(outcome.test_mae) == 1 and outcome.test_mae[0] > 0
    client = MlflowClient(default_tracking_uri(workdir))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    counted = [r for r in runs if r.data.tags.get("stage") == "trial" and r.data.tags.get("trial_state") != "lost"]
    assert len(counted) == TRIALS and len({r.data.tags["trial_id"] for r in counted}) == TRIALS
    assert all(r.info.status == "FINISHED" for r in counted)
    # The trial the older searcher never saw still told Optuna its result: no trial left RUNNING.
    (study,) = optuna.get_all_study_summaries(f"sqlite:///{workdir / 'optuna.db'}")
    trials = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{workdir / 'optuna.db'}").trials
    assert all(t.state.is_finished() for t in trials), [t.state for t in trials]
    told = {t.user_attrs["ray_trial_id"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert {r.data.tags["trial_id"] for r in counted if r.data.tags["trial_state"] == "completed"} <= told
