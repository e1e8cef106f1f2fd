"""Search-space loading, the truthful Optuna searcher, and sweep helpers (a few on an embedded Ray)."""

from __future__ import annotations

import json
import os

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune

from harness.models import get_model
from harness.tuning.optuna_search import FINISHED_KEY, TruthfulOptunaSearch, make_sampler
from harness.tuning.space import SearchSpaceError, load_space


def _searcher(storage: str) -> TruthfulOptunaSearch:
    searcher = TruthfulOptunaSearch(
        sampler=make_sampler("tpe", 0), storage=optuna.storages.RDBStorage(storage), study_name="s", seed=0
    )
    searcher.set_search_properties("best_val_mae", "min", {"x": tune.uniform(0.0, 1.0)})
    return searcher


def test_scheduler_stopped_trial_is_pruned_with_its_intermediate_values(tmp_path):
    searcher = _searcher(f"sqlite:///{tmp_path / 'o.db'}")
    for trial_id in ("a", "b", "c"):
        assert 0.0 <= searcher.suggest(trial_id)["x"] <= 1.0
    # a: runs all 3 epochs and says so; b: stopped by ASHA after epoch 1; c: raised.
    for epoch, value in enumerate([0.9, 0.5, 0.3], start=1):
        searcher.on_trial_result("a", {"best_val_mae": value, "training_iteration": epoch})
    searcher.on_trial_complete("a", {"best_val_mae": 0.3, "training_iteration": 3, FINISHED_KEY: True})
    searcher.on_trial_result("b", {"best_val_mae": 2.0, "training_iteration": 1})
    searcher.on_trial_complete("b", {"best_val_mae": 2.0, "training_iteration": 1})
    searcher.on_trial_complete("c", None, error=True)

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'o.db'}")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]
    assert trials[0].value == pytest.approx(0.3)
    assert trials[0].intermediate_values == {1: 0.9, 2: 0.5, 3: 0.3}
    # Optuna records a pruned trial's last intermediate value as its value
    assert trials[1].intermediate_values == {1: 2.0}
    assert study.best_value == pytest.approx(0.3)


def test_resumed_searcher_does_not_report_an_epoch_twice(tmp_path):
    # Ray snapshots the searcher now and then; a resumed sweep restores the last snapshot, and its
    # restored trials report again the epochs Optuna already holds. They are skipped silently
    # (Optuna would warn once per epoch and keep the first value anyway).
    import warnings

    storage = f"sqlite:///{tmp_path / 'o.db'}"
    first = _searcher(storage)
    first.suggest("a")
    for epoch, value in [(1, 0.9), (2, 0.5)]:
        first.on_trial_result("a", {"best_val_mae": value, "training_iteration": epoch})
    first.save(str(tmp_path / "searcher.pkl"))  # the trial's checkpoint is older: it redoes epochs 1-2

    resumed = _searcher(storage)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a duplicate report would raise here
        for epoch, value in [(1, 0.9), (2, 0.5), (3, 0.4)]:
            resumed.on_trial_result("a", {"best_val_mae": value, "training_iteration": epoch})
        resumed.on_trial_complete("a", {"best_val_mae": 0.4, "training_iteration": 3, FINISHED_KEY: True})
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert trial.state == TrialState.COMPLETE and trial.intermediate_values == {1: 0.9, 2: 0.5, 3: 0.4}


def test_nan_final_value_is_failed_not_complete(tmp_path):
    searcher = _searcher(f"sqlite:///{tmp_path / 'o.db'}")
    searcher.suggest("a")
    searcher.on_trial_complete("a", {"best_val_mae": float("nan"), FINISHED_KEY: True})
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'o.db'}")
    assert study.trials[0].state == TrialState.FAIL


def test_shipped_crabnet_space_loads_and_maps_onto_config_fields():
    space = load_space(get_model("crabnet"))
    assert space["model_params"] and space["train_params"]
    spec = get_model("crabnet")
    # every searchable field is a real config field: building a config from samples works
    sample = {k: (v.sample() if hasattr(v, "sample") else v) for k, v in space["model_params"].items()}
    config = spec.make_config(**sample)
    assert {k: getattr(config, k) for k in sample} == sample


def test_space_with_unknown_field_is_rejected(tmp_path):
    (tmp_path / "crabnet.yaml").write_text("model: crabnet\nmodel_params:\n  d_modle: {type: int, low: 1, high: 2}\n")
    with pytest.raises(SearchSpaceError, match="d_modle"):
        load_space(get_model("crabnet"), tmp_path)


