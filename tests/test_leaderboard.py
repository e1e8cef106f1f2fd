"""Leaderboards from a real MLflow store.

Golden test: one module-scoped REAL short sweep (CrabNet + HotCrab, steels_yield from the
crabnet28 wheel, CV folds 0 and 1, 2 trials, 2 epochs, 2 final seeds, 150 rows); the pages
must show exactly the numbers recomputed here straight from MLflow (metrics, tags, run times,
the ``predictions_test.csv`` artifacts). Then a copy of that store with a final run missing
its metric, failed final runs and a dataset without final runs; and a synthetic matbench
store (real official folds, made-up predictions) for the Matbench submission file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from mlflow.tracking import MlflowClient
from scipy.stats import wilcoxon

from harness.leaderboard.build import write_all, write_leaderboard
from harness.leaderboard.plots import _palette_png, _value_axis, model_style, residual_axis_limit, style_index
from harness.tuning.tracking import default_tracking_uri, prepare_store

DATASET = "steels_yield"
SUITE = "crabnet28"
LABELS = {"crabnet": "CrabNet", "hotcrab": "HotCrab"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- helpers
def parse_tables(text: str) -> dict[str, list[list[dict[str, str]]]]:
    """Markdown -> {section heading: [tables]}, each table a list of {column: cell} rows."""
    out: dict[str, list] = {}
    section, lines = "", text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        if line.startswith("| ") and i + 1 < len(lines) and re.fullmatch(r"\|(-+:?\|)+", lines[i + 1]):
            header = _cells(line)
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, _cells(lines[i]))))
                i += 1
            out.setdefault(section, []).append(rows)
            continue
        i += 1
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]


def plain(cell: str) -> str:
    return cell.strip().strip("*").strip()


def number(cell: str) -> float:
    return float(plain(cell).replace(",", ""))


def mean_pm(cell: str) -> tuple[float, float]:
    head = plain(cell).split(" (")[0]
    mean, std = head.split("±")
    return float(mean), float(std)


def row_of(rows: list[dict], key: str, value: str) -> dict:
    hits = [r for r in rows if plain(r[key]) == value]
    assert len(hits) == 1, (key, value, rows)
    return hits[0]


def protocol_notes_of(text: str, row: dict) -> list[str]:
    """The notes a Test MAE row's last column points to (``[1], [3]``), from the list below the table."""
    listed = dict(re.findall(r"^(\d+)\. (.+)$", text.split("## Rank")[0], flags=re.M))
    refs = re.findall(r"\[(\d+)\]", row["differs from the published protocol"])
    return [listed[n] for n in refs]


def approx_shown(shown: float, exact: float, digits: int) -> None:
    """``shown`` is ``exact`` printed with ``digits`` significant digits.

    The page sums in its own order, so a value on a rounding tie (0.0005975 here,
    0.0005974999999999999 there) may round either way: allow half a unit in the last
    shown digit, no more, and require that ``shown`` has no more digits than that.
    """
    assert float(f"{shown:.{digits}g}") == shown, (shown, digits)
    if exact == 0:
        assert shown == 0
        return
    half_unit = 0.5 * 10 ** (math.floor(math.log10(abs(exact))) - digits + 1)
    assert abs(shown - exact) <= half_unit * (1 + 1e-9), (shown, exact, digits)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=5000)


# ----------------------------------------------------------------------------- the real sweep
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real sweep's MLflow store, and what MLflow holds, read here without harness code."""
    from harness.tuning.sweep import SweepOptions, run_sweep

    workdir = tmp_path_factory.mktemp("lb_sweep")
    run_sweep(SweepOptions(
        models=["crabnet", "hotcrab"], datasets=[DATASET], folds=[0, 1], num_samples=2, max_epochs=2,
        final_seeds=2, subsample=150, workdir=workdir, space_dir=Path("tests/spaces"), seed=0,
    ))
    uri = default_tracking_uri(workdir)
    client = MlflowClient(uri)
    runs = _all_runs(uri)
    preds = {}
    dl = tmp_path_factory.mktemp("lb_artifacts")
    for run in runs:
        if run.data.tags.get("stage") == "final":
            path = client.download_artifacts(run.info.run_id, "predictions_test.csv", str(dl / run.info.run_id))
            preds[run.info.run_id] = pd.read_csv(path, dtype={"id": str})
    out = tmp_path_factory.mktemp("lb_out")
    page = write_leaderboard(SUITE, uri, out)
    return {"workdir": workdir, "uri": uri, "runs": runs, "preds": preds, "out": out, "page": page}


def _finals(store, model):
    return [r for r in store["runs"] if r.data.tags.get("stage") == "final" and r.data.tags["model"] == model]


def expected(store, model) -> dict:
    """The numbers a page must show for (steels_yield, model), computed from MLflow directly."""
    finals = _finals(store, model)
    assert len(finals) == 4 and all(r.info.status == "FINISHED" for r in finals)
    by_seed: dict[str, list] = {}
    by_fold: dict[str, list] = {}
    for r in finals:
        by_seed.setdefault(r.data.tags["seed"], []).append(store["preds"][r.info.run_id])
        by_fold.setdefault(r.data.tags["split"], []).append(r.data.metrics["test_mae"])
    pooled = [float(np.mean(np.abs(pd.concat(f)["prediction"] - pd.concat(f)["target"]))) for _, f in sorted(by_seed.items())]
    folds = {k: float(np.mean(v)) for k, v in sorted(by_fold.items())}
    errors = pd.concat([pd.DataFrame({"id": p["id"], "err": np.abs(p["prediction"] - p["target"])})
                        for p in (store["preds"][r.info.run_id] for r in finals)]).groupby("id")["err"].mean()
    trials = [r for r in store["runs"] if r.data.tags.get("stage") == "trial" and r.data.tags["model"] == model]
    searches = {r.info.run_id: r for r in store["runs"] if r.data.tags.get("stage") == "search"}
    # a trial's cost is the time it ran (trial_seconds), which its run's start-to-end span bounds
    assert all(0 < t.data.metrics["trial_seconds"] <= (t.info.end_time - t.info.start_time) / 1000 for t in trials)
    cpu_h = sum(t.data.metrics["trial_seconds"] / 3600
                * float(searches[t.data.tags["mlflow.parentRunId"]].data.params["cpus_per_trial"]) for t in trials)
    final_cpu_h = sum(r.data.metrics["fit_seconds"] / 3600
                      * float(searches[r.data.tags["mlflow.parentRunId"]].data.params["cpus_per_trial"]) for r in finals)
    states = [t.data.tags["trial_state"] for t in trials]
    return {
        "pooled": (float(np.mean(pooled)), float(np.std(pooled, ddof=1))),
        "folds": (float(np.mean(list(folds.values()))), float(np.std(list(folds.values()), ddof=1))),
        "fold_mae": folds,
        "errors": errors,
        "trials": f"{states.count('completed')} / {states.count('pruned')} / {states.count('failed')}",
        "search_cpu_h": cpu_h,
        "final_cpu_h": final_cpu_h,
        "search_epochs": sum(t.data.metrics["epoch"] for t in trials),
        "final_epochs": sum(r.data.metrics["epochs_run"] for r in finals),
        "params": sorted({int(r.data.metrics["n_params"]) for r in finals}),
        "targets": pd.concat(store["preds"][r.info.run_id] for r in finals).drop_duplicates("id")["target"],
    }


