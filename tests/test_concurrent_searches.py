"""Searches run side by side (``--concurrent-searches``) share the cluster fairly: none waits
while newer searches take its slot.

Found on 2026-12-04 (classical models on matbench, one CPU, two searches): Ray does not serve
waiting resource requests oldest first, and the first search's first trial stayed PENDING for
24 minutes while the other thread ran ten searches, one after another, through the one slot.
Reproduced in 2 minutes: linear/matbench_steels/fold0 finished last of 15 searches.
"""

from __future__ import annotations

import contextlib
import io
import sys

import pytest
from mlflow.tracking import MlflowClient

from harness.tuning.search import fair_share
from harness.tuning.sweep import SweepOptions, run_sweep
from harness.tuning.tracking import default_tracking_uri


@pytest.mark.parametrize(("slots", "searches", "asked", "expected"), [
    (1, 2, None, (1, 1)),   # one slot: one search at a time, never two waiting for it
    (2, 2, None, (2, 1)),   # one trial each
    (4, 2, None, (2, 2)),
    (5, 2, None, (2, 2)),   # an equal share: never more than the cluster holds
    (16, 1, None, (1, 16)),  # a single search takes the whole cluster, as before
    (2, 2, 3, (2, 3)),      # --max-concurrent-trials is taken as asked
])
def test_fair_share_never_asks_for_more_slots_than_the_cluster_holds(slots, searches, asked, expected):
    assert fair_share(slots, searches, asked) == expected
    at_once, per_search = fair_share(slots, searches, None)
    assert at_once * per_search <= slots


@pytest.mark.slow
def test_two_concurrent_searches_on_one_cpu_finish_in_plan_order(tmp_path):
    """With one trial slot the searches must run in the order planned; with the bug the first
    search finished after every other one."""
    workdir = tmp_path / "w"
    log = io.StringIO()
    try:
        with contextlib.redirect_stderr(log):
            outcomes = run_sweep(SweepOptions(
                models=["linear", "ridge"], datasets=["matbench_steels"], folds=[0, 1], num_samples=2,
                max_epochs=1, final_seeds=2, workdir=workdir, seed=0, num_cpus=1,
                concurrent_searches=2, reuse_actors=True,
            ))
    finally:
        sys.stderr.write(log.getvalue())
    plan = ["linear/matbench_steels/fold0", "linear/matbench_steels/fold1",
            "ridge/matbench_steels/fold0", "ridge/matbench_steels/fold1"]
    assert [f"{o.model}/{o.dataset}/{o.split}" for o in outcomes] == plan
    # two final fits each, one at a time (the second waits in the driver for the one slot)
    assert all(len(o.test_mae) == 2 and min(o.test_mae) > 0 for o in outcomes)
    assert "one search at a time" in log.getvalue()

    client = MlflowClient(default_tracking_uri(workdir))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=100)
    searches = {r.info.run_name: r for r in runs if r.data.tags.get("stage") == "search"}
    assert sorted(searches) == sorted(plan)
    spans = [(searches[name].info.start_time, searches[name].info.end_time) for name in plan]
    for (_, end), (next_start, _) in zip(spans, spans[1:]):
        assert end <= next_start, f"searches overlapped or ran out of order: {spans}"
    # every search's trials ran inside its own span (none waited for the next search)
    for r in runs:
        if r.data.tags.get("stage") == "trial":
            start, end = spans[plan.index(r.data.tags["model"] + "/matbench_steels/" + r.data.tags["split"])]
            assert start <= r.info.start_time <= end