def test_space_with_unknown_type_is_rejected(tmp_path):
    (tmp_path / "crabnet.yaml").write_text("model_params:\n  dropout: {type: gaussian, low: 0, high: 1}\n")
    with pytest.raises(SearchSpaceError, match="unknown type 'gaussian'"):
        load_space(get_model("crabnet"), tmp_path)


def test_cmaes_and_random_samplers_are_available():
    assert isinstance(make_sampler("random", 1), optuna.samplers.RandomSampler)
    assert isinstance(make_sampler("cmaes", 1), optuna.samplers.CmaEsSampler)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("grid", 0)


def test_result_that_ends_a_trial_is_recorded_as_its_last_intermediate_value(tmp_path):
    # Ray passes the result that ends a trial only to on_trial_complete.
    searcher = _searcher(f"sqlite:///{tmp_path / 'o.db'}")
    searcher.suggest("a")
    searcher.on_trial_result("a", {"best_val_mae": 0.9, "training_iteration": 1})
    searcher.on_trial_complete("a", {"best_val_mae": 0.4, "training_iteration": 2, FINISHED_KEY: True})
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'o.db'}")
    assert study.trials[0].intermediate_values == {1: 0.9, 2: 0.4}


def test_embedded_ray_runs_trials_at_the_drivers_priority(monkeypatch):
    """Ray's default worker niceness (15) lets any ordinary process starve the trials and
    stretch the wall-clock cost on the leaderboards; the embedded cluster runs them at nice 0
    relative to the driver unless the user set RAY_worker_niceness."""
    import os

    import ray

    from harness.tuning.sweep import _init_ray

    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    try:
        assert _init_ray(None, num_cpus=1)
        worker_nice = ray.get(ray.remote(lambda: os.nice(0)).remote())
    finally:
        ray.shutdown()
        os.environ.pop("RAY_worker_niceness", None)
    assert worker_nice == os.nice(0)


def test_each_search_registers_its_trainable_under_its_own_name():
    """Tune looks trainables up by name in a cluster-wide registry: two searches side by side
    under one name ran each other's trials (model, dataset and split of the other search)."""
    from ray.tune.experiment import Experiment

    from harness.tuning.search import _search_trainable, trainable_name

    names = {trainable_name(f"sweep__ridge__{d}__fold{k}", "ridge") for d in ("a", "b") for k in range(5)}
    assert len(names) == 10 and all(n.startswith("ridge_") for n in names)
    bound = _search_trainable(context=None, name="ridge_0123abcd", resources={"cpu": 1, "gpu": 0})
    assert Experiment.get_trainable_name(bound) == "ridge_0123abcd"


def test_a_ctrl_c_as_the_last_trial_finishes_still_stops_the_sweep(tmp_path):
    """A SIGINT that reaches the driver while its only trial ends leaves every trial TERMINATED,
    so the trial states cannot show it (a sweep once went on to its final fits after such a
    Ctrl+C); ``_fit_keeping_sigint`` reports it, and puts the driver's SIGINT handler back."""
    import os
    import signal

    import ray
    from ray import tune

    from harness.tuning.search import _fit_keeping_sigint, interrupted
    from harness.tuning.sweep import _init_ray

    driver = os.getpid()

    def report_then_ctrl_c(config):
        tune.report({"x": 1.0})
        if config["ctrl_c"]:
            os.kill(driver, signal.SIGINT)  # the driver's Ctrl+C, as this trial ends

    def fit(ctrl_c: bool):
        tuner = tune.Tuner(report_then_ctrl_c, param_space={"ctrl_c": ctrl_c},
                           tune_config=tune.TuneConfig(num_samples=1),
                           run_config=tune.RunConfig(name=f"ctrl_c_{ctrl_c}", storage_path=str(tmp_path), verbose=0))
        return _fit_keeping_sigint(tuner)

    before = signal.getsignal(signal.SIGINT)
    try:
        assert _init_ray(None, num_cpus=1)
        results, signalled = fit(ctrl_c=True)
        assert signalled
        assert not interrupted(results, 1)  # what the trial states alone said
        assert signal.getsignal(signal.SIGINT) is before
        _, signalled = fit(ctrl_c=False)
        assert not signalled
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        ray.shutdown()
        os.environ.pop("RAY_worker_niceness", None)