# ----------------------------------------------------------------------------- golden
def test_suite_page_shows_exactly_the_numbers_in_mlflow(store):
    text = store["page"].read_text()
    tables = parse_tables(text)
    main = row_of(tables["Test MAE"][0], "dataset", DATASET)
    exp = {m: expected(store, m) for m in LABELS}
    for model, label in LABELS.items():
        mean, std = mean_pm(main[label])
        approx_shown(mean, exp[model]["pooled"][0], 4)
        approx_shown(std, exp[model]["pooled"][1], 2)
    assert main["over"] == "2 folds pooled, 2 seeds"
    # the published number stands beside ours, marked as such
    assert number(main["CrabNet (published)"]) == pytest.approx(91.75, abs=0.01)
    # bold = the best measured number; ranks follow the means
    best = min(LABELS, key=lambda m: exp[m]["pooled"][0])
    other = next(m for m in LABELS if m != best)
    assert main[LABELS[best]].startswith("**") and not main[LABELS[other]].startswith("**")
    ranks = row_of(tables["Rank"][0], "dataset", DATASET)
    assert number(ranks[LABELS[best]]) == 1 and number(ranks[LABELS[other]]) == 2
    average = row_of(tables["Rank"][0], "dataset", "average rank")
    assert plain(average[LABELS[best]].split(" (")[0]) == "1.00"
    # paired Wilcoxon test on per-sample errors of the two
    ea, eb = exp[best]["errors"], exp[other]["errors"]
    common = ea.index.intersection(eb.index)
    p = wilcoxon(ea.loc[common].to_numpy(), eb.loc[common].to_numpy()).pvalue
    sig = main["best two: paired test"]
    assert sig.startswith(f"{LABELS[best]} vs {LABELS[other]}: p = {p:.2g}") and f"n = {len(common)} test samples" in sig
    # MAD:MAE
    targets = exp[best]["targets"].to_numpy()
    mad = float(np.mean(np.abs(targets - targets.mean())))
    mad_row = row_of(tables["MAD:MAE"][0], "dataset", DATASET)
    approx_shown(number(mad_row["MAD of test targets"]), mad, 4)
    for model, label in LABELS.items():
        approx_shown(number(mad_row[label]), mad / exp[model]["pooled"][0], 3)
    # CV table: pooled beside mean ± std over folds, and each fold's MAE
    cv = tables["Cross-validation: pooled and per fold"][0]
    for model, label in LABELS.items():
        row = row_of(cv, "model", label)
        approx_shown(mean_pm(row["mean ± std over folds"])[0], exp[model]["folds"][0], 4)
        approx_shown(mean_pm(row["mean ± std over folds"])[1], exp[model]["folds"][1], 2)
        approx_shown(mean_pm(row["pooled MAE"])[0], exp[model]["pooled"][0], 4)
        shown = dict(part.split(": ") for part in row["per-fold MAE"].split(", "))
        for fold, value in exp[model]["fold_mae"].items():
            approx_shown(float(shown[fold]), value, 4)
    # budget and cost, per (dataset, model)
    for model, label in LABELS.items():
        assert any(line.startswith(f"| {DATASET} | {label} |") for line in text.splitlines())
        row = next(r for r in tables["Budget"][0] if plain(r["dataset"]) == DATASET and plain(r["model"]) == label)
        e = exp[model]
        assert row["trials (completed / pruned / failed)"] == e["trials"]
        assert row["final fits"] == "4 of 4" and row["subsample"] == "150" and row["max epochs"] == "2"
        assert number(row["epochs (search)"]) == e["search_epochs"]
        assert number(row["epochs (final)"]) == e["final_epochs"]
        approx_shown(number(row["search CPU-h"]), e["search_cpu_h"], 3)
        approx_shown(number(row["final CPU-h"]), e["final_cpu_h"], 3)
        assert row["search GPU-h"] == "0" and row["final GPU-h"] == "0"
        shown_params = [int(x.replace(",", "")) for x in row["parameters"].split("–")]
        assert shown_params == [e["params"][0], e["params"][-1]][: len(shown_params)] and len(shown_params) == min(2, len(e["params"]))
    # protocol differences are stated
    notes = "; ".join(protocol_notes_of(text, main))
    assert "subsample of 150 rows" in notes and "at most 2 epochs" in notes and "folds 0, 1 of 5" in notes


def test_csv_export_holds_the_table_numbers(store):
    results = pd.read_csv(store["out"] / SUITE / "results.csv")
    for model in LABELS:
        row = results[(results["kind"] == "measured") & (results["model"] == model)].iloc[0]
        e = expected(store, model)
        assert row["mae"] == pytest.approx(e["pooled"][0], rel=1e-12)
        assert row["mae_std"] == pytest.approx(e["pooled"][1], rel=1e-12)
        assert row["mean_folds"] == pytest.approx(e["folds"][0], rel=1e-12)
        assert row["search_cpu_h"] == pytest.approx(e["search_cpu_h"], rel=1e-9)
        assert row["fits_ok"] == 4 and row["fits_failed"] == 0
    assert (results["kind"] == "published").any()
    fits = pd.read_csv(store["out"] / SUITE / "fits.csv")
    by_run = {r.info.run_id: r for r in store["runs"]}
    assert len(fits) == 8
    for _, f in fits.iterrows():
        assert f["test_mae"] == pytest.approx(by_run[f["run_id"]].data.metrics["test_mae"], rel=1e-12)


