"""The command line: tables, clear errors, and the MLflow UI bound to loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from typer.testing import CliRunner

from harness.cli import app

runner = CliRunner()


def test_data_list_shows_every_dataset_with_rows_and_units():
    # Row counts are read from fetched sources only (listing never downloads): fetch first, so the
    # test holds on a fresh machine with an empty cache too.
    fetched = runner.invoke(app, ["data", "fetch", "crabnet28"])
    assert fetched.exit_code == 0, fetched.output
    # one line per source file: the 28 sets are read from one wheel
    (line,) = fetched.output.splitlines()
    assert line.startswith("28 datasets (aflow__ael_bulk_modulus_vrh, ") and line.endswith("crabnet-2.0.8-py3-none-any.whl")
    result = runner.invoke(app, ["data", "list", "--suite", "crabnet28"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = [l for l in result.output.splitlines() if "│ crabnet28 │" in l]
    assert len(lines) == 28
    bulk = next(l for l in lines if "aflow__ael_bulk_modulus_vrh" in l)
    assert "4896" in bulk.replace(",", "") and "GPa" in bulk and "│ composition │" in bulk
    # which datasets the structure models can read
    result = runner.invoke(app, ["data", "list", "--suite", "structures"], env={"COLUMNS": "250"})
    rows = [l for l in result.output.splitlines() if l.startswith("│ ")]
    assert len(rows) == 8 and all("│ composition, structure │" in l for l in rows)
    assert any(l.startswith("│ matbench_phonons ") for l in rows)


def test_models_list_names_crabnet_with_its_parameter_count():
    result = runner.invoke(app, ["models", "list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "11,987,206" in result.output  # CrabNet, paper defaults
    # Not a terminal: the citation is whole (a terminal cuts it at 60 characters), doi included.
    assert "doi:10.1038/s41524-021-00545-1" in result.output


def test_sweep_with_unknown_model_fails_clearly_before_starting_anything(tmp_path):
    result = runner.invoke(app, ["sweep", "--models", "crabnett", "--datasets", "steels_yield",
                                 "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2
    assert "unknown model 'crabnett' (did you mean 'crabnet'?)" in " ".join(result.output.split())
    assert not (tmp_path / "w").exists()


def test_sweep_with_unknown_precision_fails_clearly_before_starting_anything(tmp_path):
    result = runner.invoke(app, ["sweep", "--models", "crabnet", "--datasets", "steels_yield",
                                 "--precision", "fp16", "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2
    assert "--precision must be one of fp32, bf16, not 'fp16'" in result.output
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--max-concurrent-trials", "0", "--max-concurrent-trials must be >= 1"),
    ("--concurrent-searches", "-1", "--concurrent-searches must be >= 1"),
    # these three ran: grace 0 and factor 1 looped for ever computing ASHA's rungs, subsample 0 took all rows
    ("--grace-period", "0", "--grace-period must be >= 1"),
    ("--reduction-factor", "1", "--reduction-factor must be >= 2"),
    ("--subsample", "0", "--subsample must be >= 1 rows"),
])
def test_sweep_with_no_room_for_a_trial_or_search_fails_clearly(tmp_path, option, value, message):
    result = runner.invoke(app, ["sweep", "--models", "ridge", "--datasets", "steels_yield", option, value,
                                 "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "w").exists()


def test_sweep_with_unknown_dataset_lists_the_known_ones(tmp_path):
    result = runner.invoke(app, ["sweep", "--models", "crabnet", "--datasets", "nope",
                                 "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2 and "unknown dataset 'nope'" in result.output
    assert "did you mean" not in result.output and "matbench_steels" in result.output


def test_sweep_with_a_mistyped_dataset_suggests_the_close_names(tmp_path):
    result = runner.invoke(app, ["sweep", "--models", "crabnet", "--datasets", "mp_bulk_moduls",
                                 "--workdir", str(tmp_path / "w")])
    assert result.exit_code == 2
    assert "(did you mean 'mp_bulk_modulus'" in " ".join(result.output.split())
    assert not (tmp_path / "w").exists()


def test_leaderboard_on_a_missing_sqlite_file_fails_without_creating_it(tmp_path):
    missing = tmp_path / "typo" / "mlflow.db"
    result = runner.invoke(app, ["leaderboard", "--mlflow-uri", f"sqlite:///{missing}", "--out", str(tmp_path / "lb")])
    assert result.exit_code == 2
    assert f"no MLflow store at {missing}" in " ".join(result.output.split())
    assert not missing.exists() and not (tmp_path / "lb").exists()


def test_leaderboard_without_a_store_says_what_to_do(tmp_path):
    result = runner.invoke(app, ["leaderboard", "--workdir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no MLflow store" in result.output and "--mlflow-uri" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_sweep_store_on_loopback(tmp_path):
    from harness.tuning.tracking import default_tracking_uri, prepare_store

    prepare_store(default_tracking_uri(tmp_path), tmp_path)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "ui", "--workdir", str(tmp_path), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline, body = time.time() + 90, b""
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10", timeout=5) as r:
                    body = r.read()
                    break
            except OSError:
                time.sleep(1)
        assert b'"name": "harness"' in body or b'"name":"harness"' in body
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening
        # a one-person viewer: no MLflow GenAI job runners beside it (they tripled its start-up)
        group = subprocess.run(["ps", "-o", "args=", "-g", str(proc.pid)], capture_output=True, text=True).stdout
        assert "mlflow" in group and "huey_consumer" not in group, group
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_analyze_cecv_writes_the_plot_and_table_and_logs_the_counts(tmp_path):
    """The README's `harness analyze cecv`: a real (short) L-G-DCNN fit, the counts on screen, in
    the CSV and in MLflow alike."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    result = runner.invoke(app, ["analyze", "cecv", "--dataset", "aflow__ael_bulk_modulus_vrh", "--max-epochs", "1",
                                 "--subsample", "200", "--workdir", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    stem = tmp_path / "analysis" / "cecv_lgdcnn_aflow__ael_bulk_modulus_vrh"
    png, frame = stem.with_suffix(".png").read_bytes(), pd.read_csv(stem.with_suffix(".csv"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1024
    assert list(frame["threshold"]) == [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]
    shown = [line.split("│")[1:3] for line in result.output.splitlines() if line.startswith("│ 0.")]
    assert [(float(t), int(n)) for t, n in shown] == list(zip(frame["threshold"], frame["n_clusters"]))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("harness").experiment_id], "tags.analysis = 'cecv'")
    assert run.data.tags["params_source"] == "paper defaults" and run.data.tags["data_subsample"] == "200"
    history = client.get_metric_history(run.info.run_id, "cecv_n_clusters")
    assert sorted((m.step, int(m.value)) for m in history) == [(round(t * 100), n) for t, n in zip(frame["threshold"], frame["n_clusters"])]


