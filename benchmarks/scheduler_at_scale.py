"""Scheduler and MLflow at scale: many short trials through one `harness sweep` on a local
2-node Ray cluster (head + worker, 127.0.0.1) logging to a real MLflow server.

Measures wall time, trials/hour, the scheduling overhead per trial (wall time × trial slots
minus the time trials spent training, per trial) and checks that every reported epoch arrived
in MLflow. Records the figures in benchmarks/RESULTS.md (section "scheduler at scale").

    python benchmarks/scheduler_at_scale.py --trials 500 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlflow.tracking import MlflowClient  # noqa: E402

from benchmarks._results import machine, write_section  # noqa: E402
from tests.cluster_utils import harness, start_head, start_mlflow_server, start_worker, wait_for_nodes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cpus-per-trial", type=float, default=0.25)
    parser.add_argument("--head-cpus", type=int, default=1)
    parser.add_argument("--worker-cpus", type=int, default=2)
    args = parser.parse_args()
    # stop the cluster and server (finally below) also when the benchmark is terminated
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    tmp = Path(tempfile.mkdtemp(prefix="harness-scale-"))
    procs = []
    try:
        head, address = start_head(tmp, args.head_cpus)
        procs.append(head)
        procs.append(start_worker(tmp, address, args.worker_cpus))
        server, uri = start_mlflow_server(tmp)
        procs.append(server)
        wait_for_nodes(address, 2)
        workdir = tmp / "w"
        start = time.time()
        sweep = harness([
            "sweep", "--address", address, "--mlflow-uri", uri, "--workdir", str(workdir),
            "--models", "crabnet", "--datasets", "steels_yield", "--folds", "0", "--subsample", "120",
            "--num-samples", str(args.trials), "--max-epochs", str(args.epochs),
            "--grace-period", str(args.epochs), "--final-seeds", "1",
            "--cpus-per-trial", str(args.cpus_per_trial), "--reuse-actors",
            "--search-spaces", str(REPO / "tests" / "spaces"),
        ], tmp, "sweep")
        procs.append(sweep)
        rc = sweep.popen.wait()
        wall = time.time() - start
        if rc != 0:
            raise SystemExit(f"sweep failed ({rc}); log: {sweep.log}")

        client = MlflowClient(uri)
        exp = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(exp, "tags.stage = 'trial'", max_results=50000)
        train_seconds, points_expected, points_found = 0.0, 0, 0
        mapping = {}
        for f in (workdir / "trial_runs").glob("*.json"):
            mapping.update(json.loads(f.read_text()))
        for result_file in (workdir / "ray_results").glob("*/*/result.json"):
            lines = [json.loads(l) for l in result_file.read_text().splitlines() if l.strip()]
            train_seconds += sum(l.get("epoch_seconds", 0.0) for l in lines)
            points_expected += len(lines)
            points_found += len(client.get_metric_history(mapping[lines[0]["trial_id"]], "val_mae"))
        slots = int((args.head_cpus + args.worker_cpus) / args.cpus_per_trial)
        search_wall = _search_wall(runs)
        overhead = (search_wall * slots - train_seconds) / max(len(runs), 1)
        figures = {
            "trials": len(runs),
            "epochs per trial": args.epochs,
            "trial slots": slots,
            "sweep wall time (s, incl. start-up and final fit)": round(wall, 1),
            "search wall time (s, first trial start to last trial end)": round(search_wall, 1),
            "trials/hour": round(len(runs) / search_wall * 3600),
            "training time in trials (s)": round(train_seconds, 1),
            "scheduling overhead per trial (s·slot)": round(overhead, 2),
            "epoch results reported": points_expected,
            "epoch results in MLflow": points_found,
        }
        print(json.dumps(figures, indent=1))
        body = "\n".join(f"| {k} | {v} |" for k, v in figures.items())
        write_section(
            "scheduler_at_scale",
            f"## Scheduler and MLflow at scale (`benchmarks/scheduler_at_scale.py`)\n\n"
            f"`--trials {args.trials} --epochs {args.epochs}` (the sweep runs with `--reuse-actors`); {machine(1)}; "
            f"({args.head_cpus}+{args.worker_cpus} CPUs in a "
            f"2-node Ray cluster on 127.0.0.1, MLflow server with sqlite backend, "
            f"{args.cpus_per_trial} CPU per trial; tiny CrabNet (tests/spaces) on 120 rows):\n\n"
            f"| figure | value |\n|---|---:|\n{body}\n",
        )
    finally:
        for proc in reversed(procs):
            proc.stop()


def _search_wall(runs) -> float:
    starts = [r.info.start_time for r in runs]
    ends = [r.info.end_time for r in runs if r.info.end_time]
    return (max(ends) - min(starts)) / 1000.0


if __name__ == "__main__":
    main()