def test_dataset_page_has_valid_plots(store):
    page = store["out"] / SUITE / f"{DATASET}.md"
    text = page.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    names = {Path(link).name for link in links}
    assert names == {"parity.png", "residuals.png", "learning_curves.png", "trial_curves.png", "pareto.png"}
    for link in links:
        png = (page.parent / link).read_bytes()
        assert png.startswith(PNG_SIGNATURE) and len(png) > 5_000, link
        assert b"Software" not in png and b"tIME" not in png  # nothing that varies between runs
        with Image.open(io.BytesIO(png)) as image:  # 8-bit palette: ~2.7x smaller than RGBA
            assert image.mode == "P" and image.width >= 400 and image.height >= 300, (link, image.mode, image.size)
    # the sweep logs train predictions too: the residual plot shows train and test
    assert "Residuals (prediction − true) of the train and test predictions" in text
    assert "residuals are not shown" not in text
    # the results table reads best first: ours by rank, then the published numbers
    results = parse_tables(text)["Results"][0]
    ours = [r for r in results if not r["model"].endswith("(published)")]
    assert [number(r["rank"]) for r in ours] == [1.0, 2.0]
    assert results[:2] == ours
    # the chosen hyperparameters are the final runs' params, floats to 4 significant digits
    for row in parse_tables(text)["Chosen hyperparameters"][0]:
        final = next(r for r in store["runs"] if r.data.tags.get("stage") == "final"
                     and r.data.tags["model_label"] == plain(row["model"]) and r.data.tags["split"] == row["split"])
        params = {k.split(".", 1)[1]: v for k, v in final.data.params.items()
                  if k.startswith(("model_params.", "train_params."))}
        shown = dict(pair.split("=", 1) for pair in row["hyperparameters (best trial of the search)"].split(", "))
        assert sorted(shown) == sorted(params)
        floats = [k for k, v in params.items() if re.fullmatch(r"-?\d+\.\d*(e-?\d+)?", v)]
        assert floats  # lr at least
        for key in floats:
            approx_shown(float(shown[key]), float(params[key]), 4)
    # every final fit is listed with its MLflow metric
    fits = parse_tables(text)["Final fits"][0]
    assert len(fits) == 8
    by_run = {r.info.run_id: r for r in store["runs"]}
    for row in fits:
        approx_shown(number(row["test MAE"]), by_run[row["MLflow run"].strip("`")].data.metrics["test_mae"], 4)


def test_regeneration_is_byte_identical_and_atomic(store, tmp_path):
    (store["out"] / SUITE / "stale.png").write_bytes(b"old")
    again = tmp_path / "again"
    write_leaderboard(SUITE, store["uri"], again)
    write_leaderboard(SUITE, store["uri"], store["out"])  # in place, over the first tree
    first, second = tree_bytes(store["out"]), tree_bytes(again)
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    assert "crabnet28/stale.png" not in first  # files the new tree does not hold are removed
    assert not [p for p in store["out"].iterdir() if p.name.startswith(".")]  # no temporary tree left
    assert "README.md" in first and "crabnet28.md" in first


def test_readme_has_index_protocols_and_the_command(store):
    text = (store["out"] / "README.md").read_text()
    index = row_of(parse_tables(text)["Index"][0], "suite", "[crabnet28](crabnet28.md)")
    assert index["final fits with a test MAE"] == "8 of 8"
    commits = {r.data.tags["git_commit"] for r in store["runs"] if r.data.tags.get("git_commit")}
    assert commits and all(f"`{c.removesuffix('-dirty')[:12]}" in index["commit"] for c in commits)
    assert len(index["commit"]) < 24 * len(commits)  # short hashes here, the full ones on the suite page
    for suite in ("crabnet28", "matbench", "structures"):
        assert f"### `{suite}`" in text
    assert "--models crabnet,hotcrab --datasets steels_yield --num-samples 2 --max-epochs 2" in text
    assert "--folds 0,1" in text and "--subsample 150" in text


# ----------------------------------------------------------------------------- degraded store
@pytest.fixture(scope="module")
def degraded(store, tmp_path_factory):
    """A copy of the store plus: a final run without test_mae, failed final runs, and a
    dataset whose search never reached final runs."""
    copy = tmp_path_factory.mktemp("lb_degraded")
    shutil.copy(store["workdir"] / "mlflow.db", copy / "mlflow.db")
    uri = default_tracking_uri(copy)
    client = MlflowClient(uri)
    base = next(r for r in store["runs"] if r.data.tags.get("stage") == "final" and r.data.tags["model"] == "crabnet")
    exp_id = base.info.experiment_id
    keep = {k: v for k, v in base.data.tags.items() if not k.startswith("mlflow.")}

    def run(stage, status, metrics=None, **tags):
        r = client.create_run(exp_id, tags={**keep, "stage": stage, **tags})
        for k, v in (metrics or {}).items():
            client.log_metric(r.info.run_id, k, v)
        client.set_terminated(r.info.run_id, status)
        return r.info.run_id

    # (a) steels_yield/CrabNet: one more fit of the same sweep, finished but without test_mae
    run("final", "FINISHED", {"train_mae": 1.0}, split="fold0", seed="2",
        **{"mlflow.parentRunId": base.data.tags["mlflow.parentRunId"]})
    # (b) expt_gap/CrabNet: both final fits failed
    new = {"sweep_id": "29990101-000000-aaaaaa", "data_subsample": "", "data_rows": "", "data_sha256": "",
           "unit": "eV", "target": "made up"}
    parent = run("search", "FINISHED", {"trials_completed": 1}, dataset="expt_gap", **new, split="fold0")
    for seed in ("0", "1"):
        run("final", "FAILED", dataset="expt_gap", split="fold0", seed=seed, error="boom",
            **new, **{"mlflow.parentRunId": parent})
    # (c) jdft2d/HotCrab: a finished final fit whose metric never reached the store
    run("final", "FINISHED", {}, dataset="jdft2d", model="hotcrab", model_label="HotCrab", split="fold0", seed="0", **new)
    # (d) castelli/CrabNet: the search ended without a completed trial, so no final runs
    parent = run("search", "FAILED", {"trials_failed": 1}, dataset="castelli", split="fold0",
                 final_status="no trial completed; nothing to evaluate", **new)
    run("trial", "FAILED", {}, dataset="castelli", split="fold0", trial_state="failed",
        trained_on="hotcrab/castelli/fold0", **new, **{"mlflow.parentRunId": parent})  # another search's
    out = tmp_path_factory.mktemp("lb_degraded_out")
    page = write_leaderboard(SUITE, uri, out)
    return {"uri": uri, "out": out, "text": page.read_text()}


