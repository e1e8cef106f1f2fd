"""Numbers behind the pages: headline MAE per (dataset, model) under the suite's protocol,
ranks, MAD:MAE ratios, pooled vs per-fold CV numbers, costs, paired tests, protocol notes.

Pure functions of a :class:`~harness.leaderboard.store.SuiteData`; no I/O.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.leaderboard.store import FAILED, NO_METRIC, OK, RUNNING, SuiteData

# Reported by every trial (harness.tuning.trial.TrialClock; not imported here: it pulls in torch).
TRIAL_SECONDS_KEY = "trial_seconds"

# ----------------------------------------------------------------------------- protocols
# How the headline number of each suite is aggregated (see leaderboards/README.md).
SEEDS, POOLED, FOLDS = "seeds", "pooled", "folds"
POOLED_SUITES = {"crabnet28"}  # CV sets: MAE pooled over folds, as the CrabNet paper reports them

PROTOCOLS: dict[str, str] = {
    "crabnet28": (
        "The 28 composition benchmarks of CrabNet / L-G-DCNN, read from the `crabnet==2.0.8` wheel. "
        "18 *extended* sets use their fixed train/val/test split: each model's hyperparameters are "
        "searched on train/val, the best configuration is refitted with K seeds, and the test MAE "
        "is the mean ± std over those K fits. 10 matbench-derived sets use CrabNet's own 5-fold "
        "files: one search per fold (on that fold's train/val only), K final fits per fold, and "
        "the headline is the MAE **pooled over folds** (all folds' test predictions of one seed "
        "concatenated), mean ± std over seeds, as the CrabNet paper reports it; the mean ± std "
        "over folds stands beside it in the cross-validation table."
    ),
    "matbench": (
        "Matbench v0.1 rules: the official 5 folds (KFold n=5, shuffle, random_state 18012019); "
        "hyperparameters are chosen using only each fold's training data (a random 10% of it is "
        "the validation set for the search and early stopping; Matbench defines only train/test); "
        "the headline is the mean ± std over folds of the fold test MAE (each fold's MAE "
        "averaged over its K final fits). Composition models run on the compositions of all 13 "
        "tasks (the sweep skips the three classification tasks); structure models on the 9 "
        "structure tasks, reading the structures of matbench's json (offline: matbench_phonons)."
    ),
    "structures": (
        "Crystal-structure datasets with DFT targets: a recorded seeded random 80/10/10 split "
        "(seed 0), hyperparameters searched on train/val, K seeds for the final fits, test MAE "
        "mean ± std over seeds. (Structure models on matbench_phonons follow the Matbench rules "
        "and appear on the `matbench` page.)"
    ),
    "jarvis": (
        "JARVIS-DFT dft_3d properties: a recorded seeded random 80/10/10 split (seed 0), K seeds "
        "for the final fits, test MAE mean ± std over seeds."
    ),
    "custom": (
        "A user's own dataset: a recorded seeded random 80/10/10 split, K seeds for the final "
        "fits, test MAE mean ± std over seeds."
    ),
}

# Published numbers whose dataset has another name in reference_results.csv, and what differs.
REFERENCE_ALIASES: dict[tuple[str, str], tuple[str, str, str]] = {
    ("structures", "mp_2018_subset:formation_energy_per_atom"): (
        "mp_2018", "formation_energy_per_atom",
        "published mp_2018 numbers are for the full MP 2018.6.1 set (69,239 structures, "
        "60000/5000/4239 split); ours is a 36,737-structure subset with a random 80/10/10 split"),
    ("structures", "mp_2018_subset:band_gap"): (
        "mp_2018", "band_gap",
        "published mp_2018 numbers are for the full MP 2018.6.1 set (69,239 structures, "
        "60000/5000/4239 split); ours is a 36,737-structure subset with a random 80/10/10 split"),
    ("crabnet28", "OQMD_Formation_Enthalpy"): (
        "oqmd", "formation_enthalpy",
        "IRNet's published OQMD number uses another OQMD snapshot and composition + structure "
        "attributes"),
}

SOURCE_NOTES = {
    "L-G-DCNN preprint 2024-07-08, Fig. 4": "read off a bar chart (about 2 significant digits)",
}


# ----------------------------------------------------------------------------- helpers
def finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def mean_std(values) -> tuple[float, float]:
    values = [float(v) for v in values]
    if not values:
        return math.nan, math.nan
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    return mean, std


def mad(targets: np.ndarray) -> float:
    """Mean absolute deviation of ``targets`` about their mean."""
    targets = np.asarray(targets, dtype=float)
    return float(np.mean(np.abs(targets - targets.mean()))) if len(targets) else math.nan


def fold_number(split: str) -> int | None:
    return int(split[4:]) if split.startswith("fold") and split[4:].isdigit() else None


def n_folds_of(scheme: str) -> int | None:
    """5 for "5-fold CV (...)" schemes."""
    head = scheme.split("-fold", 1)[0].strip()
    return int(head) if "-fold" in scheme and head.isdigit() else None


def paper_epochs(model: str) -> int | None:
    """Epochs of the model's published training recipe, if the registry knows them."""
    try:
        from harness.models import get_model

        epochs = get_model(model).train_defaults.get("epochs")
    except Exception:  # a model of another version of the harness: no recipe to compare
        return None
    return int(epochs) if epochs else None


