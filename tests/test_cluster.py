"""`harness sweep` on a real 2-node Ray cluster with a real MLflow server (all on 127.0.0.1).

The head node (1 CPU) and a worker node (2 CPUs) are separate `ray start` process groups; the
MLflow tracking server is a separate process. The sweeps run as separate `harness` processes,
so that the driver can be SIGKILLed and resumed. Every process is stopped by its pid.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.cluster_utils import (
    harness,
    start_head,
    start_mlflow_server,
    start_worker,
    wait_for_nodes,
)

SPACES = str(Path(__file__).parent / "spaces")
DATASET = "steels_yield"

pytestmark = pytest.mark.slow


def _start_cluster(tmp: Path):
    procs = []
    try:
        head, address = start_head(tmp, num_cpus=1)
        procs.append(head)
        worker = start_worker(tmp, address, num_cpus=2)
        procs.append(worker)
        server, uri = start_mlflow_server(tmp)
        procs.append(server)
        nodes = wait_for_nodes(address, 2)
        yield {"address": address, "uri": uri, "worker": worker, "nodes": nodes}
    finally:
        for proc in reversed(procs):
            proc.stop()


@pytest.fixture
def own_cluster(tmp_path):
    """A cluster for one test (one that kills a node)."""
    yield from _start_cluster(tmp_path)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One cluster and MLflow server shared by the tests that leave both intact (starting them
    took 16-18 s on an idle 2-core machine, 46-52 s beside other work); each test reads only its
    own sweep's runs."""
    yield from _start_cluster(tmp_path_factory.mktemp("cluster"))


def _sweep_args(cluster, workdir: Path, *extra: str) -> list[str]:
    return ["sweep", "--address", cluster["address"], "--mlflow-uri", cluster["uri"],
            "--workdir", str(workdir), "--datasets", DATASET, "--folds", "0", "--subsample", "150",
            "--search-spaces", SPACES, "--cpus-per-trial", "1", *extra]


def _runs(uri: str, stage: str | None, workdir: Path):
    """The runs of the sweep in ``workdir`` (of one ``stage``, or all): the store is shared."""
    if not (workdir / "sweep.json").exists():
        return []
    sweep_id = json.loads((workdir / "sweep.json").read_text())["sweep_id"]
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=5000)
    return [r for r in runs if r.data.tags.get("sweep_id") == sweep_id
            and (stage is None or r.data.tags.get("stage") == stage)]


def _wait(proc, timeout: float) -> int:
    try:
        return proc.popen.wait(timeout=timeout)
    except Exception:
        proc.stop()
        raise AssertionError(f"{proc.args} did not finish in {timeout} s; log: {proc.log.read_text()[-3000:]}")


def test_sweep_survives_losing_the_worker_node(own_cluster, tmp_path):
    cluster = own_cluster
    workdir = tmp_path / "w"
    worker_id = next(n["id"] for n in cluster["nodes"] if n["cpu"] == 2)
    proc = harness(_sweep_args(cluster, workdir, "--models", "crabnet", "--num-samples", "4",
                               "--max-epochs", "12", "--grace-period", "12", "--final-seeds", "1"),
                   tmp_path, "sweep")
    # Kill the worker node while one of its trials is mid-way: it has reported an epoch
    # but no more than half of them. (Killing on "RUNNING" alone raced: a trial seen at
    # its last epoch could finish before the SIGKILL, and then nothing had to move.)
    client = MlflowClient(cluster["uri"])
    deadline = time.time() + 300
    mid_way = []
    while time.time() < deadline and not mid_way:
        on_worker = [r for r in _runs(cluster["uri"], "trial", workdir)
                     if worker_id in r.data.tags.get("node_ids", "") and r.info.status == "RUNNING"]
        mid_way = [r for r in on_worker
                   if 1 <= len(client.get_metric_history(r.info.run_id, "val_mae")) <= 6]
        time.sleep(0.2)
    assert mid_way, "no trial on the worker node was seen between epochs 1 and 6"
    cluster["worker"].kill(signal.SIGKILL)
    assert _wait(proc, 900) == 0, proc.log.read_text()[-3000:]
    trials = _runs(cluster["uri"], "trial", workdir)
    assert len(trials) == 4, "one MLflow run per trial, also for retried trials"
    assert all(r.info.status == "FINISHED" for r in trials), [r.info.status for r in trials]
    assert all(r.data.tags["trial_state"] == "completed" for r in trials)
    moved = [r for r in trials if "," in r.data.tags["node_ids"]]
    assert moved, "a trial from the lost node was retried on the other node"
    for r in moved:  # the retried trial's history is whole, one point per epoch
        steps = [m.step for m in MlflowClient(cluster["uri"]).get_metric_history(r.info.run_id, "val_mae")]
        assert sorted(steps) == list(range(1, 13))
    assert all(r.info.status != "RUNNING" for r in _runs(cluster["uri"], None, workdir))