def test_missing_metric_failed_runs_and_no_final_runs_are_shown_as_such(store, degraded):
    tables = parse_tables(degraded["text"])
    main = {plain(r["dataset"]): r for r in tables["Test MAE"][0]}
    assert set(main) == {DATASET, "expt_gap", "jdft2d", "castelli"}  # nothing silently dropped
    # (a) the extra fit without a metric is counted, the number stays that of the 4 good fits
    crab = main[DATASET]["CrabNet"]
    assert plain(crab).endswith("(no test_mae (1/5 fits))")
    approx_shown(mean_pm(crab)[0], expected(store, "crabnet")["pooled"][0], 4)
    # (b), (c), (d)
    assert plain(main["expt_gap"]["CrabNet"]) == "failed (2/2 fits)"
    assert plain(main["jdft2d"]["HotCrab"]) == "no test_mae (1/1 fits)"
    assert plain(main["castelli"]["CrabNet"]) == "no final runs (no trial completed; nothing to evaluate)"
    assert plain(main["castelli"]["HotCrab"]) == "not run"
    for dataset in ("expt_gap", "jdft2d", "castelli"):
        for label in LABELS.values():
            assert not re.fullmatch(r"[\d.]+", plain(main[dataset][label])), (dataset, label)  # never a number
        rank = row_of(tables["Rank"][0], "dataset", dataset)
        assert all(plain(rank[label]) == "—" for label in LABELS.values())
        mad = row_of(tables["MAD:MAE"][0], "dataset", dataset)
        assert mad["MAD of test targets"] == "n/a" and mad["test samples"] == "n/a"
    budget = [r for r in tables["Budget"][0] if plain(r["dataset"]) == "expt_gap"][0]
    assert budget["final fits"] == "0 of 2 (failed (2/2 fits))"
    assert budget["parameters"] == "n/a" and budget["final CPU-h"] == "n/a"  # unknown, not 0
    castelli = row_of(tables["Budget"][0], "dataset", "castelli")
    assert castelli["trials (completed / pruned / failed)"] == "0 / 0 / 1" and castelli["final fits"] == "0 of 0"
    # a trial that trained on another search's model is called out, the others are not
    notes = [line for line in degraded["text"].splitlines() if "trained on another search" in line]
    assert notes == ["- castelli / CrabNet: 1 trial(s) trained on another search's model/dataset/split "
                     "(`trained_on` hotcrab/castelli/fold0): this search's choice is suspect"]
    # each dataset still gets its page, saying which plot could not be drawn and why
    page = (degraded["out"] / SUITE / "castelli.md").read_text()
    assert "No plot: no final fit with logged test predictions." in page
    assert "no trial completed; nothing to evaluate" in page
    results = pd.read_csv(degraded["out"] / SUITE / "results.csv")
    failed = results[(results["dataset"] == "expt_gap") & (results["model"] == "crabnet")].iloc[0]
    assert math.isnan(failed["mae"]) and failed["fits_failed"] == 2 and failed["cell"] == "failed (2/2 fits)"


# ----------------------------------------------------------------------------- matbench export
def synthetic_matbench_store(workdir: Path, out: Path, dataset: str, runs: tuple, sweep_id: str) -> dict:
    """A store of final runs on a Matbench task with its official folds, made with the MLflow
    client: ``runs`` is (model, label, folds, prediction noise) per model, 2 seeds per fold."""
    from harness.data import load_dataset

    ds = load_dataset(dataset)
    uri = default_tracking_uri(workdir)
    exp_id = prepare_store(uri, workdir)
    client = MlflowClient(uri)
    rng = np.random.default_rng(0)
    preds = {}
    for model, label, folds, noise in runs:
        for k in folds:
            split = ds.split(f"fold{k}")
            tags = {"suite": "matbench", "dataset": ds.name, "model": model, "model_label": label,
                    "split": f"fold{k}", "split_scheme": ds.split_scheme, "unit": ds.unit, "target": ds.target,
                    "sweep_id": sweep_id, "data_subsample": "", "data_dropped": "0",
                    "data_rows": str(len(ds)), "max_epochs": "300", "num_samples": "4", "git_commit": "abc"}
            parent = client.create_run(exp_id, tags={**tags, "stage": "search", "seed": "0"})
            client.log_param(parent.info.run_id, "cpus_per_trial", "1.0")
            client.log_param(parent.info.run_id, "gpus_per_trial", "0.0")
            client.set_terminated(parent.info.run_id, "FINISHED")
            for seed in (0, 1):
                frame = ds.frame.iloc[split.test][["id", "formula", "target"]].copy()
                frame["prediction"] = frame["target"] + rng.normal(0, noise, len(frame))
                r = client.create_run(exp_id, tags={**tags, "stage": "final", "seed": str(seed),
                                                    "mlflow.parentRunId": parent.info.run_id})
                mae = float(np.mean(np.abs(frame["prediction"] - frame["target"])))
                for key, value in (("test_mae", mae), ("fit_seconds", 10.0), ("n_params", 1000.0), ("epochs_run", 300.0)):
                    client.log_metric(r.info.run_id, key, value)
                client.log_param(r.info.run_id, "model_params.d_model", "64")
                client.log_text(r.info.run_id, frame.to_csv(index=False), "predictions_test.csv")
                client.set_terminated(r.info.run_id, "FINISHED")
                preds[(model, k, seed)] = (frame, mae)
    page = write_leaderboard("matbench", uri, out)
    return {"ds": ds, "uri": uri, "out": out, "page": page, "preds": preds}


@pytest.fixture(scope="module")
def matbench_store(tmp_path_factory):
    """Final runs of two models on matbench_steels with its official folds: CrabNet on all 5
    folds (2 seeds each), HotCrab on folds 0-3 only, with smaller errors (so that ranking it
    against CrabNet's five folds would put it first)."""
    return synthetic_matbench_store(
        tmp_path_factory.mktemp("lb_matbench"), tmp_path_factory.mktemp("lb_matbench_out"), "matbench_steels",
        (("crabnet", "CrabNet", range(5), 90.0), ("hotcrab", "HotCrab", range(4), 40.0)), "20260101-000000-abcdef")


def _matbench_hash(d: dict) -> str:
    """matbench.util.hash_dictionary, written out again here."""
    def immutify(x):
        return {k: immutify(v) if isinstance(v, dict) else v for k, v in sorted(x.items())}
    return hashlib.sha256(json.dumps(immutify(d)).encode("utf-8")).hexdigest()


def test_matbench_submission_file_has_matbench_layout(matbench_store):
    ds, preds = matbench_store["ds"], matbench_store["preds"]
    path = matbench_store["out"] / "matbench" / "matbench_v0.1_crabnet" / "results.json.gz"
    doc = json.loads(gzip.decompress(path.read_bytes()))
    assert list(doc) == ["@module", "@class", "version", "tasks", "user_metadata", "benchmark_name", "datestamp", "hash"]
    assert doc["@class"] == "MatbenchBenchmark" and doc["benchmark_name"] == "matbench_v0.1"
    body = {k: v for k, v in doc.items() if k != "hash"}
    assert doc["hash"] == _matbench_hash(body)
    task = doc["tasks"]["matbench_steels"]
    assert task["@class"] == "MatbenchTask" and task["dataset_name"] == "matbench_steels"
    assert sorted(task["results"]) == [f"fold_{k}" for k in range(5)]
    for k in range(5):
        fold = task["results"][f"fold_{k}"]
        assert sorted(fold) == ["data", "parameters", "scores"]
        official = set(ds.frame["id"].iloc[ds.split(f"fold{k}").test])
        assert set(fold["data"]) == official  # keyed by exactly the official test mbids
        frame, mae = preds[("crabnet", k, 0)]  # the lowest seed's fit
        assert all(isinstance(v, float) for v in fold["data"].values())
        assert fold["data"][frame["id"].iloc[0]] == pytest.approx(frame["prediction"].iloc[0], rel=1e-12)
        assert fold["scores"]["mae"] == pytest.approx(mae, rel=1e-12)
        assert sorted(fold["scores"]) == ["mae", "mape", "max_error", "rmse"]
    # HotCrab lacks fold 4: no file, and the page says why
    assert not (matbench_store["out"] / "matbench" / "matbench_v0.1_hotcrab").exists()
    text = matbench_store["page"].read_text()
    sub = row_of(parse_tables(text)["Matbench submission files"][0], "model", "HotCrab")
    assert "fold(s) 4" in sub["tasks left out (why)"]
    # matbench headline: mean ± std over folds of the fold MAE (mean over seeds)
    row = row_of(parse_tables(text)["Test MAE"][0], "dataset", "matbench_steels")
    folds = [np.mean([preds[("crabnet", k, s)][1] for s in (0, 1)]) for k in range(5)]
    mean, std = mean_pm(row["CrabNet"])
    approx_shown(mean, float(np.mean(folds)), 4)
    approx_shown(std, float(np.std(folds, ddof=1)), 2)
    assert row["over"] == "4 folds × 2 seeds; 5 folds × 2 seeds"
    # HotCrab's 4 folds are not on equal terms with CrabNet's 5: flagged, not bold, not ranked,
    # not one of the best two, not on the MAE-vs-cost plot, although its MAE is lower
    assert plain(row["HotCrab"]).endswith("(4 of 5 folds: 0, 1, 2, 3; not ranked)")
    assert mean_pm(row["HotCrab"])[0] < mean and not row["HotCrab"].startswith("**")
    assert row["CrabNet"].startswith("**")
    assert row["best two: paired test"] == "only one model"
    ranks = row_of(parse_tables(text)["Rank"][0], "dataset", "matbench_steels")
    assert (ranks["CrabNet"], ranks["HotCrab"]) == ("1", "—")
    assert number(row["CrabNet (published)"]) == pytest.approx(107.316, abs=0.05)
    # regenerating gives the same bytes, gzip included
    again = write_all(matbench_store["uri"], matbench_store["out"] / "again", ["matbench"])[0].parent
    assert (again / "matbench" / "matbench_v0.1_crabnet" / "results.json.gz").read_bytes() == path.read_bytes()