def paper_patience(model: str) -> int | None:
    """Epochs without a better validation error after which the published recipe stops, where
    it trains to early stopping instead of for fixed epochs (the registry's ``paper_patience``)."""
    try:
        from harness.models import get_model

        return get_model(model).paper_patience
    except Exception:  # a model of another version of the harness
        return None


# ----------------------------------------------------------------------------- per pair
@dataclass
class PairResult:
    dataset: str
    model: str
    label: str
    sweep_id: str
    n_fits: int = 0
    n_ok: int = 0
    n_failed: int = 0
    n_no_metric: int = 0
    n_running: int = 0
    aggregate: str = SEEDS
    value: float = math.nan  # the headline MAE
    spread: float = math.nan  # its std (over seeds, or over folds)
    n_units: int = 0  # how many numbers the mean is over
    over: str = ""  # what the mean is over, in words
    mean_folds: float = math.nan
    std_folds: float = math.nan
    fold_mae: dict[str, float] = field(default_factory=dict)
    pooled: float = math.nan
    pooled_std: float = math.nan
    pooled_seeds: int = 0
    pooled_note: str = ""
    splits: list[str] = field(default_factory=list)
    ok_splits: list[str] = field(default_factory=list)
    seeds: list[str] = field(default_factory=list)
    no_final_reason: str = ""
    rank: float = math.nan
    mad_mae: float = math.nan
    # cost
    params: list[float] = field(default_factory=list)
    trials: dict[str, int] = field(default_factory=dict)
    search_epochs: float = math.nan
    final_epochs: float = math.nan
    search_cpu_h: float = math.nan
    search_gpu_h: float = math.nan
    final_cpu_h: float = math.nan
    final_gpu_h: float = math.nan
    cost_notes: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)  # shown in the cell beside the number
    max_epochs: str = ""
    num_samples: str = ""
    subsample: str = ""
    data_rows: str = ""
    hardware: list[str] = field(default_factory=list)
    git_commits: list[str] = field(default_factory=list)

    @property
    def has_value(self) -> bool:
        return finite(self.value)

    @property
    def total_hours(self) -> float:
        parts = [self.search_cpu_h, self.search_gpu_h, self.final_cpu_h, self.final_gpu_h]
        known = [p for p in parts if finite(p)]
        return float(sum(known)) if known else math.nan

    def problems(self) -> str:
        """What went wrong with the final fits, e.g. ``failed (1/3 fits)``; empty if nothing."""
        out = []
        for count, what in ((self.n_failed, FAILED), (self.n_no_metric, NO_METRIC), (self.n_running, RUNNING)):
            if count:
                out.append(f"{what} ({count}/{self.n_fits} fits)")
        return "; ".join(out + self.flags)


def _search_reason(searches: pd.DataFrame) -> str:
    if searches.empty:
        return "no final runs"
    notes = sorted({s for s in searches["final_status"] if s})
    if notes:
        return "no final runs (" + "; ".join(notes) + ")"
    if (searches["status"] == "RUNNING").any():
        return "no final runs (search not finished)"
    if searches["status"].isin(["FAILED", "KILLED"]).any():
        return "no final runs (search failed)"
    return "no final runs"


