"""A trial that fails for a reason of its own (here: a diverging loss) is marked failed in
MLflow and Optuna with its reason, and the sweep goes on; `harness status` shows it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.tuning.sweep import SweepOptions, run_sweep
from harness.tuning.tracking import default_tracking_uri

pytestmark = pytest.mark.slow

SPACE = """
model_params:
  d_model: 32
  n_layers: 1
  heads: 2
  dim_feedforward: 64
train_params:
  optimizer: sgd
  scheduler: none
  lr: {type: categorical, choices: [1.0e-3, 1.0e+30]}   # 1e30 diverges at once
"""


@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fail")
    (tmp / "spaces").mkdir()
    (tmp / "spaces" / "crabnet.yaml").write_text(SPACE)
    outcomes = run_sweep(SweepOptions(
        models=["crabnet"], datasets=["steels_yield"], folds=[0], num_samples=6, max_epochs=2,
        final_seeds=1, workdir=tmp / "w", subsample=120, sampler="random", seed=0,
        space_dir=tmp / "spaces", grace_period=2,
    ))
    return tmp / "w", outcomes


def test_diverging_trials_fail_with_reason_and_the_sweep_goes_on(failing_sweep):
    workdir, outcomes = failing_sweep
    client = MlflowClient(default_tracking_uri(workdir))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    trials = [r for r in runs if r.data.tags.get("stage") == "trial"]
    assert len(trials) == 6
    diverged = [r for r in trials if float(r.data.params["train_params.lr"]) > 1]
    healthy = [r for r in trials if float(r.data.params["train_params.lr"]) < 1]
    assert diverged and healthy, "seed 0 samples both learning rates"
    for r in diverged:
        assert r.info.status == "FAILED" and r.data.tags["trial_state"] == "failed"
        assert "FloatingPointError" in r.data.tags["error"]
    for r in healthy:
        assert r.info.status == "FINISHED" and r.data.tags["trial_state"] == "completed"
    assert outcomes[0].failed == len(diverged) and outcomes[0].completed == len(healthy)
    # the sweep went on to the final evaluation of a healthy configuration
    finals = [r for r in runs if r.data.tags.get("stage") == "final"]
    assert len(finals) == 1 and finals[0].info.status == "FINISHED"
    assert float(finals[0].data.params["train_params.lr"]) < 1
    # Optuna was told FAIL, not a number
    storage = f"sqlite:///{workdir / 'optuna.db'}"
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    states = sorted(t.state.name for t in study.trials)
    assert states.count(TrialState.FAIL.name) == len(diverged)


def test_status_command_counts_the_trials(failing_sweep):
    workdir, outcomes = failing_sweep
    # Into a pipe, as `harness status DIR | less` or a log: rich's 80-column default for a
    # non-terminal would cut the names ("cra…"); the CLI's console is wide there.
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    result = subprocess.run([sys.executable, "-c", "from harness.cli import app; app()", "status", str(workdir)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    row = next(l for l in result.stdout.splitlines() if "steels_yield" in l)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    # model, dataset, split, stage, running, completed, pruned, failed, best, final fits, test
    assert cells[:4] == ["crabnet", "steels_yield", "fold0", "done"]
    assert cells[4:8] == ["0", str(outcomes[0].completed), str(outcomes[0].pruned), str(outcomes[0].failed)]
    assert cells[9] == "1/1"


def test_status_of_a_folder_of_sweeps_sums_each_sweep(failing_sweep, tmp_path):
    workdir, outcomes = failing_sweep
    (tmp_path / "stage-a").symlink_to(workdir, target_is_directory=True)  # as first_leaderboard.sh's stages
    (tmp_path / "not-a-sweep").mkdir()
    # stage-b: a copy of the sweep in which one completed trial was lost (its driver was killed)
    copy = tmp_path / "stage-b"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("ray*", "*.lock"))
    sweep = json.loads((copy / "sweep.json").read_text())
    sweep["tracking_uri"] = default_tracking_uri(copy)
    (copy / "sweep.json").write_text(json.dumps(sweep))
    client = MlflowClient(sweep["tracking_uri"])
    lost = client.search_runs([sweep["experiment_id"]], "tags.trial_state = 'completed'", max_results=1)[0]
    client.set_tag(lost.info.run_id, "trial_state", "lost")
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    result = subprocess.run([sys.executable, "-m", "harness.cli", "status", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [[c.strip() for c in line.strip("│ ").split("│")] for line in result.stdout.splitlines()
            if line.startswith("│")]
    assert len(rows) == 2 and "2 sweeps in" in result.stdout
    # sweep, sweep_id, searches, done, pending, in_progress, running, completed, pruned, failed, lost, final fits,
    # hours, hours_left, disk_gb
    o = outcomes[0]
    assert rows[0][0] == "stage-a" and rows[0][2:6] == ["1", "1", "0", "0"]
    assert rows[0][6:12] == ["0", str(o.completed), str(o.pruned), str(o.failed), "0", "1/1"]
    assert rows[1][0] == "stage-b" and rows[1][6:12] == ["0", str(o.completed - 1), str(o.pruned), str(o.failed), "1",
                                                         "1/1"]
    # hours: the trials' trial_seconds + the final fit's fit_seconds; nothing left of a finished sweep
    runs = client.search_runs([sweep["experiment_id"]], max_results=1000)
    seconds = sum(r.data.metrics.get("trial_seconds", 0.0) + r.data.metrics.get("fit_seconds", 0.0) for r in runs)
    assert seconds > 0 and float(rows[0][12]) == pytest.approx(seconds / 3600, rel=1e-3)
    assert rows[0][13] == rows[1][13] == "0"
    # disk_gb: the bytes under each workdir (stage-b was copied without its Ray results)
    on_disk = sum(p.stat().st_size for p in workdir.rglob("*") if p.is_file() and not p.is_symlink())
    assert float(rows[0][14]) == pytest.approx(on_disk / 1e9, abs=6e-4) and "GB free on the disk" in result.stdout
    missing = subprocess.run([sys.executable, "-m", "harness.cli", "status", str(tmp_path / "not-a-sweep")],
                             capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode != 0 and "neither a sweep's --workdir nor a folder of them" in missing.stderr + missing.stdout
    too_long = subprocess.run([sys.executable, "-m", "harness.cli", "status", str(tmp_path / ("x" * 300))],
                              capture_output=True, text=True, env=env, timeout=300)
    assert too_long.returncode == 2 and "File name too long" in too_long.stderr and "Traceback" not in too_long.stderr


def test_a_new_sweep_with_bad_data_leaves_the_earlier_sweep_of_its_workdir_resumable(failing_sweep, tmp_path):
    workdir, _ = failing_sweep
    copy = tmp_path / "w"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("ray*", "*.lock"))
    before = {name: (copy / name).read_bytes() for name in ("sweep.json", "plan.json")}
    bad = tmp_path / "mine.csv"
    bad.write_text("formula,target\nNaCl,1.0\nXyz2,2.0\n")
    result = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", "--models", "ridge", "--dataset-file",
                             str(bad), "--target", "target", "--workdir", str(copy)],
                            capture_output=True, text=True, timeout=300)
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0 and "data row 2: unknown element 'Xyz'" in out
    # the earlier sweep is still the one `--resume` continues
    assert {name: (copy / name).read_bytes() for name in before} == before


def test_retry_failed_searches_again_under_the_same_parent_run(tmp_path):
    # Every trial fails (a search space that diverges, as a full disk once failed every trial of
    # a search); once the cause is gone, --resume --retry-failed searches again and evaluates.
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "crabnet.yaml").write_text(SPACE.replace("1.0e-3, 1.0e+30", "1.0e+30, 2.0e+30"))
    workdir = tmp_path / "w"
    outcomes = run_sweep(SweepOptions(
        models=["crabnet"], datasets=["steels_yield"], folds=[0], num_samples=2, max_epochs=2,
        final_seeds=1, workdir=workdir, subsample=120, sampler="random", seed=0, space_dir=spaces, grace_period=2,
    ))
    assert outcomes[0].failed == 2 and outcomes[0].test_mae == [] and "no trial completed" in outcomes[0].note
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    resume = [sys.executable, "-m", "harness.cli", "sweep", "--resume", str(workdir)]
    again = subprocess.run(resume, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and "done in an earlier run of this sweep; skipped" in again.stdout + again.stderr

    (spaces / "crabnet.yaml").write_text(SPACE.replace("1.0e-3, 1.0e+30", "1.0e-3, 2.0e-3"))
    retried = subprocess.run(resume + ["--retry-failed"], capture_output=True, text=True, env=env, timeout=600)
    out = retried.stdout + retried.stderr
    assert retried.returncode == 0, out
    assert "--retry-failed: no trial completed; nothing to evaluate; searching again" in " ".join(out.split())
    client = MlflowClient(default_tracking_uri(workdir))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    parent = [r for r in runs if r.data.tags.get("stage") == "search"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED" and "final_status" not in parent[0].data.tags
    trials = [r for r in runs if r.data.tags.get("stage") == "trial"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for r in trials)
    by_lr = sorted((float(r.data.params["train_params.lr"]) > 1, r.info.status, r.data.tags["trial_state"])
                   for r in trials)
    # the failed ones stay, as failed (not as "lost": they were not the retried experiment's trials)
    assert by_lr == [(False, "FINISHED", "completed")] * 2 + [(True, "FAILED", "failed")] * 2
    assert all("FloatingPointError" in r.data.tags["error"] for r in trials if r.info.status == "FAILED")
    finals = [r for r in runs if r.data.tags.get("stage") == "final"]
    assert len(finals) == 1 and finals[0].info.status == "FINISHED" and finals[0].data.metrics["test_mae"] > 0
    state = json.loads(next((workdir / "searches").glob("*.json")).read_text())
    assert state["stage"] == "done" and state["retries"] == 1
    assert sorted(p.name.rsplit("__", 1)[-1] for p in (workdir / "ray_results").iterdir()) == ["fold0", "fold0--rerun1"]
    storage = f"sqlite:///{workdir / 'optuna.db'}"  # a new study: Optuna refuses a changed categorical
    studies = {name.rsplit("__", 1)[-1]: optuna.load_study(study_name=name, storage=storage)
               for name in optuna.get_all_study_names(storage)}
    assert {k: sorted(t.state.name for t in v.trials) for k, v in studies.items()} == {
        "fold0": ["FAIL", "FAIL"], "fold0--retry1": ["COMPLETE", "COMPLETE"]}


def _final_fit_workers(proc: subprocess.Popen) -> list:
    """The Ray worker processes of ``proc``'s embedded cluster now running a final fit."""
    import psutil

    found = []
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "ray::final_task" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # ended meanwhile
            pass
    return found


