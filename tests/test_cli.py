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
    result = runner.invoke(app, ["data", "list", "--suite", "crabnet28"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = [l for l in result.output.splitlines() if "│ crabnet28 │" in l]
    assert len(lines) == 28
    bulk = next(l for l in lines if "aflow__ael_bulk_modulus_vrh" in l)
    assert "4896" in bulk.replace(",", "") and "GPa" in bulk


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
