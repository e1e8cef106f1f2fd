"""``harness status WORKDIR``: where a sweep stands, read from its state files and MLflow.

``WORKDIR`` may also be a folder of sweep workdirs (the stages of ``scripts/first_leaderboard.sh``):
then one summary row per sweep."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

# the leaderboard's copy of the trials' metric name: harness.tuning.trial's pulls in torch
from harness.leaderboard.tables import TRIAL_SECONDS_KEY

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
    trials_of, runs_by_id = _sweep_runs(client, sweep)
    rows = []
    for state_file in sorted((workdir / "searches").glob("*.json")):
        state = json.loads(state_file.read_text())
        parent = state.get("parent_run_id")
        counts = dict.fromkeys(TRIAL_STATES, 0)
        best = math.inf
        seconds = 0.0  # trial time (``trial_seconds``, without the time the sweep was stopped) + fit time
        data_rows = math.nan  # the dataset's rows, as the search's runs record them
        if parent:
            children = trials_of.get(parent)
            if children is None:  # a search whose runs lack this sweep's id tag: ask for them alone
                children = client.search_runs(
                    [sweep["experiment_id"]],
                    f"tags.mlflow.parentRunId = '{parent}' and tags.stage = 'trial'",
                    max_results=10000,
                )
            for run in children:
                counts[run.data.tags.get("trial_state", "running")] = counts.get(run.data.tags.get("trial_state", "running"), 0) + 1
                best = min(best, run.data.metrics.get("best_val_mae", math.inf))
                seconds += run.data.metrics.get(TRIAL_SECONDS_KEY, 0.0)
                data_rows = _rows_of(run, data_rows)
        finals = []
        for run_id in state.get("final_runs", {}).values():
            run = runs_by_id.get(run_id) or client.get_run(run_id)
            seconds += run.data.metrics.get("fit_seconds", 0.0)
            data_rows = _rows_of(run, data_rows)
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
            "hours": seconds / 3600,
            "data_rows": data_rows,
        })
    rows += _pending(workdir, sweep["sweep_id"], {(r["model"], r["dataset"], r["split"]) for r in rows})
    frame = pd.DataFrame(rows)
    if not frame.empty:  # a search not started yet: its dataset's size as another search recorded it
        frame["data_rows"] = frame["data_rows"].fillna(frame.groupby("dataset")["data_rows"].transform("max"))
        subsample = (sweep.get("options") or {}).get("subsample")
        for dataset in frame.loc[frame["data_rows"].isna(), "dataset"].unique():  # else as the catalog counts it
            frame.loc[frame["dataset"] == dataset, "data_rows"] = _catalog_rows(dataset, subsample)
    return sweep, _rare_states_after_failed(frame)


def _sweep_runs(client: MlflowClient, sweep: dict) -> tuple[dict[str, list], dict[str, object]]:
    """All runs of the sweep in one paged query (not one query per search: 7 s for 48 searches).

    Returns the trial runs by parent (search) run id, and every run by its id.
    """
    trials_of: dict[str, list] = {}
    runs_by_id: dict[str, object] = {}
    token = None
    while True:
        page = client.search_runs([sweep["experiment_id"]], f"tags.sweep_id = '{sweep['sweep_id']}'",
                                  max_results=5000, page_token=token)
        for run in page:
            runs_by_id[run.info.run_id] = run
            if run.data.tags.get("stage") == "trial":
                trials_of.setdefault(run.data.tags.get("mlflow.parentRunId", ""), []).append(run)
            elif run.data.tags.get("stage") == "search":
                trials_of.setdefault(run.info.run_id, [])
        token = page.token
        if not token:
            return trials_of, runs_by_id


def _catalog_rows(dataset: str, subsample: int | None) -> float:
    """Rows of a catalog dataset whose source is local (NaN otherwise, or for a user's own file)."""
    from harness.data import count_rows

    try:
        rows = count_rows(dataset)
    except Exception:  # not in the catalog: a --dataset-file, or a name of another harness version
        return math.nan
    if rows is None:
        return math.nan
    return float(min(rows, subsample) if subsample else rows)


def _rows_of(run, known: float) -> float:
    text = run.data.tags.get("data_rows", "")
    return float(text) if text.isdigit() else known


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
                        "best_val_mae": None, "final_fits": "0", "test_mae": None, "hours": 0.0,
                        "data_rows": math.nan})
    return out