def test_graph_kinds_that_read_the_same_tensors_are_stored_once(tmp_path, monkeypatch):
    """A sweep of ALIGNN (crystal_graph) and CGCNN (periodic_graph) puts one copy of the graphs in
    the object store; a worker reads it back as the kind its model needs."""
    import numpy as np
    import pandas as pd
    import ray

    from harness.data.dataset import Dataset, Split
    from harness.featurize import featurize
    from harness.featurize.graphs import probe_structures
    from harness.tuning.sweep import _features_in_object_store, _init_ray
    from harness.tuning.worker import FeaturesView, resolve_features
    from harness.tuning.trial import TrialContext

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    frame = pd.DataFrame({"id": ["a", "b", "c"], "formula": ["Fe2O3", "NaCl", "BaTiO3"],
                          "target": [0.0, 1.0, 2.0], "structure": probe_structures()})
    idx = np.arange(3)
    dataset = Dataset("three", "test", "target", "", frame, [Split("fixed", idx, idx, idx)], sha256="three")

    def read_in_worker(features) -> tuple[bool, int, bool]:
        context = TrialContext("cgcnn", "three", features, frame["target"].to_numpy(), dataset.splits[0], 1, 0)
        graphs = resolve_features(context).features
        batch = next(graphs.batches(idx, np.zeros(3), batch_size=3)).graph
        return graphs.info["lg"], int(batch.edge_index.shape[1]), "lg_edge_index" in batch

    try:
        assert _init_ray(None, num_cpus=1)
        stored: dict = {}
        line = _features_in_object_store("crystal_graph", dataset, stored)
        plain = _features_in_object_store("periodic_graph", dataset, stored)
        assert isinstance(line, ray.ObjectRef) and list(stored) == ["crystal_graph"]
        assert isinstance(plain, FeaturesView) and plain.ref == line and plain.kind == "periodic_graph"
        edges = featurize("periodic_graph", dataset).tensors["src"].numel()
        remote = ray.remote(read_in_worker)
        assert ray.get(remote.remote(plain)) == (False, edges, False)
        assert ray.get(remote.remote(line)) == (True, edges, True)
        # LERN's site environments are a different stored field set: a copy of its own
        assert isinstance(_features_in_object_store("crystal_graph_lern", dataset, stored), ray.ObjectRef)
        # ALIGNN's symmetric graphs are other edges: a copy of their own too
        chain = _features_in_object_store("crystal_graph_chain", dataset, stored)
        assert isinstance(chain, ray.ObjectRef) and list(stored) == ["crystal_graph", "crystal_graph_lern",
                                                                     "crystal_graph_chain"]
        assert ray.get(remote.remote(chain))[::2] == (True, True)
    finally:
        ray.shutdown()
        os.environ.pop("RAY_worker_niceness", None)