def test_matbench_package_loads_the_submission_file(matbench_store, tmp_path):
    """Where the `matbench` package is installed, its own loader validates the file (hash,
    every fold, exactly the official test ids)."""
    bench = pytest.importorskip("matbench.bench")
    path = matbench_store["out"] / "matbench" / "matbench_v0.1_crabnet" / "results.json.gz"
    plain_json = tmp_path / "results.json"
    plain_json.write_bytes(gzip.decompress(path.read_bytes()))
    mb = bench.MatbenchBenchmark.from_file(str(plain_json))
    assert mb.tasks_map["matbench_steels"].all_folds_recorded


def test_residual_axis_ignores_the_last_percent_of_outliers():
    rng = np.random.default_rng(0)
    bulk = rng.normal(0.0, 10.0, 990)
    values = np.concatenate([bulk, np.full(10, 5000.0)])  # 1% far outliers, as on matbench_phonons
    limit = residual_axis_limit(values)
    assert np.percentile(np.abs(bulk), 95) < limit < 5000.0
    assert residual_axis_limit(np.zeros(5)) == 1.0  # a perfect fit still gets an axis


def test_palette_png_is_the_same_picture_smaller():
    """The palette PNG of a plot like the leaderboard's (antialiased lines and translucent markers
    in ten colours) differs from matplotlib's RGBA by under 1/255 on average, keeps every pure
    series colour, and is smaller."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.linspace(0, 10, 200)
    for i in range(10):
        ax.plot(x, np.sin(x + i), color=f"C{i}", lw=3)
        ax.scatter(x[::10], np.cos(x[::10] + i), color=f"C{i}", alpha=0.4, s=12)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    rgba = buf.getvalue()
    palette = _palette_png(rgba)
    with Image.open(io.BytesIO(rgba)) as a, Image.open(io.BytesIO(palette)) as b:
        assert b.mode == "P" and b.size == a.size
        before = np.asarray(a.convert("RGB"), dtype=float)
        after = np.asarray(b.convert("RGB"), dtype=float)
    assert np.abs(before - after).mean() < 1.0
    colours = {tuple(c) for c in after.reshape(-1, 3).astype(int)}
    from matplotlib.colors import to_rgb

    for i in range(10):  # each series' own colour (its 3-px line's core) survives exactly
        assert tuple(round(255 * v) for v in to_rgb(f"C{i}")) in colours, i
    assert len(palette) < len(rgba) / 1.5
    assert _palette_png(rgba) == palette  # deterministic


def test_every_model_of_a_full_suite_page_has_its_own_look_in_the_one_panel_plot():
    # 18 composition + 7 structure models can share a matbench page; the 10 default colours alone
    # gave AdaBoost and Ridge the same blue dot on the MAE-vs-cost plot
    styles = [model_style(k) for k in range(25)]
    assert len({(s["color"], s["marker"]) for s in styles}) == 25
    assert model_style(3) == {"color": "C3", "marker": "o"} and model_style(13)["marker"] != "o"
    # a model's look does not depend on which other models a page shows
    from harness.models import MODEL_FILES

    everyone = sorted(name for names in MODEL_FILES.values() for name in names)
    assert len(everyone) == 25 and sorted({style_index(m, []) for m in everyone}) == list(range(25))
    assert style_index("roost", ["roost"]) == style_index("roost", everyone) == everyone.index("roost")
    assert style_index("old_model", ["crabnet", "old_model"]) == 25


def test_value_axis_is_log_only_where_the_panel_spans_more_than_20x():
    from matplotlib.figure import Figure

    wide, narrow = Figure().subplots(1, 2)
    _value_axis(wide, np.array([2500.0, 140.0, 50.0, np.nan]))  # a diverged first epoch, then converged
    _value_axis(narrow, np.array([22.5, 22.51, 22.53]))  # a classical model's four trials
    assert wide.get_yscale() == "log" and narrow.get_yscale() == "linear"
    labels = [wide.yaxis.get_major_formatter()(v, 0) for v in (50.0, 100.0, 200.0)]
    assert labels == ["50", "100", "200"]  # plain numbers, not 5 x 10^1


def test_cost_notes_of_many_searches_are_one_line_per_kind():
    from types import SimpleNamespace

    from harness.leaderboard.render import _grouped_cost_notes

    span = "trial(s) without `trial_seconds` timed by their run's span"
    results = {("aflow", "rf"): SimpleNamespace(cost_notes=[f"4 {span}"]),
               ("aflow", "svr"): SimpleNamespace(cost_notes=[f"3 {span}"]),
               ("mp_bulk", "rf"): SimpleNamespace(cost_notes=[f"4 {span}", "1 final fit(s) without fit_seconds"]),
               ("mp_bulk", "svr"): SimpleNamespace(cost_notes=[])}
    tables = SimpleNamespace(results=results, labels={"rf": "RF", "svr": "SVR (RBF)"})
    assert _grouped_cost_notes(tables) == [
        f"- 11 {span}, in 3 searches (aflow: RF, SVR (RBF); mp_bulk: RF)",
        "- mp_bulk / RF: 1 final fit(s) without fit_seconds",  # a note of one search keeps its old form
    ]


def test_protocol_note_says_which_models_trained_shorter_than_their_recipe():
    """Fixed-length recipes name their epochs; early-stopping recipes (IRNet, ElemNet: until 200
    epochs without a better validation error) say so; models without a recipe length get nothing."""
    from harness.leaderboard.tables import PairResult, protocol_notes

    def pair(model: str, label: str, epochs: str) -> PairResult:
        return PairResult("matbench_steels", model, label, "s", max_epochs=epochs)

    results = [pair("irnet17", "IRNet-17", "10"), pair("elemnet", "ElemNet", "10"), pair("crabnet", "CrabNet", "10"),
               pair("roost", "Roost", "10"), pair("rf", "RF", "10"), pair("irnet48", "IRNet-48", "400")]
    notes = protocol_notes("matbench", "matbench_steels", {}, results, pd.DataFrame())
    assert notes == [
        "at most 10 epochs per fit, the paper's recipe trains 100 (Roost)",
        "at most 10 epochs per fit, the paper's recipe trains until 200 epochs pass without a better "
        "validation error (IRNet-17, ElemNet)",
        "at most 10 epochs per fit, the paper's recipe trains 300 (CrabNet)",
    ]


def test_protocol_note_names_the_published_numbers_its_caveat_concerns():
    """L-G-DCNN's published numbers were read off a bar chart: the note says which columns those are."""
    from harness.leaderboard.build import reference_results
    from harness.leaderboard.tables import protocol_notes, published_numbers

    published = published_numbers("crabnet28", ["aflow__ael_bulk_modulus_vrh"], reference_results())
    assert set(published["model"]) == {"Roost", "CrabNet", "HotCrab", "ElemNet", "RF", "L-G-DCNN", "L-G-DCNN-V1"}
    notes = protocol_notes("crabnet28", "aflow__ael_bulk_modulus_vrh", {}, [], published)
    assert notes == ["published L-G-DCNN, L-G-DCNN-V1: read off a bar chart (about 2 significant digits)"]


