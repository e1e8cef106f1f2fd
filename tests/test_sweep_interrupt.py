"""Ctrl+C during a search stops the sweep with a resume hint, leaves the search unfinished
(not judged on the trials so far), and `--resume` then completes it in the same MLflow runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness.tuning.tracking import default_tracking_uri

pytestmark = pytest.mark.slow

TRIALS = 4  # the Ctrl+C comes after 2 trial runs exist: at most 3 run before it


def _sweep(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "sweep", *args]


def _search_states(workdir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((workdir / "searches").glob("*.json"))]


def _trial_runs(workdir: Path):
    client = MlflowClient(default_tracking_uri(workdir))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=500)
    return [r for r in runs if r.data.tags.get("stage") == "trial"], runs


def _ctrl_c_once_trials_started(proc: subprocess.Popen, workdir: Path, searches: int, trials: int,
                                timeout: float) -> str:
    """Send one SIGINT once each of ``searches`` searches has ``trials`` trial runs; the sweep's
    output (it must exit within ``timeout`` s of the SIGINT, else it is killed)."""
    try:
        mapping = workdir / "trial_runs"
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            files = list(mapping.glob("*.json")) if mapping.is_dir() else []
            if len(files) == searches and all(len(json.loads(f.read_text() or "{}")) >= trials for f in files):
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the sweep ended before it could be interrupted:\n" + proc.stdout.read()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out


def _status(workdir: Path, env: dict) -> tuple[dict[str, list[str]], str]:
    """`harness status` as a user reads it: {model: row cells}, and the caption under the table."""
    result = subprocess.run([sys.executable, "-m", "harness.cli", "status", str(workdir)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    rows = {}
    for line in lines:
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│ ").split("│")]
            rows[cells[0]] = cells
    caption = next(l.strip() for l in lines if "searches done" in l)
    return rows, caption


def test_ctrl_c_stops_cleanly_and_resume_finishes_the_same_search(tmp_path):
    workdir = tmp_path / "w"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # two searches one after the other: the Ctrl+C comes during ridge's, before linear's starts
    proc = subprocess.Popen(
        _sweep("--models", "ridge,linear", "--datasets", "aflow__ael_bulk_modulus_vrh", "--subsample", "300",
               "--num-samples", str(TRIALS), "--max-epochs", "1", "--final-seeds", "1", "--workdir", str(workdir),
               "--num-cpus", "1", "--seed", "0"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    out = _ctrl_c_once_trials_started(proc, workdir, searches=1, trials=2, timeout=180)
    assert proc.returncode == 130, out
    assert f"harness sweep --resume {workdir.resolve()}" in " ".join(out.split())
    (state,) = _search_states(workdir)
    assert state["stage"] == "searching", "an interrupted search must not be judged on its trials so far"
    before, _ = _trial_runs(workdir)
    assert 1 <= len(before) < TRIALS
    rows, caption = _status(workdir, env)  # the search not yet started is listed, as pending
    assert rows["ridge"][3] == "searching" and rows["linear"][2:4] == ["fixed", "pending"]
    assert caption == "0 of 2 searches done · 1 pending · 1 searching"
    cut_off = {r.info.run_id for r in before if r.info.status == "RUNNING"}
    pause = 5.0
    time.sleep(pause)  # the sweep is stopped: the cut-off trial's cost must not include this

    done = subprocess.run(_sweep("--resume", str(workdir)), capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    states = {s["label"].split("/")[0]: s for s in _search_states(workdir)}
    assert sorted(states) == ["linear", "ridge"] and all(s["stage"] == "done" for s in states.values())
    assert "best_params" in states["ridge"]
    assert _status(workdir, env)[1] == "2 of 2 searches done"
    trials, runs = _trial_runs(workdir)
    assert len(trials) == 2 * TRIALS  # no duplicate run for a trial that was running at Ctrl+C
    for r in trials:  # the time a trial ran (the leaderboards' search cost), within its run's span
        span = (r.info.end_time - r.info.start_time) / 1000
        assert 0 < r.data.metrics["trial_seconds"] <= span - (pause if r.info.run_id in cut_off else 0)
    ridge = [r for r in trials if r.data.tags["model"] == "ridge"]
    # a classical trial cannot be pruned: the one cut off by Ctrl+C is re-run, not recorded as pruned
    assert [r.data.tags.get("trial_state") for r in ridge] == ["completed"] * TRIALS
    assert states["ridge"]["trials"] == {"completed": TRIALS, "pruned": 0, "failed": 0}
    assert {r.info.run_id for r in before} <= {r.info.run_id for r in ridge}
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finals = [r for r in runs if r.data.tags.get("stage") == "final"]
    assert len(finals) == 2 and all(r.data.metrics["test_mae"] > 0 for r in finals)
    # `harness status` gives each search's time: its trials' trial_seconds + its final fits' fit_seconds
    rows, _ = _status(workdir, env)
    for model in ("ridge", "linear"):
        seconds = sum(r.data.metrics["trial_seconds"] for r in trials if r.data.tags["model"] == model)
        seconds += sum(r.data.metrics["fit_seconds"] for r in finals if r.data.tags["model"] == model)
        assert float(rows[model][-2]) == pytest.approx(seconds / 3600, rel=1e-3)
        assert rows[model][-1] == "300"  # data_rows: the --subsample the search ran on (the time-left estimate scales by it)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_ctrl_c_during_final_fits_keeps_the_search_and_resume_fills_the_same_final_runs(tmp_path):
    workdir = tmp_path / "w"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Started with SIGINT ignored, as a `harness sweep … &` of a script or nohup inherits it: SIGINT
    # must still stop the final fits (Tune's handler only covers the searches).
    proc = subprocess.Popen(
        _sweep("--models", "crabnet", "--datasets", "steels_yield", "--folds", "0", "--num-samples", "1", "--max-epochs", "5",
               "--grace-period", "5", "--final-seeds", "2", "--workdir", str(workdir), "--num-cpus", "1",
               "--seed", "0"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=_ignore_sigint,
    )
    lines: list[str] = []
    try:
        for line in proc.stdout:  # the search runs to the end; Ctrl+C when the final fits start
            lines.append(line)
            if "final fits with seeds" in line:
                proc.send_signal(signal.SIGINT)
                break
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines) + out
    assert proc.returncode == 130, out
    assert f"harness sweep --resume {workdir.resolve()}" in " ".join(out.split())
    (state,) = _search_states(workdir)
    assert state["stage"] == "searched", "the finished search is kept; only the final fits are left to do"
    finals_before = dict(state["final_runs"])
    assert sorted(finals_before) == ["0", "1"]
    trials_before, _ = _trial_runs(workdir)
    assert len(trials_before) == 1 and trials_before[0].info.status == "FINISHED"

    done = subprocess.run(_sweep("--resume", str(workdir)), capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (state,) = _search_states(workdir)
    assert state["stage"] == "done" and state["final_runs"] == finals_before  # the same runs were filled
    trials, runs = _trial_runs(workdir)
    assert [r.info.run_id for r in trials] == [r.info.run_id for r in trials_before]  # no new search
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finals = {r.info.run_id: r for r in runs if r.data.tags.get("stage") == "final"}
    assert set(finals) == set(finals_before.values())
    assert all(r.info.status == "FINISHED" and r.data.metrics["test_mae"] > 0 for r in finals.values())


def test_ctrl_c_stops_searches_running_side_by_side_and_resume_finishes_both(tmp_path):
    """--concurrent-searches runs searches in threads, where Tune cannot catch SIGINT: the sweep
    must still stop on one Ctrl+C (it once ran on to the end of every running search)."""
    workdir, trials_each = tmp_path / "w", 4
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _sweep("--models", "ridge,linear", "--datasets", "aflow__ael_bulk_modulus_vrh", "--subsample", "300",
               "--num-samples", str(trials_each), "--max-epochs", "1", "--final-seeds", "1",
               "--workdir", str(workdir), "--num-cpus", "2", "--seed", "0", "--concurrent-searches", "2",
               "--reuse-actors"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    out = _ctrl_c_once_trials_started(proc, workdir, searches=2, trials=1, timeout=90)
    assert proc.returncode == 130, out
    assert f"harness sweep --resume {workdir.resolve()}" in " ".join(out.split())
    stages = sorted(s["stage"] for s in _search_states(workdir))
    # Two CPUs: one trial slot per search (one CPU would run them one after the other).
    # The Ctrl+C stopped what was running: mid-search ("searching") or before the final fits
    # ("searched"). A search may have finished ("done") just before it; not both (the other used
    # to run on to its end, and the sweep then exited 130).
    assert len(stages) == 2 and set(stages) <= {"searching", "searched", "done"} and stages != ["done", "done"]
    before, _ = _trial_runs(workdir)
    assert 2 <= len(before) < 2 * trials_each

    # where it runs may change on resume: here more searches side by side than the 2 CPUs hold
    done = subprocess.run(_sweep("--resume", str(workdir), "--concurrent-searches", "3"),
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ("--concurrent-searches 3: this machine holds 2 trial(s) of this size at once, so 2 searches "
            "side by side") in " ".join((done.stdout + done.stderr).split()), done.stdout + done.stderr
    assert json.loads((workdir / "sweep.json").read_text())["options"]["concurrent_searches"] == 3
    states = _search_states(workdir)
    assert [s["stage"] for s in states] == ["done", "done"]
    assert [s["trials"] for s in states] == [{"completed": trials_each, "pruned": 0, "failed": 0}] * 2
    trials, runs = _trial_runs(workdir)
    assert len(trials) == 2 * trials_each and {r.info.run_id for r in before} <= {r.info.run_id for r in trials}
    assert not [r for r in runs if r.info.status == "RUNNING"]
    finals = [r for r in runs if r.data.tags.get("stage") == "final"]
    assert len(finals) == 2 and all(r.data.metrics["test_mae"] > 0 for r in finals)
