"""MLflow (the only source of truth) -> leaderboard tables -> ``leaderboards/<suite>.md``.

For each (dataset, model) the leaderboard uses the final runs (``stage=final``) of the most
recent sweep that evaluated that pair, and shows test MAE mean ± std over seeds/folds. The
published numbers from ``reference_results.csv`` stand beside ours in columns marked
"(published)". The page holds nothing that is not derived from the store (no clock, no host),
so regenerating it from the same store gives the same bytes; it is written to a temporary
file and renamed into place, so a reader never sees half a page.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from harness.paths import REPO_ROOT, shared_dir

PACKAGED_REFERENCE = Path(__file__).resolve().parent.parent / "resources" / "reference_results.csv"


class LeaderboardError(RuntimeError):
    pass


def reference_results() -> pd.DataFrame:
    """Published numbers: ``../shared/reference_results.csv`` if present, else the packaged copy."""
    shared = shared_dir()
    path = shared / "reference_results.csv" if shared else None
    if path is None or not path.is_file():
        path = PACKAGED_REFERENCE
    return pd.read_csv(path)


def _search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=5000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def final_runs(tracking_uri: str, suite: str) -> pd.DataFrame:
    """One row per final run of ``suite``, restricted to each pair's latest sweep."""
    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return pd.DataFrame()
    rows = []
    for run in _search_all(client, experiments, f"tags.stage = 'final' and tags.suite = '{suite}'"):
        tags, metrics = run.data.tags, run.data.metrics
        rows.append({
            "run_id": run.info.run_id,
            "status": run.info.status,
            "dataset": tags.get("dataset", ""),
            "model": tags.get("model", ""),
            "model_label": tags.get("model_label", tags.get("model", "")),
            "unit": tags.get("unit", ""),
            "split": tags.get("split", ""),
            "seed": tags.get("seed", ""),
            "sweep_id": tags.get("sweep_id", ""),
            "hardware": tags.get("hardware", ""),
            "git_commit": tags.get("git_commit", ""),
            "max_epochs": tags.get("max_epochs", ""),
            "num_samples": tags.get("num_samples", ""),
            "subsample": tags.get("data_subsample", ""),
            "test_mae": metrics.get("test_mae", math.nan),
            "fit_seconds": metrics.get("fit_seconds", math.nan),
        })
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    latest = frame.groupby(["dataset", "model"])["sweep_id"].transform("max")
    return frame[frame["sweep_id"] == latest].reset_index(drop=True)


def trial_counts(tracking_uri: str, sweep_ids: list[str]) -> pd.DataFrame:
    """Trials per (dataset, model, sweep) by state, from the child runs of the searches."""
    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    rows = []
    for sweep in sorted(set(sweep_ids)):
        for run in _search_all(client, experiments, f"tags.stage = 'trial' and tags.sweep_id = '{sweep}'"):
            tags = run.data.tags
            rows.append({"sweep_id": sweep, "dataset": tags.get("dataset"), "model": tags.get("model"),
                         "state": tags.get("trial_state", "unknown")})
    if not rows:
        return pd.DataFrame(columns=["sweep_id", "dataset", "model", "completed", "pruned", "failed"])
    counts = pd.DataFrame(rows).pivot_table(
        index=["sweep_id", "dataset", "model"], columns="state", aggfunc="size", fill_value=0
    ).reset_index()
    for state in ("completed", "pruned", "failed"):
        if state not in counts:
            counts[state] = 0
    return counts


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """(dataset, model) -> mean, std (ddof=1), n of test MAE over the finished final runs."""
    done = runs[(runs["status"] == "FINISHED") & runs["test_mae"].notna()]
    grouped = done.groupby(["dataset", "model"])["test_mae"]
    return pd.DataFrame({
        "mean": grouped.mean(),
        "std": grouped.std(ddof=1),
        "n": grouped.size(),
    }).reset_index()


def fmt(mean: float, std: float, n: int) -> str:
    if n > 1 and not math.isnan(std):
        return f"{mean:.4g} ± {std:.2g}"
    return f"{mean:.4g}"