def _edit_record(folder: Path, suite: str, dataset: str, edit) -> None:
    path = folder / suite / dataset / "record.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def test_new_pages_replace_the_published_ones_only_when_they_hold_every_result(store, tmp_path):
    """scripts/publish_leaderboard.py's rule: no published (dataset, model) result may be lost,
    nor shown over fewer folds or seeds (read from the datasets' records)."""
    from harness.leaderboard.publishing import missing_results

    out = store["out"]
    assert missing_results(out, out) == []
    published = tmp_path / "published"
    shutil.copytree(out, published)
    n = {}

    def more_folds_and_a_roost(record):
        crabnet = next(r for r in record["results"] if r["model"] == "crabnet")
        n["crabnet"] = crabnet["n_units"]
        crabnet["n_units"] += 1
        record["results"].append({**crabnet, "model": "roost", "label": "Roost"})

    _edit_record(published, SUITE, DATASET, more_folds_and_a_roost)
    assert missing_results(published, out) == [
        f"{SUITE} / {DATASET} / CrabNet ({n['crabnet']} folds/seeds, published {n['crabnet'] + 1})",
        f"{SUITE} / {DATASET} / Roost (no result)",
    ]
    assert missing_results(out, published) == []  # the other way round nothing is lost


def test_readme_is_composed_from_the_suites_index_files(store, matbench_store, tmp_path):
    """README.md's rows come from each suite's index.json, so that the committed README can be
    composed again when one suite's pages are replaced from another store; it indexes the suites
    of its folder, those written there from another store too."""
    from harness.leaderboard.build import compose_readme

    entry = json.loads((store["out"] / SUITE / "index.json").read_text())
    index = row_of(parse_tables((store["out"] / "README.md").read_text())["Index"][0], "suite", f"[{SUITE}]({SUITE}.md)")
    assert entry["index"] == list(index.values())
    assert compose_readme(store["out"]) == (store["out"] / "README.md").read_bytes()
    both = tmp_path / "both"
    shutil.copytree(matbench_store["out"], both)
    write_leaderboard(SUITE, store["uri"], both)
    suites = [row["suite"] for row in parse_tables((both / "README.md").read_text())["Index"][0]]
    assert suites == [f"[{SUITE}]({SUITE}.md)", "[matbench](matbench.md)"]


def test_publishing_replaces_only_the_suites_the_new_pages_cover(store, matbench_store, tmp_path):
    """scripts/publish_leaderboard.py per suite: a new store's crabnet28 pages replace the
    published crabnet28 ones; the published matbench pages, from another store (and written
    before index.json existed), stay as they are and keep their README rows."""
    from harness.leaderboard.build import compose_readme
    from harness.leaderboard.publishing import publish_suites
    from harness.leaderboard.render import entry_from_readme

    published = tmp_path / "published"
    shutil.copytree(store["out"], published)
    shutil.copytree(matbench_store["out"] / "matbench", published / "matbench")
    shutil.copy(matbench_store["out"] / "matbench.md", published / "matbench.md")
    (published / "README.md").write_bytes(compose_readme(published))
    matbench_entry = (published / "matbench" / "index.json").read_bytes()
    (published / "matbench" / "index.json").unlink()  # as committed before index.json existed
    assert entry_from_readme((published / "README.md").read_text(), "matbench") == json.loads(matbench_entry)
    (published / SUITE / "old.png").write_bytes(b"from the earlier store")
    matbench_before = {k: v for k, v in tree_bytes(published).items() if k.startswith("matbench")}

    taken, lacking = publish_suites(published, store["out"], apply=True)
    assert (taken, lacking) == ({SUITE: [DATASET]}, {})
    after = tree_bytes(published)
    assert {k: v for k, v in after.items() if k.startswith(f"{SUITE}")} == {
        k: v for k, v in tree_bytes(store["out"]).items() if k.startswith(f"{SUITE}")}  # old.png gone
    assert {k: v for k, v in after.items() if k.startswith("matbench")} == matbench_before
    assert entry_from_readme(after["README.md"].decode(), "matbench") == json.loads(matbench_entry)
    suites = [row["suite"] for row in parse_tables(after["README.md"].decode())["Index"][0]]
    assert suites == [f"[{SUITE}]({SUITE}.md)", "[matbench](matbench.md)"]

    # a published crabnet28 result the new pages lack: its dataset is left as it is, nothing copied
    _edit_record(published, SUITE, DATASET, lambda record: record["results"].append(
        {**record["results"][0], "model": "roost", "label": "Roost"}))
    before = tree_bytes(published)
    taken, lacking = publish_suites(published, store["out"], apply=True)
    assert taken == {} and lacking == {SUITE: [f"{SUITE} / {DATASET} / Roost (no result)"]}
    assert tree_bytes(published) == before


