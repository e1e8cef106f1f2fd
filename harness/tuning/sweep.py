"""``harness sweep``: search every (model, dataset, split), then evaluate the winners.

For each model × dataset × split (the fixed split, or each CV fold):

1. a parent MLflow run for the search;
2. a Ray Tune search: Optuna (told the truth about pruned trials) proposes, ASHA stops
   weak trials at epoch rungs, one MLflow child run per trial;
3. the best completed configuration is retrained with K seeds on the split's training data,
   scored on its test part, and logged as ``stage=final`` runs (what leaderboards read).

Hyperparameters are only ever chosen on the split's train/val parts, so for CV suites each
fold gets its own search and the test fold is never seen before the final scoring.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from harness.data.dataset import Dataset, Split
from harness.models import get_model
from harness.provenance import hardware
from harness.tuning import tracking
from harness.tuning.optuna_search import FINISHED_KEY, TruthfulOptunaSearch, make_sampler
from harness.tuning.progress import ProgressPrinter
from harness.tuning.space import load_space
from harness.tuning.trial import TrialContext, final_fit, run_trial

METRIC = "best_val_mae"  # best validation MAE so far: what ASHA compares and Optuna minimises

# Logs and CI are not terminals: rich would wrap at 80 columns there.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


@dataclass
class SweepOptions:
    models: list[str]
    datasets: list[str]
    num_samples: int = 8
    max_epochs: int = 50
    final_seeds: int = 3
    workdir: Path = Path("runs/default")
    mlflow_uri: str | None = None
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    sampler: str = "tpe"
    seed: int = 0
    folds: list[int] | None = None
    subsample: int | None = None
    drop_invalid: bool = False
    grace_period: int = 1
    reduction_factor: int = 2
    space_dir: Path | None = None
    experiment: str = tracking.EXPERIMENT
    dataset_file: Path | None = None
    target: str | None = None
    formula_column: str = "formula"

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError("--num-samples must be >= 1")
        if self.max_epochs < 1:
            raise ValueError("--max-epochs must be >= 1")
        if self.final_seeds < 1:
            raise ValueError("--final-seeds must be >= 1")
        if self.cpus_per_trial <= 0:
            raise ValueError("--cpus-per-trial must be > 0")


@dataclass
class SearchOutcome:
    dataset: str
    model: str
    split: str
    completed: int = 0
    pruned: int = 0
    failed: int = 0
    best_val_mae: float = math.nan
    test_mae: list[float] = field(default_factory=list)
    parent_run_id: str = ""
    note: str = ""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _asha_rungs(grace: int, factor: int, max_t: int) -> tuple[int, ...]:
    rungs, t = [], grace
    while t < max_t:
        rungs.append(t)
        t *= factor
    return tuple(rungs)


def load_datasets(opts: SweepOptions) -> list[Dataset]:
    from harness.data import load_custom, load_dataset

    datasets = []
    if opts.dataset_file is not None:
        if not opts.target:
            raise ValueError("--dataset-file needs --target (the name of the target column)")
        datasets.append(
            load_custom(opts.dataset_file, opts.target, opts.formula_column,
                        drop_invalid=opts.drop_invalid, seed=opts.seed)
        )
    for name in opts.datasets:
        datasets.append(load_dataset(name, drop_invalid=opts.drop_invalid))
    if opts.subsample:
        datasets = [d.subsample(opts.subsample, seed=opts.seed) for d in datasets]
    return datasets


def selected_splits(dataset: Dataset, folds: list[int] | None) -> list[Split]:
    if folds is None or len(dataset.splits) == 1:
        return list(dataset.splits)
    chosen = [s for s in dataset.splits if s.name in {f"fold{k}" for k in folds}]
    if not chosen:
        raise ValueError(f"dataset {dataset.name!r} has no folds {folds}; it has {[s.name for s in dataset.splits]}")
    return chosen


def _init_ray(address: str | None) -> bool:
    """Connect to ``address`` or start an embedded local Ray; True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