def render(suite: str, runs: pd.DataFrame, trials: pd.DataFrame, reference: pd.DataFrame) -> str:
    stats = summarize(runs)
    labels = runs.drop_duplicates("model").set_index("model")["model_label"].to_dict()
    models = sorted(labels, key=lambda m: labels[m].lower())
    datasets = sorted(runs["dataset"].unique(), key=str.lower)
    units = runs.drop_duplicates("dataset").set_index("dataset")["unit"].to_dict()
    ref = reference[(reference["suite"] == suite) & reference["dataset"].isin(datasets)]
    ref = ref[ref["metric"].isin(["mae_test", "mae_test_mean_folds"])]
    published = sorted(ref["model"].unique(), key=str.lower)

    header = ["dataset", "unit"] + [labels[m] for m in models] + [f"{p} (published)" for p in published]
    lines = [
        f"# Leaderboard: `{suite}`",
        "",
        "Test MAE, mean ± std over final fits (seeds × folds), lower is better. **Bold**: the best "
        "number in the row, measured or published. Columns marked *(published)* are numbers "
        "reported in the papers (see Sources), not measured by this harness; their protocol and "
        "budget may differ from ours.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|",
    ]
    for dataset in datasets:
        cells: list[tuple[float, str]] = []
        for model in models:
            hit = stats[(stats["dataset"] == dataset) & (stats["model"] == model)]
            if hit.empty:
                cells.append((math.inf, "—"))
            else:
                row = hit.iloc[0]
                cells.append((row["mean"], fmt(row["mean"], row["std"], int(row["n"]))))
        for model in published:
            hit = ref[(ref["dataset"] == dataset) & (ref["model"] == model)]
            cells.append((math.inf, "—") if hit.empty else (float(hit.iloc[0]["value"]), f"{float(hit.iloc[0]['value']):.4g}"))
        best = min(value for value, _ in cells)
        texts = [f"**{text}**" if value == best and math.isfinite(value) else text for value, text in cells]
        lines.append("| " + " | ".join([dataset, units.get(dataset, "")] + texts) + " |")

    lines += ["", "## Budget", "",
              "| dataset | model | trials (completed / pruned / failed) | max epochs | samples | final fits | subsample | hardware | sweep |",
              "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for (dataset, model), group in runs.groupby(["dataset", "model"], sort=True):
        sweep = group["sweep_id"].iloc[0]
        t = trials[(trials["sweep_id"] == sweep) & (trials["dataset"] == dataset) & (trials["model"] == model)]
        counts = "0 / 0 / 0" if t.empty else f"{int(t['completed'].sum())} / {int(t['pruned'].sum())} / {int(t['failed'].sum())}"
        finished = int((group["status"] == "FINISHED").sum())
        lines.append(
            f"| {dataset} | {labels[model]} | {counts} | {group['max_epochs'].iloc[0]} | "
            f"{group['num_samples'].iloc[0]} | {finished} of {len(group)} | "
            f"{group['subsample'].iloc[0] or 'all rows'} | {'; '.join(sorted(set(group['hardware'])))} | {sweep} |"
        )
    commits = sorted(set(runs["git_commit"]))
    lines += ["", f"Code: commit {', '.join(f'`{c}`' for c in commits)}.", ""]
    if published:
        lines += ["## Sources of published numbers", ""]
        for source in sorted(set(ref["source"])):
            lines.append(f"- {source}")
        lines.append("")
    return "\n".join(lines)


def write_leaderboard(suite: str, tracking_uri: str, out_dir: Path | None = None) -> Path:
    """Render ``<out_dir>/<suite>.md`` from the store and replace it atomically."""
    out_dir = Path(out_dir or REPO_ROOT / "leaderboards")
    runs = final_runs(tracking_uri, suite)
    if runs.empty:
        raise LeaderboardError(
            f"no final runs for suite {suite!r} in {tracking_uri}; run `harness sweep` first "
            f"(suites present are listed by `harness leaderboard --list`)"
        )
    text = render(suite, runs, trial_counts(tracking_uri, list(runs["sweep_id"])), reference_results())
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{suite}.md"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{suite}.", suffix=".md.tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def suites_in_store(tracking_uri: str) -> list[str]:
    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    suites = {run.data.tags.get("suite", "") for run in _search_all(client, experiments, "tags.stage = 'final'")}
    return sorted(s for s in suites if s)


def mean_test_mae(tracking_uri: str, suite: str, dataset: str, model: str) -> float:
    """Mean test MAE of the final runs used on the leaderboard (for checks and tests)."""
    runs = final_runs(tracking_uri, suite)
    hit = summarize(runs)
    row = hit[(hit["dataset"] == dataset) & (hit["model"] == model)]
    return float(row["mean"].iloc[0]) if not row.empty else float(np.nan)
