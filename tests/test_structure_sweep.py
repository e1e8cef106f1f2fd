"""A real short sweep of two structure models (CGCNN, SchNet) on matbench_phonons.

200 real structures (official fold 0 of the subsample), 2 trials of 3 epochs per model, one
final fit each, with the shipped search spaces, in mixed precision (``--precision bf16``): every
run lands in MLflow with its metrics, the final fit's test MAE is the MAE of its own prediction
file, and the matbench leaderboard page shows those numbers on the matbench_phonons row beside
the published ones; the precision and the graphs (8 nearest neighbours) are recorded and the
README's command line repeats them.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from harness.data.structures import matbench_structure_path
from harness.leaderboard.build import write_leaderboard
from harness.tuning.tracking import default_tracking_uri
from tests.test_leaderboard import _all_runs, approx_shown, number, parse_tables, plain, protocol_notes_of, row_of

DATASET = "matbench_phonons"
MODELS = {"cgcnn": "CGCNN", "schnet": "SchNet"}
TRIALS, EPOCHS = 2, 3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from harness.data import DataError, load_dataset
    from harness.tuning.sweep import SweepOptions, run_sweep

    try:
        load_dataset(DATASET)
    except DataError as exc:  # no local copy (../shared, HARNESS_DATA_DIR) and no network
        pytest.skip(f"{DATASET} not available: {exc}")
    workdir = tmp_path_factory.mktemp("structure_sweep")
    run_sweep(SweepOptions(
        models=list(MODELS), datasets=[DATASET], folds=[0], num_samples=TRIALS, max_epochs=EPOCHS,
        final_seeds=1, subsample=200, workdir=workdir, seed=0, num_cpus=2, precision="bf16", graph_k=8,
    ))
    uri = default_tracking_uri(workdir)
    out = tmp_path_factory.mktemp("structure_lb")
    return {"uri": uri, "runs": _all_runs(uri), "page": write_leaderboard("matbench", uri, out),
            "readme": (out / "README.md").read_text()}


def _runs(sweep, model: str, stage: str) -> list:
    return [r for r in sweep["runs"] if r.data.tags.get("model") == model and r.data.tags.get("stage") == stage]


@pytest.mark.parametrize("model", list(MODELS))
def test_trials_and_final_fit_land_in_mlflow(sweep, model: str, tmp_path) -> None:
    trials = _runs(sweep, model, "trial")
    assert len(trials) == TRIALS
    for trial in trials:
        assert trial.data.tags["trained_on"] == f"{model}/{DATASET}/fold0"
        assert math.isfinite(trial.data.metrics["val_mae"]) and 1 <= trial.data.metrics["epoch"] <= EPOCHS
    (final,) = _runs(sweep, model, "final")
    assert final.info.status == "FINISHED"
    test_mae = final.data.metrics["test_mae"]
    assert math.isfinite(test_mae) and test_mae > 0
    assert final.data.metrics["n_params"] > 10_000  # a real graph network, not a baseline
    # the metric is the MAE of the fit's own predictions on the fold's test rows
    path = MlflowClient(sweep["uri"]).download_artifacts(final.info.run_id, "predictions_test.csv", str(tmp_path))
    preds = pd.read_csv(path, dtype={"id": str})
    assert len(preds) == len(set(preds["id"])) > 0
    assert float(np.mean(np.abs(preds["prediction"] - preds["target"]))) == pytest.approx(test_mae, rel=1e-5)


def test_leaderboard_row_shows_the_final_fits(sweep) -> None:
    tables = parse_tables(sweep["page"].read_text())
    row = row_of(tables["Test MAE"][0], "dataset", DATASET)
    assert row["over"] == "1 fold × 1 seed"  # one final fit: a number without ± std
    maes = {}
    for model, label in MODELS.items():
        (final,) = _runs(sweep, model, "final")
        maes[label] = final.data.metrics["test_mae"]
        approx_shown(number(row[label]), maes[label], 4)
    best = min(maes, key=maes.get)
    assert row[best].startswith("**") and not row[max(maes, key=maes.get)].startswith("**")
    assert number(row["CGCNN v2019 (published)"]) == pytest.approx(57.76, abs=0.01)
    assert "fold 0 of 5 only" in "; ".join(protocol_notes_of(sweep["page"].read_text(), row))


def test_precision_is_recorded_and_in_the_reproduce_command(sweep) -> None:
    searches = [r for r in sweep["runs"] if r.data.tags.get("stage") == "search"]
    assert len(searches) == len(MODELS)
    assert {r.data.params["precision"] for r in searches} == {"bf16"}
    (command,) = [line for line in sweep["readme"].splitlines() if line.startswith("| matbench |")
                  and "harness sweep" in line]
    assert "--precision bf16" in command and "--models cgcnn,schnet" in command
    # the graph settings (--neighbours 8) likewise, and every run says which graphs it read
    assert "--neighbours 8" in command and "--graph-mode" not in command
    assert {r.data.tags["graph"] for r in sweep["runs"] if r.data.tags.get("stage")} == {"k-NN, k = 8"}
    # and the version of the structure file beside the data's
    structures = matbench_structure_path(DATASET)
    assert {r.data.tags["structures_sha256"] for r in sweep["runs"] if r.data.tags.get("stage")} == {
        hashlib.sha256(structures.read_bytes()).hexdigest()}
    (budget,) = parse_tables(sweep["page"].read_text())["Budget"]
    hardware = {plain(r["model"]): r["hardware"] for r in budget if plain(r["dataset"]) == DATASET}
    assert set(hardware) == set(MODELS.values())
    assert all(h.startswith("cpu: ") and h.endswith(", bf16 mixed precision") for h in hardware.values()), hardware