@pytest.mark.parametrize(("model", "message"), [
    ("all-composition", "give one model and one dataset"),
    ("nosuch", "unknown model 'nosuch'"),
])
def test_analyze_cecv_with_a_group_or_unknown_model_fails_clearly(tmp_path, model, message):
    result = runner.invoke(app, ["analyze", "cecv", "--model", model, "--dataset", "aflow__ael_bulk_modulus_vrh",
                                 "--workdir", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and message in result.output and not (tmp_path / "analysis").exists()


def test_reproduce_command_of_a_users_file_parses_back_to_the_same_options(tmp_path):
    """A user's file has no catalog name: the leaderboard's reproduce command carries the options
    that loaded it (`--datasets my_file` would be an unknown dataset)."""
    import shlex

    import pandas as pd
    import typer

    from harness.leaderboard.tables import sweep_command
    from harness.tuning.plan import SweepOptions, dataset_file_options

    opts = SweepOptions(models=["cgcnn"], datasets=[], dataset_file=tmp_path / "my bulk.csv", target="K",
                        structure_column="cif", id_column="mpid", drop_invalid=True, workdir=tmp_path)
    searches = pd.DataFrame([
        {"model": m, "dataset": d, "split": "random", "subsample": "", "num_samples": "4", "max_epochs": "10",
         "params": {}, "dataset_options": dataset_file_options(opts) if d == "my bulk" else "", "data_dropped": "1"}
        for m in ("cgcnn", "ridge") for d in ("my bulk", "mp_bulk_modulus")])
    command = sweep_command(searches)
    assert command.startswith("harness sweep --models cgcnn,ridge --datasets mp_bulk_modulus --dataset-file ")
    sweep = typer.main.get_command(app).commands["sweep"]
    params = sweep.make_context("sweep", shlex.split(command)[2:]).params
    assert params["datasets"] == "mp_bulk_modulus" and params["dataset_file"] == opts.dataset_file
    assert (params["target"], params["structure_column"], params["id_column"], params["drop_invalid"]) == ("K", "cif", "mpid", True)
    assert command.count("--drop-invalid") == 1
    # a catalog dataset with rows dropped as invalid: the flag too, else the command stops at them
    catalog_only = searches[searches["dataset"] == "mp_bulk_modulus"].assign(dataset_options="")
    assert sweep_command(catalog_only).endswith("--drop-invalid")
    assert "--drop-invalid" not in sweep_command(catalog_only.assign(data_dropped="0"))


@pytest.mark.parametrize(("extra", "message"), [
    (["--folds", "7"], "dataset 'steels_yield' has no folds [7]"),
    (["--search-spaces", "EMPTY"], "no search space for model 'ridge'"),
    (["--models", "ridge,cgcnn"], "dataset 'steels_yield' has no structures; input kind 'periodic_graph' needs"),
])
def test_sweep_with_a_plan_it_cannot_run_fails_before_touching_the_workdir(tmp_path, extra, message):
    """Checked up front: a missing fold or search space used to fail after the workdir's sweep.json
    (the one --resume continues) was replaced, or hours later when that model's search began."""
    (tmp_path / "empty").mkdir()
    extra = [str(tmp_path / "empty") if a == "EMPTY" else a for a in extra]
    result = runner.invoke(app, ["sweep", "--models", "ridge", "--datasets", "steels_yield",
                                 "--workdir", str(tmp_path / "w")] + extra, env={"COLUMNS": "300"})
    assert result.exit_code == 2 and message in " ".join(result.output.split())
    assert not (tmp_path / "w").exists()


def test_sweep_asking_for_more_than_this_machine_has_fails_instead_of_waiting_for_ever(tmp_path):
    """Ray queues a trial it cannot place and only warns once a minute (seen: --gpus-per-trial 1 on
    a CPU machine waited until killed, its sweep.json already written)."""
    import os

    import torch

    cpus = os.cpu_count()
    base = ["sweep", "--models", "ridge", "--datasets", "steels_yield", "--workdir", str(tmp_path / "w")]
    result = runner.invoke(app, base + ["--cpus-per-trial", str(cpus + 1)], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and f"--cpus-per-trial {cpus + 1} asks for more than the {cpus} CPU(s)" in result.output
    gpus = torch.cuda.device_count()
    result = runner.invoke(app, base + ["--gpus-per-trial", str(gpus + 1)], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and f"--gpus-per-trial {gpus + 1}: torch sees" in result.output
    assert not (tmp_path / "w").exists()