def hours_left(frame: pd.DataFrame) -> tuple[float, int]:
    """(hours of trials and final fits the unfinished searches still need, how many of those
    searches were guessed from all finished searches because their model has none finished).

    A search is expected to cost what its model's finished searches cost per dataset row, times
    its dataset's rows (the model's mean cost where a size is unknown), less what it has spent
    already. Costs are trial time as measured, so they include the machine's contention.
    NaN where no search has finished: nothing to go by."""
    done = frame[frame["stage"] == "done"] if not frame.empty else frame
    if done.empty:
        return math.nan, 0
    sized = done[done["data_rows"] > 0]
    per_row = (sized["hours"] / sized["data_rows"]).groupby(sized["model"]).mean()
    per_search = done.groupby("model")["hours"].mean()
    all_per_row = float((sized["hours"] / sized["data_rows"]).mean()) if len(sized) else math.nan
    left, guessed = 0.0, 0
    for row in frame[frame["stage"] != "done"].itertuples(index=False):
        rows = float(row.data_rows)
        if row.model in per_row.index and rows > 0:
            expected = per_row[row.model] * rows
        elif row.model in per_search.index:
            expected = per_search[row.model]
        else:
            guessed += 1
            expected = all_per_row * rows if rows > 0 and math.isfinite(all_per_row) else float(done["hours"].mean())
        left += max(float(expected) - float(row.hours), 0.0)
    return left, guessed


def trials_at_a_time(sweep: dict) -> int | None:
    """Trial slots of a sweep on this machine (its --num-cpus, else the CPU count, over
    --cpus-per-trial); None for a cluster or GPU trials, whose resources this machine does not see."""
    options = sweep.get("options") or {}
    if options.get("address") or float(options.get("gpus_per_trial") or 0) > 0:
        return None
    cpus = float(options.get("num_cpus") or os.cpu_count() or 1)
    return max(1, int(cpus // float(options.get("cpus_per_trial") or 1)))


def time_left_text(sweep: dict, frame: pd.DataFrame) -> str:
    """``~2.3 h of trial time left (…), ≈ 1.2 h at 2 trials at a time``; empty when nothing is
    left or nothing has finished to estimate from."""
    left, guessed = hours_left(frame)
    if not math.isfinite(left) or (frame["stage"] == "done").all():
        return ""
    how = "each model's cost per dataset row in its finished searches"
    if guessed:
        how += f"; {guessed} search{'es' * (guessed != 1)} of models with none finished: from all finished searches"
    text = f"~{left:.2g} h of trial and final-fit time left ({how})"
    slots = trials_at_a_time(sweep)
    if slots:
        text += f", ≈ {left / slots:.2g} h at {slots} trial{'s' * (slots != 1)} at a time"
    return text


def stage_counts(frame: pd.DataFrame) -> str:
    """``41 of 64 searches done · 1 searching · 22 pending``: the caption of ``harness status``."""
    if frame.empty:
        return "no search started yet"
    counts = frame["stage"].value_counts()
    done = int(counts.get("done", 0))
    rest = [f"{int(n)} {stage}" for stage, n in sorted(counts.items()) if stage != "done"]
    return " · ".join([f"{done} of {len(frame)} searches done", *rest])


def disk_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (a sweep's MLflow store, Ray results, caches)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file Ray or MLflow removed meanwhile
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def disk_text(workdir: Path) -> str:
    """``the workdir holds 12.3 GB; 41.0 GB free on its disk``: a long sweep's trials write
    results (and, until their search is decided, checkpoints) there."""
    free = shutil.disk_usage(workdir).free
    return f"the workdir holds {disk_bytes(workdir) / 1e9:.3g} GB; {free / 1e9:.3g} GB free on its disk"


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
            "hours": float(frame["hours"].sum()) if not frame.empty else 0.0,
            "hours_left": hours_left(frame)[0] if not frame.empty and (frame["stage"] != "done").any() else 0.0,
            "disk_gb": round(disk_bytes(workdir) / 1e9, 3),
        })
    return _rare_states_after_failed(pd.DataFrame(rows))