def test_retry_failed_refits_a_final_fit_whose_worker_died_into_the_same_run(tmp_path):
    # A final fit's worker process is killed (as the kernel's OOM killer or a lost node would),
    # with no task retries: that fit fails, the other seed's fit and the sweep go on. Plain
    # --resume leaves the finished search alone; --resume --retry-failed refits only the failed
    # seed, into the same MLflow run, without searching again.
    workdir = tmp_path / "w"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "sweep", "--models", "crabnet", "--datasets", "steels_yield",
         "--folds", "0", "--num-samples", "1", "--max-epochs", "3", "--grace-period", "3", "--final-seeds", "2",
         "--workdir", str(workdir), "--num-cpus", "1", "--seed", "0", "--max-failures", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    lines: list[str] = []
    killed = None
    try:
        for line in proc.stdout:
            lines.append(line)
            if "final fits with seeds" in line:
                deadline = time.time() + 120
                while killed is None and time.time() < deadline:
                    workers = _final_fit_workers(proc)
                    if workers:
                        killed = workers[0]
                        killed.send_signal(signal.SIGKILL)
                    time.sleep(0.05)
                break
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines) + out
    assert killed is not None, "no final-fit worker was seen:\n" + out
    assert proc.returncode == 0, out
    (state,) = [json.loads(p.read_text()) for p in (workdir / "searches").glob("*.json")]
    assert state["stage"] == "done"
    client = MlflowClient(default_tracking_uri(workdir))
    finals = {seed: client.get_run(run_id) for seed, run_id in state["final_runs"].items()}
    failed = [seed for seed, run in finals.items() if run.info.status == "FAILED"]
    assert failed == ["0"], {seed: run.info.status for seed, run in finals.items()}  # fits run one at a time
    assert "test_mae" not in finals["0"].data.metrics and "died" in finals["0"].data.tags["error"]
    assert finals["1"].info.status == "FINISHED" and finals["1"].data.metrics["test_mae"] > 0
    trials_before = [r.info.run_id for r in client.search_runs(
        [finals["0"].info.experiment_id], "tags.stage = 'trial'")]

    retried = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", "--resume", str(workdir), "--retry-failed"],
                             capture_output=True, text=True, env=env, timeout=600)
    out = retried.stdout + retried.stderr
    assert retried.returncode == 0, out
    assert "--retry-failed: 1 final fit(s) without a test MAE; fitting them again" in " ".join(out.split())
    assert "final fits with seeds [0]" in out  # seed 1 kept its fit
    (after,) = [json.loads(p.read_text()) for p in (workdir / "searches").glob("*.json")]
    assert after["final_runs"] == state["final_runs"] and after["stage"] == "done"
    refit = client.get_run(state["final_runs"]["0"])
    assert refit.info.status == "FINISHED" and refit.data.metrics["test_mae"] > 0 and "error" not in refit.data.tags
    assert client.get_run(state["final_runs"]["1"]).data.metrics == finals["1"].data.metrics
    parent = client.get_run(state["parent_run_id"])
    assert parent.info.status == "FINISHED" and "final_status" not in parent.data.tags
    assert [r.info.run_id for r in client.search_runs(
        [parent.info.experiment_id], "tags.stage = 'trial'")] == trials_before  # no new search