def test_a_suite_page_is_composed_from_datasets_of_different_stores(matbench_store, tmp_path):
    """Publishing per dataset: pages of matbench_steels from one store (written before records
    existed) and of matbench_expt_gap from another make one suite page showing each dataset's
    numbers as its own store's page did, ranks averaged over both, both sweeps in the budget, and
    one Matbench submission file per model holding both stores' tasks."""
    from harness.leaderboard import matbench_export
    from harness.leaderboard.build import composed_files
    from harness.leaderboard.publishing import publish_suites
    from harness.leaderboard.records import read_records

    published = tmp_path / "published"
    shutil.copytree(matbench_store["out"], published)
    (published / "matbench" / "matbench_steels" / "record.json").unlink()  # as committed before records
    other = synthetic_matbench_store(tmp_path / "b", tmp_path / "b_out", "matbench_expt_gap",
                                     (("crabnet", "CrabNet", range(5), 0.5),), "20260202-000000-bcdefa")
    # the same pages before any fit had a test MAE: a dataset new to the pages waits for a result
    unmeasured = tmp_path / "unmeasured"
    shutil.copytree(other["out"], unmeasured)
    _edit_record(unmeasured, "matbench", "matbench_expt_gap",
                 lambda record: [r.update(value=None) for r in record["results"]])
    before = tree_bytes(published)
    assert publish_suites(published, unmeasured, apply=True) == ({}, {})
    assert tree_bytes(published) == before
    taken, lacking = publish_suites(published, other["out"], apply=True)
    assert (taken, lacking) == ({"matbench": ["matbench_expt_gap"]}, {})

    text = (published / "matbench.md").read_text()
    own = {"matbench_steels": matbench_store["page"].read_text(), "matbench_expt_gap": other["page"].read_text()}
    rows = parse_tables(text)["Test MAE"][0]
    assert [r["dataset"] for r in rows] == ["matbench_expt_gap", "matbench_steels"]
    for dataset, page in own.items():
        before = row_of(parse_tables(page)["Test MAE"][0], "dataset", dataset)
        now = row_of(rows, "dataset", dataset)
        for column in ("over", "CrabNet", "HotCrab", "best two: paired test"):
            assert now.get(column, "not run") == before.get(column, "not run"), (dataset, column)
    ranks = parse_tables(text)["Rank"][0][-1]
    assert ranks["dataset"] == "**average rank**" and ranks["CrabNet"] == "**1.00** (2 datasets)"  # first on both; HotCrab's 4 folds are not ranked
    readme = (published / "README.md").read_text()
    assert "`20260101-000000-abcdef`" in readme and "`20260202-000000-bcdefa`" in readme
    # CrabNet's submission: steels from the first store's file, expt_gap from the second's
    name = "matbench/matbench_v0.1_crabnet/results.json.gz"
    with gzip.open(published / name, "rt") as fh:
        merged = json.load(fh)
    assert sorted(merged["tasks"]) == ["matbench_expt_gap", "matbench_steels"]
    for dataset, store_out in (("matbench_steels", matbench_store["out"]), ("matbench_expt_gap", other["out"])):
        assert merged["tasks"][dataset] == matbench_export.file_blocks(store_out / name)[dataset]
    assert merged["hash"] == _matbench_hash({k: v for k, v in merged.items() if k != "hash"})
    assert not (published / "matbench" / "matbench_v0.1_hotcrab").exists()  # 4 of 5 folds: no task
    # every dataset has its record now, and composing the suite again from them gives the same files
    recs = read_records(published, "matbench")
    written = {d: json.loads((published / "matbench" / d / "record.json").read_text()) for d in recs}
    assert {d: r.get("legacy", False) for d, r in written.items()} == {"matbench_expt_gap": False, "matbench_steels": True}
    files = composed_files("matbench", recs, lambda model, task: matbench_export.file_blocks(
        published / f"matbench/matbench_v0.1_{model}/results.json.gz")[task])
    assert all((published / rel).read_bytes() == blob for rel, blob in files.items())

    # a store with CrabNet on 3 folds of steels and no HotCrab: steels stays as published
    fewer = synthetic_matbench_store(tmp_path / "c", tmp_path / "c_out", "matbench_steels",
                                     (("crabnet", "CrabNet", range(3), 90.0),), "20260303-000000-cdefab")
    before = tree_bytes(published)
    taken, lacking = publish_suites(published, fewer["out"], apply=True)
    assert taken == {} and lacking == {"matbench": ["matbench / matbench_steels / CrabNet (3 folds/seeds, published 5)",
                                                    "matbench / matbench_steels / HotCrab (no result)"]}
    assert tree_bytes(published) == before


def _mean_errors(preds: dict, model: str) -> pd.Series:
    """id -> |error| of the model's test predictions averaged over its seeds (a synthetic store's ``preds``)."""
    frames = [frame.assign(err=(frame["prediction"] - frame["target"]).abs())
              for (m, _, _), (frame, _) in preds.items() if m == model]
    return pd.concat(frames).assign(id=lambda f: f["id"].astype(str)).groupby("id")["err"].mean()


def test_a_dataset_takes_each_model_from_the_store_that_has_it_complete(matbench_store, tmp_path):
    """Publishing per model where both pages hold the dataset's run data (runs.json.gz): the
    published steels page (CrabNet on 5 folds, HotCrab on 4) takes HotCrab on 5 folds and a new
    Roost from another store and keeps CrabNet. Each model shows its own store's numbers, ranks and
    the paired test are computed again over the three (the best two come from different stores),
    the submission files hold each model's own predictions, and publishing the same pages again
    changes no byte."""
    from harness.leaderboard import matbench_export, rundata
    from harness.leaderboard.publishing import newer_models, publish_suites
    from harness.leaderboard.records import models_to_run

    published = tmp_path / "published"
    shutil.copytree(matbench_store["out"], published)
    other = synthetic_matbench_store(tmp_path / "b", tmp_path / "b_out", "matbench_steels",
                                     (("hotcrab", "HotCrab", range(5), 95.0), ("roost", "Roost", range(5), 130.0)),
                                     "20260202-000000-bcdefa")
    taken, lacking = publish_suites(published, other["out"], apply=True)
    assert (taken, lacking) == ({"matbench": ["matbench_steels (hotcrab, roost; kept crabnet)"]}, {})

    page = (published / "matbench" / "matbench_steels.md").read_text()
    rows = parse_tables(page)["Results"][0]
    assert [plain(r["model"]) for r in rows][:3] == ["CrabNet", "HotCrab", "Roost"]
    assert [plain(r["rank"]) for r in rows][:3] == ["1", "2", "3"]
    for label, source in (("CrabNet", matbench_store), ("HotCrab", other), ("Roost", other)):
        own = (source["out"] / "matbench" / "matbench_steels.md").read_text()
        before, now = row_of(parse_tables(own)["Results"][0], "model", label), row_of(rows, "model", label)
        for column in ("test MAE", "pooled MAE", "mean ± std over folds", "fits with a test MAE"):
            assert plain(now[column]) == plain(before[column]), (label, column)
    # the paired test of the best two, CrabNet (first store) against HotCrab (second)
    a, b = _mean_errors(matbench_store["preds"], "crabnet"), _mean_errors(other["preds"], "hotcrab")
    common = a.index.intersection(b.index).sort_values()
    expected = wilcoxon(a.loc[common].to_numpy(), b.loc[common].to_numpy())
    record = json.loads((published / "matbench" / "matbench_steels" / "record.json").read_text())
    sig = record["significance"]
    assert (sig["best"], sig["second"], sig["n"]) == ("crabnet", "hotcrab", 312)
    assert sig["p_value"] == pytest.approx(float(expected.pvalue), rel=1e-12)
    assert f"p = {float(expected.pvalue):.2g}" in page
    runs = rundata.load_runs_bytes((published / "matbench" / "matbench_steels" / rundata.RUNS).read_bytes())
    sweeps = {(r["model"], r["sweep_id"]) for r in runs["finals"]}
    assert sweeps == {("crabnet", "20260101-000000-abcdef"), ("hotcrab", "20260202-000000-bcdefa"),
                      ("roost", "20260202-000000-bcdefa")}
    for model, source in (("crabnet", matbench_store), ("hotcrab", other), ("roost", other)):
        name = f"matbench/matbench_v0.1_{model}/results.json.gz"
        assert matbench_export.file_blocks(published / name) == matbench_export.file_blocks(source["out"] / name)
    before = tree_bytes(published)
    assert publish_suites(published, other["out"], apply=True)[1] == {}
    assert tree_bytes(published) == before
    # a stage runs only what the published dataset still lacks
    assert models_to_run(published, ["matbench_steels"], ["crabnet", "hotcrab", "roost", "lgdcnn"], []) == ["lgdcnn"]
    # a model with a final fit still running is not taken: committed pages would show it running for good
    result = lambda model, running, units: {"model": model, "value": 1.0, "n_running": running, "n_units": units}  # noqa: E731
    assert newer_models(None, {"results": [result("a", 1, 5), result("b", 0, 2)]}) == ["b"]
    assert newer_models({"results": [result("b", 0, 3)]}, {"results": [result("b", 0, 2)]}) == []