def test_a_composition_trial_worker_imports_only_what_its_model_needs():
    """Every trial and final fit starts a fresh Ray worker that imports harness.tuning.worker and
    its model's file: a CrabNet worker must not pay for PyTorch Geometric, scikit-learn, MLflow
    or Optuna (measured: 13 s of imports before, 3 s after, on a 2-core Xeon)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import harness.tuning.worker\n"
        "from harness.models import get_model\n"
        "spec = get_model('crabnet')\n"
        "print(spec.name, sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch_geometric', 'sklearn', 'mlflow', 'optuna', 'rich'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["crabnet", "[]"], out.stdout
    # and the registry still knows every model, in its fixed order, once asked for all of them
    from harness.models import MODEL_FILES, all_models, model_groups, resolve_models

    names = list(all_models())
    assert names == [n for file_names in MODEL_FILES.values() for n in file_names]
    assert {get_model(n).__module__ for n in names} == {"harness.models.registry"}
    assert resolve_models("all-structure") == model_groups()["all-structure"][:] == [
        "crysformer", "alignn", "cgcnn", "schnet", "lern", "irnet17_structure", "irnet48_structure"]
    with pytest.raises(KeyError, match="known models: .*adaboost.*alignn"):
        get_model("crabnet2")


def test_trial_clock_carries_its_seconds_through_a_checkpoint_and_not_the_pause(tmp_path):
    import time

    from harness.tuning.trial import TrialClock

    first = TrialClock()
    time.sleep(0.2)
    ran = first.seconds()
    first.save(tmp_path, ran)  # written beside the trainer's checkpoint
    time.sleep(0.5)  # the sweep is stopped: this must not count
    resumed = TrialClock()
    resumed.restore(tmp_path)
    time.sleep(0.1)
    assert 0.2 <= ran < 0.4
    assert ran + 0.1 <= resumed.seconds() < ran + 0.3
    old = TrialClock()
    old.restore(tmp_path / "missing")  # a checkpoint from before the clock existed carries nothing
    assert old.carried == 0.0


def test_a_trial_run_that_ray_lost_is_closed_as_lost_at_the_end_of_its_search(tmp_path):
    # A driver killed between a trial's start and Ray's next snapshot: the resumed experiment
    # does not know that trial, and its run (RUNNING) must not stay open for ever.
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from harness.tuning.tracking import TrialRunLogger, prepare_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = prepare_store(uri, tmp_path)
    client = MlflowClient(uri)
    parent = client.create_run(experiment).info.run_id
    logger = TrialRunLogger(uri, experiment, parent, {"model": "ridge"}, tmp_path / "runs.json", "trial_finished")
    kept, lost, done, orphan = (SimpleNamespace(trial_id=t, config={"x": 1}) for t in ("kept", "lost", "done", "orphan"))
    runs = {t.trial_id: logger.run_id(t) for t in (kept, lost, done, orphan)}  # all started, all mapped
    # "orphan": the driver was killed after its run was made, before the mapping was saved
    mapping = json.loads((tmp_path / "runs.json").read_text())
    del mapping["orphan"]
    (tmp_path / "runs.json").write_text(json.dumps(mapping))
    # "done" started and finished between two of Ray's snapshots (CI, 2026-12-04: a 6th run
    # beside the 5 the resumed search counted)
    logger.on_trial_result(0, [], done, {"epoch": 1, "val_mae": 2.5})
    logger.on_trial_complete(0, [], SimpleNamespace(trial_id="done", config={"x": 1},
                                                    last_result={"trial_finished": True}))
    resumed = TrialRunLogger(uri, experiment, parent, {"model": "ridge"}, tmp_path / "runs.json", "trial_finished")
    second = resumed.run_id(orphan)  # Ray had "orphan" in its snapshot and runs it again: a new run
    resumed.on_experiment_end([kept, orphan])  # Ray restored "kept" (still running: left alone) and "orphan"
    first = client.get_run(runs["orphan"])
    assert second != runs["orphan"] and first.info.status == "KILLED" and first.data.tags["trial_state"] == "lost"
    assert client.get_run(second).info.status == "RUNNING"  # the one the search counts
    lost_run, kept_run, done_run = (client.get_run(runs[t]) for t in ("lost", "kept", "done"))
    assert lost_run.info.status == "KILLED" and lost_run.data.tags["trial_state"] == "lost"
    assert "driver was killed" in lost_run.data.tags["error"]
    assert kept_run.info.status == "RUNNING" and kept_run.data.tags["trial_state"] == "running"
    # the finished one keeps its status and metrics; the search does not count it
    assert done_run.info.status == "FINISHED" and done_run.data.tags["trial_state"] == "lost"
    assert done_run.data.metrics["val_mae"] == 2.5 and "did not count it" in done_run.data.tags["error"]


def test_git_commit_is_dirty_for_code_changes_not_for_benchmark_records(tmp_path):
    import subprocess

    from harness.provenance import git_commit

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout

    (tmp_path / "harness").mkdir()
    (tmp_path / "benchmarks" / "records").mkdir(parents=True)
    files = {"harness/model.py": "x = 1\n", "benchmarks/RESULTS.md": "# results\n",
             "benchmarks/records/a.jsonl": "{}\n", "leaderboards/README.md": "# pages\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    head = git("rev-parse", "HEAD").strip()
    read = git_commit.__wrapped__  # uncached
    assert read(tmp_path) == head
    for name in ("benchmarks/RESULTS.md", "benchmarks/records/a.jsonl", "leaderboards/README.md"):
        (tmp_path / name).write_text("changed by a job running beside the sweep\n")
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert read(tmp_path) == head  # outputs and untracked files: the code is the commit's
    (tmp_path / "harness" / "model.py").write_text("x = 2\n")
    assert read(tmp_path) == head + "-dirty"


def test_rays_restore_warning_about_trials_without_results_is_dropped_and_others_kept(caplog):
    # Ray's own message (ray/tune/analysis/experiment_analysis.py), for a pending trial and for a
    # result file that cannot be read
    import logging

    from harness.tuning.search import _quiet_restore_of_trials_without_results

    _quiet_restore_of_trials_without_results()
    _quiet_restore_of_trials_without_results()  # once per resumed search: one filter
    ray_logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    assert len(ray_logger.filters) == 1
    missing = ("Failed to fetch metrics for 1 trial(s):\n- srnet17_5a14b035_2df3dc2e: FileNotFoundError('Could not "
               "fetch metrics for srnet17_5a14b035_2df3dc2e: both result.json and progress.csv were not found at /x')")
    unreadable = "Failed to fetch metrics for 1 trial(s):\n- ridge_1: JSONDecodeError('Expecting value: line 1')"
    with caplog.at_level(logging.WARNING, logger=ray_logger.name):
        ray_logger.warning(missing)
        ray_logger.warning(unreadable)
    assert [r.getMessage() for r in caplog.records] == [unreadable]


def test_time_left_is_each_models_cost_per_row_of_finished_searches_less_what_is_spent():
    import math

    import pandas as pd

    from harness.tuning.status import hours_left, time_left_text, trials_at_a_time

    nan = math.nan
    frame = pd.DataFrame([
        {"model": "roost", "stage": "done", "hours": 0.2, "data_rows": 1000},
        {"model": "roost", "stage": "done", "hours": 0.8, "data_rows": 2000},  # roost: 3e-4 h per row
        {"model": "elemnet", "stage": "done", "hours": 0.1, "data_rows": nan},  # no size: its mean, 0.1
        {"model": "roost", "stage": "searching", "hours": 0.5, "data_rows": 3000},  # 0.9 - 0.5 left
        {"model": "roost", "stage": "searched", "hours": 0.9, "data_rows": 1000},  # over 0.3: nothing left, not < 0
        {"model": "elemnet", "stage": "pending", "hours": 0.0, "data_rows": 4000},  # 0.1
        {"model": "crabnet", "stage": "pending", "hours": 0.0, "data_rows": 1000},  # none finished: 3e-4 * 1000
    ])
    left, guessed = hours_left(frame)
    assert left == pytest.approx(0.4 + 0.0 + 0.1 + 0.3) and guessed == 1
    local = {"options": {"address": None, "num_cpus": 4, "cpus_per_trial": 2.0, "gpus_per_trial": 0.0}}
    assert trials_at_a_time(local) == 2
    assert trials_at_a_time({"options": {**local["options"], "address": "10.0.0.1:6379"}}) is None  # a cluster
    assert trials_at_a_time({"options": {**local["options"], "gpus_per_trial": 0.25}}) is None
    text = time_left_text(local, frame)
    assert text.startswith("~0.8 h of trial and final-fit time left") and "1 search of models with none finished" in text
    assert text.endswith("≈ 0.4 h at 2 trials at a time")
    # nothing finished yet (nothing to go by), or nothing left: no estimate
    assert math.isnan(hours_left(frame[frame["stage"] != "done"])[0])
    assert time_left_text(local, frame[frame["stage"] != "done"]) == ""
    assert time_left_text(local, frame[frame["stage"] == "done"]) == ""


def test_decided_search_checkpoints_are_deleted_in_every_experiment_of_the_search(tmp_path):
    from harness.tuning.search import drop_trial_checkpoints
    from harness.tuning.sweep import SweepOptions

    root = tmp_path / "ray_results"
    for experiment in ("s1", "s1--rerun1", "s10"):  # s10: another search whose name starts alike
        for trial in ("t0", "t1"):
            for folder in ("checkpoint_000001", "checkpoint_000003"):
                (root / experiment / trial / folder).mkdir(parents=True)
                (root / experiment / trial / folder / "trainer.pt").write_bytes(b"x" * 1000)
            (root / experiment / trial / "result.json").write_text("{}\n")
    opts = SweepOptions(models=["dummy"], datasets=["d"], workdir=tmp_path)
    freed = drop_trial_checkpoints(opts, tmp_path, "s1", {"memory_reruns": 1}, "s1")
    assert freed == 8 * 1000
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("checkpoint_*")) == [
        f"s10/{t}/{c}" for t in ("t0", "t1") for c in ("checkpoint_000001", "checkpoint_000003")]
    assert len(list(root.rglob("result.json"))) == 6
    kept = SweepOptions(models=["dummy"], datasets=["d"], workdir=tmp_path, keep_trial_checkpoints=True)
    assert drop_trial_checkpoints(kept, tmp_path, "s10", {}, "s10") == 0
    assert len(list(root.rglob("checkpoint_*"))) == 4
