"""``harness status WORKDIR``: where a sweep stands, read from its state files and MLflow."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient


def sweep_status(workdir: Path) -> tuple[dict, pd.DataFrame]:
    """(sweep.json, one row per search: trials by state, best val MAE, final test MAE)."""
    workdir = Path(workdir)
    path = workdir / "sweep.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {workdir} is not a sweep directory")
    sweep = json.loads(path.read_text())
    client = MlflowClient(sweep["tracking_uri"])
    rows = []
    for state_file in sorted((workdir / "searches").glob("*.json")):
        state = json.loads(state_file.read_text())
        parent = state.get("parent_run_id")
        counts = {"running": 0, "completed": 0, "pruned": 0, "failed": 0}
        best = math.inf
        if parent:
            children = client.search_runs(
                [sweep["experiment_id"]],
                f"tags.mlflow.parentRunId = '{parent}' and tags.stage = 'trial'",
                max_results=10000,
            )
            for run in children:
                counts[run.data.tags.get("trial_state", "running")] = counts.get(run.data.tags.get("trial_state", "running"), 0) + 1
                best = min(best, run.data.metrics.get("best_val_mae", math.inf))
        finals = []
        for run_id in state.get("final_runs", {}).values():
            run = client.get_run(run_id)
            if run.info.status == "FINISHED" and "test_mae" in run.data.metrics:
                finals.append(run.data.metrics["test_mae"])
        label = state.get("label", state_file.stem)
        model, dataset, split = (label.split("/") + ["", "", ""])[:3]
        rows.append({
            "model": model, "dataset": dataset, "split": split, "stage": state.get("stage", "?"),
            **counts,
            "best_val_mae": None if math.isinf(best) else best,
            "final_fits": f"{len(finals)}/{len(state.get('final_runs', {}))}" if state.get("final_runs") else "0",
            "test_mae": (sum(finals) / len(finals)) if finals else None,
        })
    return sweep, pd.DataFrame(rows)