def test_a_stage_runs_every_model_where_pages_predate_run_data(tmp_path):
    """Pages without run data are replaced only as a whole: a new store needs every planned model
    of the dataset, so a stage's models all run unless the dataset is complete."""
    from harness.leaderboard.records import models_to_run

    published = tmp_path / "published"
    shutil.copytree(Path(__file__).resolve().parent.parent / "leaderboards", published)
    for runs in published.glob("*/*/runs.json.gz"):
        runs.unlink()
    classical = ["rf", "linear", "ridge", "elasticnet", "svr", "adaboost", "decision_tree", "gradient_boosting"]
    fc = ["irnet17", "irnet48", "srnet17", "plainnet17", "elemnet", "roost"]
    attention = ["crabnet", "hotcrab", "lgdcnn", "lgdcnn_v1"]
    planned = classical + fc + attention
    assert models_to_run(published, ["matbench_steels"], classical, planned) == []  # complete
    _edit_record(published, "matbench", "matbench_steels",
                 lambda record: record.update(results=[r for r in record["results"] if r["model"] != "crabnet"]))
    assert models_to_run(published, ["matbench_steels"], classical, planned) == classical


def test_committed_pages_are_composed_again_from_their_records_byte_for_byte():
    """The committed leaderboards/ (records, or for pages written before records their exports
    and tables): composing each suite again gives its committed suite page, CSV exports,
    index.json and Matbench submission files byte for byte, so publishing one dataset changes
    nothing else on them."""
    from harness.leaderboard import matbench_export
    from harness.leaderboard.build import composed_files
    from harness.leaderboard.publishing import suites_in_pages
    from harness.leaderboard.records import read_records

    folder = Path(__file__).resolve().parent.parent / "leaderboards"
    suites = suites_in_pages(folder)
    assert {"crabnet28", "matbench"} <= set(suites)
    for suite in suites:
        files = composed_files(suite, read_records(folder, suite), lambda model, task: matbench_export.file_blocks(
            folder / suite / f"matbench_v0.1_{model}" / "results.json.gz")[task])
        assert f"{suite}.md" in files and f"{suite}/results.csv" in files
        differing = [rel for rel, blob in files.items() if (folder / rel).read_bytes() != blob]
        assert differing == [], differing


def test_committed_dataset_pages_are_computed_again_from_their_run_data():
    """Each committed dataset page with run data (runs.json.gz): computing it again from that run
    data alone gives its committed page, record and run data byte for byte (the plots too where
    this machine's matplotlib drew them; not compared, as a PNG's bytes depend on the library's
    version), so merging models into it changes nothing else on it."""
    from harness.leaderboard import rundata
    from harness.leaderboard.publishing import merge_dataset, run_data, suites_in_pages

    folder = Path(__file__).resolve().parent.parent / "leaderboards"
    checked = []
    for suite in suites_in_pages(folder):
        for path in sorted((folder / suite).glob("*/runs.json.gz")):
            dataset = path.parent.name
            runs = run_data(folder, suite, dataset)
            files = merge_dataset(suite, dataset, runs, rundata.empty(suite, dataset), []).files
            text = [rel for rel in files if not rel.endswith(".png")]
            assert sorted(text) == [f"{suite}/{dataset}.md", f"{suite}/{dataset}/record.json",
                                    f"{suite}/{dataset}/runs.json.gz"]
            differing = [rel for rel in text if (folder / rel).read_bytes() != files[rel]]
            assert differing == [], differing
            checked.append(dataset)
    assert {"matbench_steels", "matbench_jdft2d", "matbench_expt_gap"} <= set(checked)


def test_results_from_different_data_versions_are_shown_as_such(store, tmp_path):
    """One row's models ran on different data (another file, other rows dropped): the dataset page
    names each sha256 with its models and the Test MAE row points to a note saying so."""
    page = (store["out"] / SUITE / f"{DATASET}.md").read_text()
    (sha,) = {r.data.tags["data_sha256"] for r in store["runs"] if r.data.tags.get("stage") in ("search", "final")}
    assert f"data sha256 `{sha[:16]}`" in page and "versions of the data" not in store["page"].read_text()
    copy = tmp_path / "store"
    copy.mkdir()
    shutil.copy(store["workdir"] / "mlflow.db", copy / "mlflow.db")
    uri = default_tracking_uri(copy)
    client = MlflowClient(uri)
    other = "f" * 64
    for r in store["runs"]:
        if r.data.tags.get("model") == "hotcrab":
            client.set_tag(r.info.run_id, "data_sha256", other)
    out = tmp_path / "out"
    text = write_leaderboard(SUITE, uri, out).read_text()
    page = (out / SUITE / f"{DATASET}.md").read_text()
    assert f"data sha256 `{sha[:16]}` (CrabNet); `{other[:16]}` (HotCrab)" in page
    row = row_of(parse_tables(text)["Test MAE"][0], "dataset", DATASET)
    assert ("results from 2 versions of the data (different source files, rows or drops; data sha256 per model "
            "on the dataset page)") in protocol_notes_of(text, row)