def _trial_hours(trial) -> float:
    """Hours a trial ran: its ``trial_seconds`` (summed over restores, without the time its sweep
    was stopped), else its run's start-to-end span (runs logged before trial_seconds existed)."""
    seconds = trial["metrics"].get(TRIAL_SECONDS_KEY)
    if finite(seconds):
        return float(seconds) / 3600
    if trial["trial_state"] == "lost":  # closed at the end of the resumed search: its span is not its work
        return math.nan
    if trial["end_time"] is None or trial["start_time"] is None or not finite(trial["end_time"]):
        return math.nan
    return (float(trial["end_time"]) - float(trial["start_time"])) / 3.6e6


def _resources(searches: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """search run id -> (cpus_per_trial, gpus_per_trial)."""
    out = {}
    for _, row in searches.iterrows():
        params = row["params"]
        out[row["run_id"]] = (float(params.get("cpus_per_trial", "nan")), float(params.get("gpus_per_trial", "nan")))
    return out


def pooled_per_seed(finals: pd.DataFrame, predictions: dict[str, pd.DataFrame]) -> dict[str, float] | None:
    """seed -> MAE over the concatenated test predictions of that seed's folds (None if any
    prediction file is missing)."""
    out = {}
    for seed, group in finals.groupby("seed", sort=True):
        frames = [predictions.get(r) for r in group["run_id"]]
        if any(f is None for f in frames):
            return None
        both = pd.concat(frames, ignore_index=True)
        out[seed] = float(np.mean(np.abs(both["prediction"].to_numpy(float) - both["target"].to_numpy(float))))
    return out


def pair_result(data: SuiteData, dataset: str, model: str) -> PairResult:
    pair = data.pairs[(data.pairs["dataset"] == dataset) & (data.pairs["model"] == model)].iloc[0]
    res = PairResult(dataset, model, pair["model_label"], pair["sweep_id"])
    sel = lambda frame: frame[(frame["dataset"] == dataset) & (frame["model"] == model)]  # noqa: E731
    finals, searches, trials = sel(data.finals), sel(data.searches), sel(data.trials)
    first = finals if not finals.empty else searches if not searches.empty else trials
    if not first.empty:
        row = first.iloc[0]
        res.max_epochs, res.num_samples = row["max_epochs"], row["num_samples"]
        res.subsample, res.data_rows = row["subsample"], row["data_rows"]
    res.n_fits = len(finals)
    states = finals["state"].tolist() if not finals.empty else []
    res.n_ok, res.n_failed = states.count(OK), states.count(FAILED)
    res.n_no_metric, res.n_running = states.count(NO_METRIC), states.count(RUNNING)
    res.splits = sorted(set(finals["split"]), key=lambda s: (fold_number(s) is not None, fold_number(s) or 0, s))
    if finals.empty:
        res.no_final_reason = _search_reason(searches)
    ok = finals[finals["state"] == OK]
    res.ok_splits = [s for s in res.splits if s in set(ok["split"])]
    res.seeds = sorted(set(ok["seed"]), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    cv = any(fold_number(s) is not None for s in res.splits)
    if not ok.empty:
        for split, group in ok.groupby("split", sort=False):
            res.fold_mae[split] = float(group["test_mae"].mean())
        res.fold_mae = {s: res.fold_mae[s] for s in res.ok_splits}
        if cv:
            res.mean_folds, res.std_folds = mean_std(res.fold_mae.values())
            per_seed = pooled_per_seed(ok, data.predictions)
            if per_seed is None:
                res.pooled_note = "test predictions missing for some fits"
            else:
                res.pooled, res.pooled_std = mean_std(per_seed.values())
                res.pooled_seeds = len(per_seed)
        n_seeds = len(res.seeds)
        folds_text = f"{len(res.ok_splits)} fold{'s' if len(res.ok_splits) != 1 else ''}"
        if not cv:
            res.aggregate = SEEDS
            res.value, res.spread = mean_std(ok["test_mae"])
            res.n_units = len(ok)
            res.over = f"{len(ok)} seed{'s' if len(ok) != 1 else ''}"
        elif data.suite in POOLED_SUITES and finite(res.pooled):
            res.aggregate = POOLED
            res.value, res.spread, res.n_units = res.pooled, res.pooled_std, res.pooled_seeds
            res.over = f"{folds_text} pooled, {n_seeds} seed{'s' if n_seeds != 1 else ''}"
        else:
            res.aggregate = FOLDS
            res.value, res.spread, res.n_units = res.mean_folds, res.std_folds, len(res.fold_mae)
            res.over = f"{folds_text} × {n_seeds} seed{'s' if n_seeds != 1 else ''}"
            if data.suite in POOLED_SUITES:
                res.over += f" (not pooled: {res.pooled_note})"
    # --- cost
    res.params = sorted({float(m["n_params"]) for m in finals["metrics"] if finite(m.get("n_params"))})
    counts: dict[str, int] = {}
    for state in trials["trial_state"] if not trials.empty else []:
        counts[state or "unknown"] = counts.get(state or "unknown", 0) + 1
    res.trials = counts
    # A trial reports what it trained on; a mismatch means its search chose hyperparameters on
    # another search's results (the shared trainable name of concurrent searches, now fixed).
    foreign = [t for _, t in trials.iterrows()
               if t["trained_on"] and t["trained_on"] != f"{t['model']}/{t['dataset']}/{t['split']}"] \
        if not trials.empty else []
    if foreign:
        res.cost_notes.append(f"{len(foreign)} trial(s) trained on another search's model/dataset/split "
                              f"(`trained_on` {foreign[0]['trained_on']}): this search's choice is suspect")
    resources = _resources(searches)
    epochs = [e for e in trials["epochs"] if finite(e)] if not trials.empty else []
    res.search_epochs = float(sum(epochs)) if epochs else math.nan
    if len(epochs) < len(trials):
        res.cost_notes.append(f"{len(trials) - len(epochs)} trial(s) without an epoch count")
    cpu, gpu, unknown, spans = 0.0, 0.0, 0, 0
    for _, t in trials.iterrows():
        cpus, gpus = resources.get(t["parent_run_id"], (math.nan, math.nan))
        hours = _trial_hours(t)
        if not finite(hours) or not finite(cpus):
            unknown += 1
            continue
        spans += not finite(t["metrics"].get(TRIAL_SECONDS_KEY))
        cpu += hours * cpus
        gpu += hours * (gpus if finite(gpus) else 0.0)
    if len(trials):
        if unknown < len(trials):
            res.search_cpu_h, res.search_gpu_h = cpu, gpu
        if unknown:
            res.cost_notes.append(f"{unknown} trial(s) without a known running time (no end time, a lost trial "
                                  "that reported no epoch, or no resources): not counted")
        if spans:
            res.cost_notes.append(f"{spans} trial(s) without `{TRIAL_SECONDS_KEY}` (which trials report since 2026-12-03) timed "
                                  "by their run's start-to-end span, which includes any time the sweep was stopped")
    final_epochs = [float(m["epochs_run"]) for m in finals["metrics"] if finite(m.get("epochs_run"))]
    res.final_epochs = float(sum(final_epochs)) if final_epochs else math.nan
    cpu, gpu, known = 0.0, 0.0, 0
    for _, f in finals.iterrows():
        seconds = f["metrics"].get("fit_seconds")
        cpus, gpus = resources.get(f["parent_run_id"], (math.nan, math.nan))
        if finite(seconds) and finite(cpus):
            cpu += float(seconds) / 3600 * cpus
            gpu += float(seconds) / 3600 * (gpus if finite(gpus) else 0.0)
            known += 1
    if known:
        res.final_cpu_h, res.final_gpu_h = cpu, gpu
    if known < len(finals):
        res.cost_notes.append(f"{len(finals) - known} final fit(s) without fit_seconds: not counted")
    # Mixed precision changes the cost (and may change the numbers): shown with the hardware.
    bf16 = any(p.get("precision") == "bf16" for p in searches["params"])
    res.hardware = sorted({h + (", bf16 mixed precision" if bf16 else "") for h in finals["hardware"] if h})
    res.git_commits = sorted({c for c in pd.concat([finals["git_commit"], searches["git_commit"]]) if c})
    return res


# ----------------------------------------------------------------------------- per suite
@dataclass
class Significance:
    dataset: str
    best: str = ""
    second: str = ""
    test: str = ""  # what was paired
    n: int = 0
    statistic: float = math.nan
    p_value: float = math.nan
    text: str = "—"


@dataclass
class SuiteTables:
    data: SuiteData
    results: dict[tuple[str, str], PairResult]
    mad: dict[str, float]
    n_test: dict[str, int]
    significance: dict[str, Significance]
    published: pd.DataFrame  # dataset, model (label), metric, value, source, note
    notes: dict[str, list[str]]  # dataset -> protocol differences
    info: dict[str, dict]  # dataset -> unit, target, split scheme, rows, sha
    average_rank: dict[str, tuple[float, int]]
    # What the suite page, index and exports need beyond the per-pair results (kept per dataset in
    # the records the suite page is composed from; see harness.leaderboard.records)
    fits: pd.DataFrame = field(default_factory=pd.DataFrame)  # fits.csv: one row per final fit
    sweeps: dict[str, dict] = field(default_factory=dict)  # sweep id -> its budget, per dataset
    ends: dict[str, float] = field(default_factory=dict)  # dataset -> end of its last run (ms)
    # (dataset, model) -> {"end_time": ms} (its task is in the Matbench submission) or {"left": why}
    submissions: dict[tuple[str, str], dict] = field(default_factory=dict)

    @property
    def datasets(self) -> list[str]:
        return self.data.datasets

    @property
    def models(self) -> list[str]:
        return self.data.models

    @property
    def labels(self) -> dict[str, str]:
        return self.data.labels

    def get(self, dataset: str, model: str) -> PairResult | None:
        return self.results.get((dataset, model))

    @property
    def published_labels(self) -> list[str]:
        return sorted(self.published["model"].unique(), key=str.lower) if not self.published.empty else []


def per_sample_errors(finals: pd.DataFrame, predictions: dict[str, pd.DataFrame]) -> pd.Series | None:
    """Test id -> absolute error averaged over the model's successful fits (seeds); None if a
    prediction file is missing."""
    ok = finals[finals["state"] == OK]
    frames = []
    for run_id in ok["run_id"]:
        frame = predictions.get(run_id)
        if frame is None:
            return None
        frames.append(pd.DataFrame({"id": frame["id"].astype(str),
                                    "err": np.abs(frame["prediction"].to_numpy(float) - frame["target"].to_numpy(float))}))
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True).groupby("id", sort=True)["err"].mean()


def significance(data: SuiteData, dataset: str, ranked: list[PairResult]) -> Significance:
    """Paired Wilcoxon signed-rank test between the two best models of ``dataset``."""
    from scipy.stats import wilcoxon

    sig = Significance(dataset)
    if len(ranked) < 2:
        sig.text = "only one model" if ranked else "—"
        return sig
    a, b = ranked[0], ranked[1]
    sig.best, sig.second = a.model, b.model
    sel = lambda m: data.finals[(data.finals["dataset"] == dataset) & (data.finals["model"] == m)]  # noqa: E731
    ea, eb = per_sample_errors(sel(a.model), data.predictions), per_sample_errors(sel(b.model), data.predictions)
    if ea is not None and eb is not None:
        common = ea.index.intersection(eb.index).sort_values()
        x, y = ea.loc[common].to_numpy(), eb.loc[common].to_numpy()
        sig.test, unit = "per-sample |error| on common test ids", "test samples"
    else:  # pair the fits by (split, seed)
        fa = sel(a.model)
        fb = sel(b.model)
        fa = fa[fa["state"] == OK].set_index(["split", "seed"])["test_mae"]
        fb = fb[fb["state"] == OK].set_index(["split", "seed"])["test_mae"]
        common = fa.index.intersection(fb.index).sort_values()
        x, y = fa.loc[common].to_numpy(), fb.loc[common].to_numpy()
        sig.test, unit = "test MAE of fits paired by (split, seed)", "paired fits"
    sig.n = len(x)
    head = f"{a.label} vs {b.label}"
    if sig.n == 0:
        sig.text = f"{head}: no common test samples"
        return sig
    if np.all(x == y):
        sig.text = f"{head}: identical errors (n = {sig.n} {unit})"
        return sig
    result = wilcoxon(x, y)
    sig.statistic, sig.p_value = float(result.statistic), float(result.pvalue)
    verdict = "significant" if sig.p_value < 0.05 else "not significant"
    sig.text = f"{head}: p = {sig.p_value:.2g}, {verdict} at 5% (Wilcoxon, n = {sig.n} {unit})"
    return sig


def published_numbers(suite: str, datasets: list[str], reference: pd.DataFrame) -> pd.DataFrame:
    rows = []
    ref = reference[reference["metric"].isin(["mae_test", "mae_test_mean_folds"])]
    for dataset in datasets:
        alias = REFERENCE_ALIASES.get((suite, dataset))
        ref_suite, ref_name, note = alias if alias else (suite, dataset, "")
        hits = ref[(ref["suite"] == ref_suite) & (ref["dataset"] == ref_name)]
        for _, hit in hits.iterrows():
            source_note = SOURCE_NOTES.get(hit["source"], "")
            rows.append({"dataset": dataset, "model": str(hit["model"]), "metric": hit["metric"],
                         "value": float(hit["value"]), "source": hit["source"],
                         "note": "; ".join(n for n in (note, source_note) if n),
                         "dataset_note": note, "source_note": source_note})
    frame = pd.DataFrame(rows, columns=["dataset", "model", "metric", "value", "source", "note",
                                        "dataset_note", "source_note"])
    # one number per (dataset, model): the first listed
    return frame.drop_duplicates(["dataset", "model"]).reset_index(drop=True)


def _dataset_info(data: SuiteData, dataset: str) -> dict:
    rows = pd.concat([data.finals[data.finals["dataset"] == dataset], data.searches[data.searches["dataset"] == dataset]])
    pick = lambda col: next((v for v in rows[col] if v), "")  # noqa: E731
    # each data version (sha256) the runs name, with the models that ran on it: more than one means
    # the results of one row came from different files, rows or drops, which the pages must say
    versions: dict[str, set[str]] = {}
    for sha, label in zip(rows["data_sha256"], rows["model_label"]):
        if sha:
            versions.setdefault(sha, set()).add(label)
    return {"unit": pick("unit"), "target": pick("target"), "split_scheme": pick("split_scheme"),
            "rows": pick("data_rows"), "subsample": pick("subsample"), "sha256": pick("data_sha256"),
            "versions": {sha: sorted(labels, key=str.lower) for sha, labels in sorted(versions.items())},
            "dropped": pick("data_dropped"), "input_kinds": sorted({k for k in rows["input_kind"] if k})}


def protocol_notes(suite: str, dataset: str, info: dict, results: list[PairResult], published: pd.DataFrame) -> list[str]:
    """Where this run's protocol differs from the published one (and from the suite's)."""
    notes = []
    if len(info.get("versions", {})) > 1:
        notes.append(f"results from {len(info['versions'])} versions of the data (different source files, rows "
                     f"or drops; data sha256 per model on the dataset page)")
    subs = sorted({r.subsample for r in results if r.subsample})
    if subs:
        notes.append(f"seeded random subsample of {', '.join(subs)} rows (published: all rows)")
    elif info.get("dropped") not in ("", "0", None):
        notes.append(f"{info['dropped']} invalid rows dropped")
    # (our epoch budget, the paper recipe's length) -> the models trained shorter than their recipe
    shorter: dict[tuple[int, int, str], list[str]] = {}
    for r in results:
        if not r.max_epochs.isdigit():
            continue
        paper, patience = paper_epochs(r.model), paper_patience(r.model)
        if paper and int(r.max_epochs) < paper:
            shorter.setdefault((int(r.max_epochs), paper, str(paper)), []).append(r.label)
        elif patience and int(r.max_epochs) < patience:
            recipe = f"until {patience} epochs pass without a better validation error"
            shorter.setdefault((int(r.max_epochs), patience, recipe), []).append(r.label)
    for (mine, _, recipe), labels in sorted(shorter.items()):
        notes.append(f"at most {mine} epochs per fit, the paper's recipe trains {recipe} ({', '.join(labels)})")
    k = n_folds_of(info.get("split_scheme", ""))
    if k:
        covered = sorted({s for r in results for s in r.ok_splits}, key=lambda s: fold_number(s) or 0)
        if covered and len(covered) < k:
            word = "fold" if len(covered) == 1 else "folds"
            notes.append(f"{word} {', '.join(str(fold_number(s)) for s in covered)} of {k} only")
    for note in sorted({n for n in published.get("dataset_note", []) if n}):
        notes.append(note)
    # a source's caveat (numbers read off a chart) names the published columns it concerns
    by_source_note: dict[str, set[str]] = {}
    for note, model in zip(published.get("source_note", []), published.get("model", [])):
        if note:
            by_source_note.setdefault(note, set()).add(model)
    for note, models in sorted(by_source_note.items()):
        notes.append(f"published {', '.join(sorted(models))}: {note}")
    return notes


def build_tables(data: SuiteData, reference: pd.DataFrame) -> SuiteTables:
    from scipy.stats import rankdata

    results: dict[tuple[str, str], PairResult] = {}
    for _, pair in data.pairs.iterrows():
        results[(pair["dataset"], pair["model"])] = pair_result(data, pair["dataset"], pair["model"])
    mads, n_test, sigs, notes, info = {}, {}, {}, {}, {}
    published = published_numbers(data.suite, data.datasets, reference)
    for dataset in data.datasets:
        info[dataset] = _dataset_info(data, dataset)
        ok = data.finals[(data.finals["dataset"] == dataset) & (data.finals["state"] == OK)]
        frames = [data.predictions[r] for r in ok["run_id"] if r in data.predictions]
        if frames:
            targets = pd.concat(frames, ignore_index=True).drop_duplicates("id")
            mads[dataset], n_test[dataset] = mad(targets["target"].to_numpy(float)), len(targets)
        else:
            mads[dataset], n_test[dataset] = math.nan, 0
        here = [r for (d, _), r in results.items() if d == dataset]
        # A model with results on fewer folds than another is not on equal terms (its MAE is over
        # other test sets): its cell says so, and it is neither ranked, bolded, nor one of the "best
        # two" (a 3-fold gradient boosting was ranked first above a 5-fold RF on expt_gap).
        k = n_folds_of(info[dataset]["split_scheme"])
        valued = flag_partial_folds(here, k)
        if valued:
            ranks = rankdata([r.value for r in valued], method="average")
            for r, rank in zip(valued, ranks):
                r.rank = float(rank)
                if finite(mads[dataset]) and r.value > 0:
                    r.mad_mae = mads[dataset] / r.value
        sigs[dataset] = significance(data, dataset, valued)
        notes[dataset] = protocol_notes(data.suite, dataset, info[dataset], here,
                                        published[published["dataset"] == dataset])
    ends = {}
    for dataset in data.datasets:
        times = [x for frame in (data.finals, data.searches, data.trials) if not frame.empty
                 for x in frame[frame["dataset"] == dataset]["end_time"] if finite(x)]
        ends[dataset] = float(max(times)) if times else math.nan
    return SuiteTables(data, results, mads, n_test, sigs, published, notes, info, average_ranks(data.models, results),
                       fits=fits_rows(data), sweeps=sweep_budgets(data), ends=ends)


def flag_partial_folds(here: list[PairResult], k: int | None) -> list[PairResult]:
    """Flag the dataset's results over fewer folds than another's; return the rankable ones, best first.

    A model with results on fewer folds than another is not on equal terms (its MAE is over
    other test sets): its cell says so, and it is neither ranked, bolded, nor one of the "best
    two" (a 3-fold gradient boosting was ranked first above a 5-fold RF on expt_gap)."""
    coverage = max((len(r.ok_splits) for r in here if r.has_value), default=0)
    for r in here:
        if r.has_value and k and len(r.ok_splits) < coverage:
            r.flags.append(f"{len(r.ok_splits)} of {k} folds: "
                           + ", ".join(str(fold_number(s)) for s in r.ok_splits) + "; not ranked")
    return sorted([r for r in here if r.has_value and not (k and len(r.ok_splits) < coverage)],
                  key=lambda r: (r.value, r.label.lower()))


def average_ranks(models: list[str], results: dict[tuple[str, str], PairResult]) -> dict[str, tuple[float, int]]:
    """model -> (mean rank over the datasets where it is ranked, how many)."""
    out = {}
    for model in models:
        ranks = [r.rank for (d, m), r in results.items() if m == model and finite(r.rank)]
        out[model] = (float(np.mean(ranks)) if ranks else math.nan, len(ranks))
    return out


FIT_METRICS = ("test_mae", "test_rmse", "test_r2", "train_mae", "train_rmse", "train_r2", "val_mae", "val_rmse",
               "val_r2", "n_params", "epochs_run", "fit_seconds")


def fits_rows(data: SuiteData) -> pd.DataFrame:
    """fits.csv: one row per final fit (status, metrics, hyperparameters, run id)."""
    rows = []
    for _, run in data.finals.iterrows():
        mx = run["metrics"]
        rows.append({
            "suite": data.suite, "dataset": run["dataset"], "model": run["model"], "label": data.labels[run["model"]],
            "split": run["split"], "seed": run["seed"], "status": run["status"], "state": run["state"],
            **{k: mx.get(k, math.nan) for k in FIT_METRICS},
            "has_test_predictions": run["run_id"] in data.predictions,
            "has_train_predictions": run["run_id"] in data.train_predictions,
            "hyperparameters": ";".join(f"{k}={v}" for k, v in params_of(run["params"]).items()),
            "hardware": run["hardware"], "sweep_id": run["sweep_id"], "git_commit": run["git_commit"],
            "run_id": run["run_id"],
        })
    return pd.DataFrame(rows)


def sweep_budgets(data: SuiteData) -> dict[str, dict]:
    """sweep id -> its budget (README's budget table) with, per dataset, its models, searches, final fits."""
    s, f = data.searches, data.finals
    out = {}
    for sweep, group in ([] if s.empty else s.groupby("sweep_id", sort=True)):
        p = group.iloc[0]["params"]
        datasets = {}
        mine = f[f["sweep_id"] == sweep] if not f.empty else f
        # a final run whose search run is gone still counts among the sweep's final fits
        for dataset in sorted(set(group["dataset"]) | (set(mine["dataset"]) if not mine.empty else set())):
            rows = group[group["dataset"] == dataset]
            finals = 0 if mine.empty else int((mine["dataset"] == dataset).sum())
            datasets[dataset] = {"models": sorted(set(rows["model"])), "searches": len(rows), "finals": finals}
        out[sweep] = {"num_samples": str(p.get("num_samples", "n/a")), "max_epochs": str(p.get("max_epochs", "n/a")),
                      "final_seeds": str(p.get("final_seeds", "n/a")),
                      "subsample": sorted({x for x in group["subsample"] if x})[0] if any(group["subsample"]) else "all rows",
                      "command": sweep_command(group), "datasets": datasets}
    return out


def params_of(run_params: dict) -> dict:
    """The chosen hyperparameters of a final run (``model_params.*``, ``train_params.*``), parsed."""
    out = {}
    for key in sorted(run_params):
        if key.startswith(("model_params.", "train_params.")):
            text = run_params[key]
            try:
                out[key] = json.loads(text)
            except (TypeError, ValueError):
                out[key] = text
    return out


def sweep_command(searches: pd.DataFrame) -> str:
    """The ``harness sweep`` command line that reproduces one sweep's plan (from its search runs)."""
    first = searches.iloc[0]
    p = first["params"]
    models = sorted(set(searches["model"]))
    files = searches[searches["dataset_options"] != ""] if "dataset_options" in searches else searches.iloc[:0]
    datasets = sorted(set(searches["dataset"]) - set(files["dataset"]), key=str.lower)
    parts = ["harness sweep", f"--models {','.join(models)}"]
    parts += [f"--datasets {','.join(datasets)}"] if datasets else []
    parts += sorted(set(files["dataset_options"]))  # a user's file: the options that loaded it
    parts += [f"--num-samples {p.get('num_samples', first['num_samples'])}",
              f"--max-epochs {p.get('max_epochs', first['max_epochs'])}"]
    for key, flag in (("final_seeds", "--final-seeds"), ("sampler", "--sampler"), ("seed", "--seed"),
                      ("grace_period", "--grace-period"), ("reduction_factor", "--reduction-factor"),
                      ("cpus_per_trial", "--cpus-per-trial"), ("gpus_per_trial", "--gpus-per-trial")):
        if key in p:
            parts.append(f"{flag} {p[key]}")
    for key, flag in (("graph_k", "--neighbours"), ("graph_mode", "--graph-mode"), ("graph_cutoff", "--cutoff")):
        if key in p:  # given to the sweep (absent: each graph kind's default)
            parts.append(f"{flag} {p[key]}")
    if p.get("precision", "fp32") != "fp32":  # fp32, the default, is left out (and absent from older runs)
        parts.append(f"--precision {p['precision']}")
    folds = sorted({int(s[4:]) for s in searches["split"] if s.startswith("fold") and s[4:].isdigit()})
    if folds and len(folds) < 5:
        parts.append(f"--folds {','.join(map(str, folds))}")
    subs = sorted({s for s in searches["subsample"] if s})
    if subs:
        parts.append(f"--subsample {subs[0]}")
    # rows were dropped as invalid: without the flag the same command stops at them
    if any(d not in ("", "0") for d in searches["data_dropped"]) and "--drop-invalid" not in " ".join(parts):
        parts.append("--drop-invalid")
    return " ".join(parts)