def run_sweep(opts: SweepOptions) -> list[SearchOutcome]:
    """Run the whole sweep; returns one outcome per (dataset, model, split)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Checkpoints come at ASHA rungs (1, 2, 4, …), so early epochs checkpoint often by design.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import optuna
    import ray

    from harness.featurize import featurize

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    workdir = Path(opts.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tracking_uri = opts.mlflow_uri or tracking.default_tracking_uri(workdir)
    experiment_id = tracking.prepare_store(tracking_uri, workdir, opts.experiment)
    sweep_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    _write_json(workdir / "sweep.json", {
        "sweep_id": sweep_id, "tracking_uri": tracking_uri, "experiment_id": experiment_id,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
    })
    console.print(f"sweep [bold]{sweep_id}[/] · workdir {workdir} · MLflow {tracking_uri}")

    datasets = load_datasets(opts)
    started_ray = _init_ray(opts.address)
    outcomes: list[SearchOutcome] = []
    try:
        for dataset in datasets:
            if dataset.task_type != "regression":
                console.print(
                    f"[yellow]skipping {dataset.name}: {dataset.task_type} task; the current "
                    f"models and leaderboards are regression only[/]"
                )
                outcomes.append(SearchOutcome(dataset.name, "-", "-", note=f"skipped ({dataset.task_type})"))
                continue
            features_by_kind: dict[str, Any] = {}
            for model in opts.models:
                spec = get_model(model)
                if spec.input_kind not in features_by_kind:
                    start = time.time()
                    features_by_kind[spec.input_kind] = featurize(spec.input_kind, dataset)
                    console.print(
                        f"featurized {dataset.name} as {spec.input_kind} in {time.time() - start:.1f} s"
                    )
                features_ref = ray.put(features_by_kind[spec.input_kind])
                for split in selected_splits(dataset, opts.folds):
                    outcomes.append(
                        _search_and_evaluate(
                            opts, sweep_id, workdir, tracking_uri, experiment_id,
                            dataset, model, split, features_ref,
                        )
                    )
    finally:
        if started_ray:
            ray.shutdown()
    print_summary(outcomes)
    return outcomes


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def _base_tags(opts: SweepOptions, sweep_id: str, dataset: Dataset, model: str, split: Split) -> dict[str, str]:
    spec = get_model(model)
    return {
        **tracking.provenance_tags(),
        "sweep_id": sweep_id,
        "suite": dataset.suite,
        "dataset": dataset.name,
        "model": model,
        "model_label": spec.label,
        "input_kind": spec.input_kind,
        "split": split.name,
        "split_scheme": dataset.split_scheme,
        "target": dataset.target,
        "unit": dataset.unit,
        "data_sha256": dataset.sha256,
        "data_rows": str(len(dataset)),
        "data_subsample": str(dataset.notes.get("subsample", "")),
        "data_dropped": str(dataset.dropped),
        "seed": str(opts.seed),
        "max_epochs": str(opts.max_epochs),
        "num_samples": str(opts.num_samples),
        "sampler": opts.sampler,
    }


def _search_and_evaluate(
    opts: SweepOptions,
    sweep_id: str,
    workdir: Path,
    tracking_uri: str,
    experiment_id: str,
    dataset: Dataset,
    model: str,
    split: Split,
    features_ref,
) -> SearchOutcome:
    import optuna
    import ray
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    spec = get_model(model)
    label = f"{model}/{dataset.name}/{split.name}"
    search_name = _safe(f"{sweep_id}__{model}__{dataset.name}__{split.name}")
    outcome = SearchOutcome(dataset.name, model, split.name)
    client = MlflowClient(tracking_uri)
    tags = _base_tags(opts, sweep_id, dataset, model, split)
    parent = client.create_run(
        experiment_id, tags={**tags, "stage": "search", "mlflow.runName": label}
    )
    outcome.parent_run_id = parent.info.run_id
    client.log_batch(parent.info.run_id, params=[
        Param(k, v) for k, v in tracking.flatten("", {
            "num_samples": opts.num_samples, "max_epochs": opts.max_epochs,
            "final_seeds": opts.final_seeds, "sampler": opts.sampler, "seed": opts.seed,
            "grace_period": opts.grace_period, "reduction_factor": opts.reduction_factor,
            "cpus_per_trial": opts.cpus_per_trial, "gpus_per_trial": opts.gpus_per_trial,
            "split_sizes": "/".join(map(str, split.sizes())),
        }).items()
    ])

    context = TrialContext(
        model=model,
        dataset=dataset.name,
        features=features_ref,
        targets=dataset.targets,
        split=split,
        max_epochs=opts.max_epochs,
        seed=opts.seed,
        num_threads=max(1, int(opts.cpus_per_trial)),
        rungs=_asha_rungs(opts.grace_period, opts.reduction_factor, opts.max_epochs),
    )
    storage = optuna.storages.RDBStorage(f"sqlite:///{workdir / 'optuna.db'}")
    searcher = TruthfulOptunaSearch(
        sampler=make_sampler(opts.sampler, opts.seed),
        storage=storage,
        study_name=search_name,
        seed=opts.seed,
    )
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=opts.max_epochs,
        grace_period=min(opts.grace_period, opts.max_epochs),
        reduction_factor=opts.reduction_factor,
    )
    logger = tracking.TrialRunLogger(
        tracking_uri, experiment_id, parent.info.run_id, tags,
        mapping_file=workdir / "trial_runs" / f"{search_name}.json",
        finished_key=FINISHED_KEY,
    )
    logger.mapping_file.parent.mkdir(exist_ok=True)
    progress = ProgressPrinter(label, opts.num_samples, METRIC, console)
    resources = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial_entry, context=context), resources),
        param_space=load_space(spec, opts.space_dir),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="min", search_alg=searcher, scheduler=scheduler,
            num_samples=opts.num_samples,
        ),
        run_config=tune.RunConfig(
            name=search_name,
            storage_path=str(workdir / "ray_results"),
            callbacks=[logger, progress],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    results = tuner.fit()

    best_params, best_value = None, math.inf
    for result in results:
        last = result.metrics or {}
        if result.error is not None:
            outcome.failed += 1
        elif last.get(FINISHED_KEY):
            outcome.completed += 1
            value = last.get(METRIC, math.nan)
            if value < best_value:
                best_value, best_params = value, result.config
        else:
            outcome.pruned += 1
    outcome.best_val_mae = best_value if best_params is not None else math.nan
    client.log_batch(parent.info.run_id, metrics=[
        m for m in [
            _metric("trials_completed", outcome.completed), _metric("trials_pruned", outcome.pruned),
            _metric("trials_failed", outcome.failed), _metric("best_val_mae", outcome.best_val_mae),
        ] if m is not None
    ])
    if best_params is None:
        outcome.note = "no trial completed; nothing to evaluate"
        client.set_tag(parent.info.run_id, "final_status", outcome.note)
        client.set_terminated(parent.info.run_id, "FAILED")
        console.print(f"[red]{label}: {outcome.note}[/]")
        return outcome

    best_params = {k: best_params[k] for k in ("model_params", "train_params") if k in best_params}
    client.log_text(parent.info.run_id, json.dumps(best_params, indent=1, sort_keys=True), "best_params.json")
    _final_evaluation(opts, client, experiment_id, parent.info.run_id, tags, dataset, split,
                      context, best_params, outcome, label)
    client.set_terminated(parent.info.run_id, "FINISHED")
    return outcome


def _trial_entry(config: dict[str, Any], context: TrialContext) -> None:
    """Resolve the features object reference inside the worker, then train."""
    import ray

    features = context.features
    if isinstance(features, ray.ObjectRef):
        features = ray.get(features)
    run_trial(config, _with_features(context, features))


def _with_features(context: TrialContext, features) -> TrialContext:
    from dataclasses import replace

    return replace(context, features=features)


def _final_task(context: TrialContext, params: dict[str, Any], seed: int) -> dict[str, Any]:
    import ray

    features = context.features
    if isinstance(features, ray.ObjectRef):
        features = ray.get(features)
    out = final_fit(_with_features(context, features), params, seed)
    out["hardware"] = hardware()
    return out


def _metric(key: str, value: float):
    from mlflow.entities import Metric

    if value is None or not math.isfinite(float(value)):
        return None
    return Metric(key, float(value), int(time.time() * 1000), 0)


def _final_evaluation(
    opts: SweepOptions, client, experiment_id: str, parent_run_id: str, tags: dict[str, str],
    dataset: Dataset, split: Split, context: TrialContext, params: dict[str, Any],
    outcome: SearchOutcome, label: str,
) -> None:
    import ray
    from mlflow.entities import Param

    seeds = [opts.seed + k for k in range(opts.final_seeds)]
    console.print(f"{label}: final fits with seeds {seeds} on {len(split.train)} training rows")
    task = ray.remote(num_cpus=opts.cpus_per_trial, num_gpus=opts.gpus_per_trial)(_final_task)
    refs = {seed: task.remote(context, params, seed) for seed in seeds}
    for seed, ref in refs.items():
        run = client.create_run(experiment_id, tags={
            **tags, "stage": "final", "seed": str(seed), "mlflow.parentRunId": parent_run_id,
            "mlflow.runName": f"{label}/final-seed{seed}",
        })
        run_id = run.info.run_id
        client.log_batch(run_id, params=[
            Param(k, v) for k, v in tracking.flatten("", {**params, "final_seed": seed}).items()
        ])
        try:
            out = ray.get(ref)
        except Exception as exc:  # one failed fit must not lose the others
            client.log_batch(run_id, tags=[_tag("error", str(exc)[-5000:])])
            client.set_terminated(run_id, "FAILED")
            console.print(f"[red]{label}: final fit seed {seed} failed: {exc}[/]")
            continue
        client.set_tag(run_id, "hardware", out.get("hardware", ""))
        metrics = {**out["metrics"], "fit_seconds": out["seconds"]}
        tracking.log_metrics(client, run_id, {k: float(v) for k, v in metrics.items()}, step=0)
        for row in out.get("history", []):
            step = int(row.get("epoch", 0))
            tracking.log_metrics(client, run_id, {f"epoch_{k}": float(v) for k, v in row.items()
                                                  if k != "epoch" and _finite(v)}, step=step)
        frame = dataset.frame.iloc[split.test][["id", "formula", "target"]].copy()
        frame["prediction"] = np.asarray(out["test_pred"], dtype=float)
        client.log_text(run_id, frame.to_csv(index=False), "predictions_test.csv")
        client.set_terminated(run_id, "FINISHED")
        outcome.test_mae.append(float(metrics["test_mae"]))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _tag(key: str, value: str):
    from mlflow.entities import RunTag

    return RunTag(key, value)


def print_summary(outcomes: list[SearchOutcome]) -> None:
    table = Table(title="sweep summary")
    for col in ("dataset", "model", "split", "completed", "pruned", "failed", "best val MAE", "test MAE (final)"):
        table.add_column(col)
    for o in outcomes:
        test = (
            f"{np.mean(o.test_mae):.4g} ± {np.std(o.test_mae, ddof=1) if len(o.test_mae) > 1 else 0:.2g}"
            if o.test_mae else (o.note or "—")
        )
        best = "—" if math.isnan(o.best_val_mae) else f"{o.best_val_mae:.4g}"
        table.add_row(o.dataset, o.model, o.split, str(o.completed), str(o.pruned), str(o.failed), best, test)
    console.print(table)


def outcomes_frame(outcomes: list[SearchOutcome]) -> pd.DataFrame:
    return pd.DataFrame([asdict(o) for o in outcomes])
