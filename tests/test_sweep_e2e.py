"""End to end: real crabnet28 data -> real Ray Tune sweep -> real MLflow (sqlite) -> leaderboard.

One module-scoped sweep (CrabNet, 6 trials, 3 epochs, 300 rows of aflow__ael_bulk_modulus_vrh,
2 final seeds); the tests below read what it left behind.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from harness.leaderboard.build import write_leaderboard
from harness.tuning.sweep import SweepOptions, run_sweep
from harness.tuning.tracking import default_tracking_uri

DATASET = "aflow__ael_bulk_modulus_vrh"
TRIALS, EPOCHS, SEEDS = 6, 3, 2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep")
    log = io.StringIO()  # the driver's console (stderr), read by a test and passed on
    try:
        with contextlib.redirect_stderr(log):
            outcomes = run_sweep(SweepOptions(
                models=["crabnet"], datasets=[DATASET], num_samples=TRIALS, max_epochs=EPOCHS,
                final_seeds=SEEDS, workdir=workdir, subsample=300, reduction_factor=3, seed=0,
            ))
    finally:
        sys.stderr.write(log.getvalue())
    uri = default_tracking_uri(workdir)
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    return {"workdir": workdir, "uri": uri, "client": client, "runs": runs, "outcomes": outcomes,
            "log": log.getvalue()}


def _stage(runs, stage):
    return [r for r in runs if r.data.tags.get("stage") == stage]


def test_one_child_run_per_trial_with_params_and_epoch_history(sweep):
    trials = _stage(sweep["runs"], "trial")
    assert len(trials) == TRIALS
    parent = _stage(sweep["runs"], "search")
    assert len(parent) == 1
    client = sweep["client"]
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert run.info.status == "FINISHED"
        assert any(k.startswith("model_params.") for k in run.data.params)
        assert any(k.startswith("train_params.") for k in run.data.params)
        history = client.get_metric_history(run.info.run_id, "val_mae")
        epochs = sorted(m.step for m in history)
        assert epochs == list(range(1, len(epochs) + 1)) and 1 <= len(epochs) <= EPOCHS
        expected = "completed" if len(epochs) == EPOCHS else "pruned"
        assert run.data.tags["trial_state"] == expected


def test_optuna_study_marks_asha_stopped_trials_pruned(sweep):
    studies = optuna.get_all_study_summaries(f"sqlite:///{sweep['workdir'] / 'optuna.db'}")
    assert len(studies) == 1
    study = optuna.load_study(study_name=studies[0].study_name,
                              storage=f"sqlite:///{sweep['workdir'] / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert len(states) == TRIALS
    assert TrialState.PRUNED in states, "ASHA (rf 3) should stop at least one of 6 trials"
    for t in study.trials:
        steps = sorted(t.intermediate_values)
        if t.state == TrialState.PRUNED:
            assert steps and max(steps) < EPOCHS
        elif t.state == TrialState.COMPLETE:
            assert max(steps) == EPOCHS
    # MLflow and Optuna agree on how many trials were stopped early
    pruned_runs = [r for r in _stage(sweep["runs"], "trial") if r.data.tags["trial_state"] == "pruned"]
    assert len(pruned_runs) == states.count(TrialState.PRUNED)


def test_final_runs_carry_test_metrics_and_provenance(sweep):
    finals = _stage(sweep["runs"], "final")
    assert sorted(int(r.data.tags["seed"]) for r in finals) == list(range(SEEDS))
    for run in finals:
        assert run.info.status == "FINISHED"
        m, tags = run.data.metrics, run.data.tags
        assert m["test_mae"] > 0 and m["test_rmse"] >= m["test_mae"]
        assert m["epochs_run"] <= EPOCHS
        assert re.fullmatch(r"[0-9a-f]{64}", tags["data_sha256"])
        assert tags["data_subsample"] == "300"
        assert tags["git_commit"] and tags["version.torch"] and tags["version.ray"]
        assert tags["dataset"] == DATASET and tags["suite"] == "crabnet28"
        assert any(k.startswith("model_params.") for k in run.data.params)
        # the console says each final fit's result as it lands (a log of a long sweep shows them)
        assert f"final fit seed {tags['seed']}: test MAE {m['test_mae']:.4g} (" in sweep["log"]


def _results_row(page_text: str) -> dict[str, str]:
    """The dataset's row of the suite page's results table, as {column: cell}."""
    lines = page_text.splitlines()
    header = next(line for line in lines if line.startswith("| dataset"))
    row = next(line for line in lines if line.startswith(f"| {DATASET} |"))
    return dict(zip([c.strip() for c in header.strip("|").split("|")],
                    [c.strip().strip("*") for c in row.strip("|").split("|")]))


def test_leaderboard_number_is_the_mean_of_the_final_runs(sweep, tmp_path):
    finals = _stage(sweep["runs"], "final")
    mean = sum(r.data.metrics["test_mae"] for r in finals) / len(finals)
    page = write_leaderboard("crabnet28", sweep["uri"], tmp_path)
    text = page.read_text()
    cells = _results_row(text)
    assert float(cells["CrabNet"].split("±")[0]) == pytest.approx(mean, rel=5e-4)
    row = next(line for line in text.splitlines() if line.startswith(f"| {DATASET} |"))
    # the published number stands beside ours, marked as such
    assert float(cells["CrabNet (published)"]) == pytest.approx(8.692, abs=1e-3)
    assert "| 6 |" not in row  # budget lives in its own table
    budget = next(line for line in text.splitlines() if line.startswith(f"| {DATASET} | CrabNet |"))
    outcome = sweep["outcomes"][0]
    assert f"{outcome.completed} / {outcome.pruned} / {outcome.failed}" in budget
    # regenerating from the same store gives the same bytes
    again = write_leaderboard("crabnet28", sweep["uri"], tmp_path / "again")
    assert again.read_bytes() == page.read_bytes()


def test_cli_leaderboard_writes_beside_the_sweep_and_leaves_the_committed_pages_alone(sweep):
    from typer.testing import CliRunner

    from harness.cli import app
    from harness.paths import REPO_ROOT

    committed = {p: p.read_bytes() for p in (REPO_ROOT / "leaderboards").glob("*.md")}
    result = CliRunner().invoke(app, ["leaderboard", "--workdir", str(sweep["workdir"])])
    assert result.exit_code == 0, result.output
    page = sweep["workdir"] / "leaderboards" / "crabnet28.md"
    finals = _stage(sweep["runs"], "final")
    mean = sum(r.data.metrics["test_mae"] for r in finals) / len(finals)
    assert float(_results_row(page.read_text())["CrabNet"].split("±")[0]) == pytest.approx(mean, rel=5e-4)
    assert (sweep["workdir"] / "leaderboards" / "README.md").is_file()
    assert {p: p.read_bytes() for p in (REPO_ROOT / "leaderboards").glob("*.md")} == committed


def test_a_decided_search_leaves_its_trial_results_but_no_checkpoints(sweep):
    # Tune keeps each finished trial's last checkpoints for ever (~270 MB each for CrabNet-size
    # models): a long sweep filled a 250 GB disk. The sweep deletes them once the search is decided.
    experiments = list((sweep["workdir"] / "ray_results").iterdir())
    assert len(experiments) == 1
    trials = [d for d in experiments[0].iterdir() if d.is_dir()]
    assert len(trials) == TRIALS
    assert all((t / "result.json").stat().st_size > 0 for t in trials)
    assert list(experiments[0].rglob("checkpoint_*")) == []
    deleted = re.search(r"deleted (\d+) trial checkpoint folder\(s\), ([\d.]+) GB", sweep["log"])
    assert deleted and int(deleted.group(1)) >= TRIALS and float(deleted.group(2)) > 0
