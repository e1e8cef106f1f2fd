"""Searches side by side (`--concurrent-searches`) on the embedded Ray: wall time, and how long
any search's first trial waited after the search started (a starving search waits long).

The same sweep (classical models on every matbench_steels fold: many short searches, whose last
trial and final fits leave slots idle) runs once per setting, one after another, each into its
own workdir; the figures go to benchmarks/RESULTS.md (section "concurrent searches").

    python benchmarks/concurrent_searches.py                       # 1 and 2 CPUs, 1 and 2 searches
    python benchmarks/concurrent_searches.py --settings 2x1,2x2    # CPUsxSEARCHES
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._results import load_now, machine, write_section  # noqa: E402

SECTION = "concurrent_searches"


def run_setting(cpus: int, searches: int, models: str, trials: int, seeds: int, root: Path) -> dict:
    """One sweep; its wall time and, from MLflow, each search's span and first-trial wait."""
    from mlflow.tracking import MlflowClient

    from harness.tuning.tracking import default_tracking_uri

    workdir = root / f"cpus{cpus}-searches{searches}"
    command = [sys.executable, "-m", "harness.cli", "sweep", "--models", models, "--datasets", "matbench_steels",
               "--num-samples", str(trials), "--max-epochs", "1", "--final-seeds", str(seeds), "--seed", "0",
               "--num-cpus", str(cpus), "--concurrent-searches", str(searches), "--reuse-actors",
               "--workdir", str(workdir)]
    start = time.time()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode != 0:
        raise SystemExit(f"sweep failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    client = MlflowClient(default_tracking_uri(workdir))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=5000)
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("stage") == "search"}
    first_trial: dict[str, int] = {}
    for r in runs:
        parent = r.data.tags.get("mlflow.parentRunId")
        if r.data.tags.get("stage") == "trial" and parent in parents:
            first_trial[parent] = min(first_trial.get(parent, r.info.start_time), r.info.start_time)
    waits = [(first_trial[p] - parents[p].info.start_time) / 1000 for p in parents if p in first_trial]
    finals = [r for r in runs if r.data.tags.get("stage") == "final"]
    # the most searches open at one moment (from their runs' start and end times)
    events = sorted([(r.info.start_time, 1) for r in parents.values()] +
                    [(r.info.end_time, -1) for r in parents.values()], key=lambda e: (e[0], e[1]))
    open_now = most = 0
    for _, step in events:
        open_now += step
        most = max(most, open_now)
    return {"cpus": cpus, "searches_asked": searches, "searches": len(parents), "wall_s": wall,
            "max_wait_s": max(waits), "mean_wait_s": sum(waits) / len(waits), "most_at_once": most,
            "finals_ok": sum("test_mae" in r.data.metrics for r in finals), "finals": len(finals)}


def render(rows: list[dict], models: str, trials: int, seeds: int, header: str) -> str:
    lines = [
        "## Concurrent searches on the embedded Ray (`benchmarks/concurrent_searches.py`)",
        "",
        f"`harness sweep --models {models} --datasets matbench_steels` (5 folds: one search per model and "
        f"fold), {trials} trials of 1 epoch per search, {seeds} final seeds, `--reuse-actors`, one setting "
        f"after another. *first-trial wait*: from a search's start to its first trial's start (MLflow run "
        f"times); a search starved by the others waits long. Since 2026-12-04 the searches share the slots "
        f"(at most one search per trial slot, each an equal share); before, one CPU with two searches let "
        f"the first search wait while the other thread ran every other search (first search finished last "
        f"of 15). {header}",
        "",
        "| CPUs | --concurrent-searches | searches open at once (most) | searches | wall s | searches/min | first-trial wait: max s | mean s | final fits with a test MAE |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cpus']} | {r['searches_asked']} | {r['most_at_once']} | "
            f"{r['searches']} | {r['wall_s']:.0f} | {r['searches'] / r['wall_s'] * 60:.1f} | "
            f"{r['max_wait_s']:.1f} | {r['mean_wait_s']:.1f} | {r['finals_ok']} of {r['finals']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="1x1,1x2,2x1,2x2", help="CPUSxSEARCHES, comma-separated")
    parser.add_argument("--models", default="linear,ridge,decision_tree")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--final-seeds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    header = f"Machine: {machine(1)}."
    rows = []
    with tempfile.TemporaryDirectory(prefix="harness-concurrent-") as tmp:
        for setting in args.settings.split(","):
            cpus, searches = (int(v) for v in setting.split("x"))
            row = run_setting(cpus, searches, args.models, args.trials, args.final_seeds, Path(tmp))
            print(row, flush=True)
            rows.append(row)
    body = render(rows, args.models, args.trials, args.final_seeds, header + f" Load at the end {load_now()}.")
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
