"""``harness status WORKDIR``: where a sweep stands, read from its state files and MLflow.

``WORKDIR`` may also be a folder of sweep workdirs (the stages of ``scripts/first_leaderboard.sh``):
then one summary row per sweep."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

# Written by the sweep when it starts (and again on --resume): every search, as
# model/dataset/split, in the order they run. Sweeps started before it existed have none.
PLAN_FILE = "plan.json"
PENDING = "pending"  # the stage of a planned search that has not started
TRIAL_STATES = ("running", "completed", "pruned", "failed")  # a column each, always
RARE_TRIAL_STATES = ("lost",)  # a column only where such trials exist


def sweep_status(workdir: Path) -> tuple[dict, pd.DataFrame]:
    """(sweep.json, one row per search: trials by state, best val MAE, final test MAE).

    Searches of the sweep's plan that have not started are rows too, at stage ``pending``.
    """
    workdir = Path(workdir)
    path = workdir / "sweep.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {workdir} is neither a sweep's --workdir nor a folder of them")
    sweep = json.loads(path.read_text())
    client = MlflowClient(sweep["tracking_uri"])
    rows = []
    for state_file in sorted((workdir / "searches").glob("*.json")):
        state = json.loads(state_file.read_text())
        parent = state.get("parent_run_id")
        counts = dict.fromkeys(TRIAL_STATES, 0)
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
    rows += _pending(workdir, sweep["sweep_id"], {(r["model"], r["dataset"], r["split"]) for r in rows})
    return sweep, _rare_states_after_failed(pd.DataFrame(rows))


def _rare_states_after_failed(frame: pd.DataFrame) -> pd.DataFrame:
    """A ``lost`` column (where one exists) as counts, 0 in the other rows, right after ``failed``."""
    rare = [state for state in RARE_TRIAL_STATES if state in frame.columns]
    if not rare:
        return frame
    frame[rare] = frame[rare].fillna(0).astype(int)
    rest = [c for c in frame.columns if c not in rare]
    at = rest.index("failed") + 1
    return frame[rest[:at] + rare + rest[at:]]


def _pending(workdir: Path, sweep_id: str, started: set[tuple[str, str, str]]) -> list[dict]:
    path = workdir / PLAN_FILE
    plan = json.loads(path.read_text()) if path.exists() else {}
    if plan.get("sweep_id") != sweep_id:  # no plan, or the plan of an earlier sweep in this workdir
        return []
    out = []
    for label in plan.get("searches", []):
        model, dataset, split = (label.split("/") + ["", "", ""])[:3]
        if (model, dataset, split) not in started:
            out.append({"model": model, "dataset": dataset, "split": split, "stage": PENDING,
                        "running": 0, "completed": 0, "pruned": 0, "failed": 0,
                        "best_val_mae": None, "final_fits": "0", "test_mae": None})
    return out


def stage_counts(frame: pd.DataFrame) -> str:
    """``41 of 64 searches done · 1 searching · 22 pending``: the caption of ``harness status``."""
    if frame.empty:
        return "no search started yet"
    counts = frame["stage"].value_counts()
    done = int(counts.get("done", 0))
    rest = [f"{int(n)} {stage}" for stage, n in sorted(counts.items()) if stage != "done"]
    return " · ".join([f"{done} of {len(frame)} searches done", *rest])


def sweep_dirs(root: Path) -> list[Path]:
    """The sweep workdirs directly inside ``root`` (folders with a ``sweep.json``), by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "sweep.json").is_file())


def sweeps_summary(root: Path) -> pd.DataFrame:
    """One row per sweep workdir in ``root``: searches by stage and trials by state, summed."""
    rows = []
    for workdir in sweep_dirs(root):
        sweep, frame = sweep_status(workdir)
        stages = frame["stage"].value_counts() if not frame.empty else pd.Series(dtype=int)
        total = lambda col: int(frame[col].sum()) if not frame.empty else 0  # noqa: E731
        finals = [f.split("/") for f in frame["final_fits"]] if not frame.empty else []
        rows.append({
            "sweep": workdir.name, "sweep_id": sweep["sweep_id"],
            "searches": len(frame), "done": int(stages.get("done", 0)),
            "pending": int(stages.get(PENDING, 0)),
            "in_progress": int(len(frame) - stages.get("done", 0) - stages.get(PENDING, 0)),
            **{state: total(state) for state in TRIAL_STATES},
            # rarer states (``lost``: a trial closed by a resume after its driver was killed) only where they occur
            **{state: total(state) for state in frame.columns if state in RARE_TRIAL_STATES},
            "final_fits": f"{sum(int(f[0]) for f in finals)}/{sum(int(f[1]) for f in finals if len(f) == 2)}",
        })
    return _rare_states_after_failed(pd.DataFrame(rows))