def test_trials_of_two_models_run_concurrently_on_both_nodes(cluster, tmp_path):
    workdir = tmp_path / "w"
    # 2 searches x 2 trials at a time ask for 4 CPU slots of the cluster's 3: both nodes
    # fill up and neither search can take the whole cluster
    proc = harness(_sweep_args(cluster, workdir, "--models", "crabnet,hotcrab", "--num-samples", "3",
                               "--max-epochs", "8", "--grace-period", "8", "--final-seeds", "1",
                               "--concurrent-searches", "2", "--max-concurrent-trials", "2"),
                   tmp_path, "sweep")
    assert _wait(proc, 600) == 0, proc.log.read_text()[-3000:]
    trials = _runs(cluster["uri"], "trial", workdir)
    assert len(trials) == 6 and all(r.info.status == "FINISHED" for r in trials)
    # every trial trained on its own search's model, dataset and split (a shared trainable name
    # once let one search's trials run with the other's context)
    for r in trials:
        assert r.data.tags["trained_on"] == "/".join(r.data.tags[k] for k in ("model", "dataset", "split"))
    used = {n for r in trials for n in r.data.tags["node_ids"].split(",")}
    assert used == {n["id"] for n in cluster["nodes"]}, "trials ran on both nodes"
    # the two searches overlapped in time
    spans = {}
    for r in trials:
        model = r.data.tags["model"]
        lo, hi = spans.get(model, (r.info.start_time, r.info.end_time))
        spans[model] = (min(lo, r.info.start_time), max(hi, r.info.end_time))
    (a0, a1), (b0, b1) = spans["crabnet"], spans["hotcrab"]
    assert a0 < b1 and b0 < a1
    assert len(_runs(cluster["uri"], "final", workdir)) == 2


def test_killed_driver_resumes_with_the_same_runs(cluster, tmp_path):
    workdir = tmp_path / "w"
    proc = harness(_sweep_args(cluster, workdir, "--models", "crabnet", "--num-samples", "5",
                               "--max-epochs", "8", "--grace-period", "8", "--final-seeds", "1"),
                   tmp_path, "sweep")
    deadline = time.time() + 400
    finished = []
    while time.time() < deadline:
        trials = _runs(cluster["uri"], "trial", workdir)
        finished = [r for r in trials if r.info.status == "FINISHED"]
        if len(finished) >= 2 and len(finished) < 5:
            break
        time.sleep(0.5)
    assert 2 <= len(finished) < 5, "driver should be killed mid-sweep"
    proc.kill(signal.SIGKILL)
    before = {r.info.run_id: (r.info.end_time, len(MlflowClient(cluster["uri"]).get_metric_history(r.info.run_id, "val_mae")))
              for r in finished}
    parent_before = [r.info.run_id for r in _runs(cluster["uri"], "search", workdir)]

    resumed = harness(["sweep", "--resume", str(workdir)], tmp_path, "resume")
    assert _wait(resumed, 900) == 0, resumed.log.read_text()[-3000:]
    assert "resuming the Tune experiment" in resumed.log.read_text()
    trials = _runs(cluster["uri"], "trial", workdir)
    # A trial started after Ray's last snapshot is not restored (Ray runs another in its place):
    # its run is tagged lost, never left RUNNING: KILLED if it was running, FINISHED if it had
    # ended before the kill (rare races: seen in 2026-12-03's full run and in CI on 2026-12-04).
    lost = [r for r in trials if r.data.tags.get("trial_state") == "lost"]
    # (no bound on how many: the 5 runs the resumed search does count are checked below)
    assert all(r.info.status in ("KILLED", "FINISHED") for r in lost)
    trials = [r for r in trials if r.data.tags.get("trial_state") != "lost"]
    assert len(trials) == 5, "same runs, no duplicates"
    assert [r.info.run_id for r in _runs(cluster["uri"], "search", workdir)] == parent_before
    client = MlflowClient(cluster["uri"])
    for r in trials:
        assert r.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_mae")]
        assert len(steps) == len(set(steps)), "no epoch logged twice"
        if r.info.run_id in before:  # finished before the kill: not run again
            assert (r.info.end_time, len(steps)) == before[r.info.run_id]
    finals = _runs(cluster["uri"], "final", workdir)
    assert len(finals) == 1 and "test_mae" in finals[0].data.metrics
    state = json.loads(next((workdir / "searches").glob("*.json")).read_text())
    assert state["stage"] == "done"


def test_sixteen_concurrent_trials_lose_no_metric_point(cluster, tmp_path):
    workdir = tmp_path / "w"
    proc = harness(_sweep_args(cluster, workdir, "--models", "crabnet", "--num-samples", "16",
                               "--max-epochs", "20", "--grace-period", "20", "--final-seeds", "1",
                               "--cpus-per-trial", "0.15"), tmp_path, "sweep")
    assert _wait(proc, 900) == 0, proc.log.read_text()[-3000:]
    client = MlflowClient(cluster["uri"])
    trials = _runs(cluster["uri"], "trial", workdir)
    assert len(trials) == 16
    # every result a trial reported (Ray's result.json, one line per report) is in MLflow
    mapping = {}
    for f in (workdir / "trial_runs").glob("*.json"):
        mapping.update(json.loads(f.read_text()))
    reported = 0
    for result_file in (workdir / "ray_results").glob("*/*/result.json"):
        lines = [json.loads(l) for l in result_file.read_text().splitlines() if l.strip()]
        run_id = mapping[lines[0]["trial_id"]]
        for key in ("val_mae", "train_loss", "val_r2"):
            history = client.get_metric_history(run_id, key)
            assert sorted(m.step for m in history) == [int(l["epoch"]) for l in lines]
        reported += len(lines)
    assert reported == 16 * 20
    # and they overlapped: at some moment many trials were running at once
    events = sorted([(r.info.start_time, 1) for r in trials] + [(r.info.end_time, -1) for r in trials])
    running, peak = 0, 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak >= 8, f"at most {peak} trials ran at once"
