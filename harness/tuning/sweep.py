"""``harness sweep``: search every (model, dataset, split), then evaluate the winners.

For each model × dataset × split (the fixed split, or each CV fold):

1. a parent MLflow run for the search;
2. a Ray Tune search: Optuna (told the truth about pruned trials) proposes, ASHA stops
   weak trials at epoch rungs, one MLflow child run per trial;
3. the best completed configuration is retrained with K seeds on the split's training data,
   scored on its test part, and logged as ``stage=final`` runs (what leaderboards read).

Hyperparameters are only ever chosen on the split's train/val parts, so for CV suites each
fold gets its own search and the test fold is never seen before the final scoring.

Modules, in the order a search meets them: :mod:`~harness.tuning.plan` (options, datasets,
checks), :mod:`~harness.tuning.state` (the workdir's state files), :mod:`~harness.tuning.search`
(one Ray Tune search), :mod:`~harness.tuning.final` (the final fits), :mod:`~harness.tuning.interrupts`
(Ctrl+C and stops that keep the state). This module runs them: searches one after another or side
by side, each searched, then evaluated.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

from harness.console import make_console
from harness.data.dataset import Dataset, Split
from harness.models import get_model
from harness.tuning import tracking
from harness.tuning.final import final_evaluation
from harness.tuning.interrupts import STOP, SweepInterrupted, SweepOutOfMemory
from harness.tuning.plan import (
    SearchOutcome, SweepOptions, asha_rungs, base_tags, check_plan, load_datasets, selected_splits,
)
from harness.tuning.search import (
    LEGACY_TRAINABLE_NAME, drop_trial_checkpoints, every_trial_killed_for_memory, experiment_exists, fair_share,
    first_line, interrupted, optuna_storage, reconcile_trial_runs, run_search, tally, trainable_name, trial_slots,
)
from harness.tuning.state import load_state, load_sweep, options_to_json, save_state, write_json
from harness.tuning.status import PLAN_FILE
from harness.tuning.trial import TrialContext
from harness.tuning.worker import FeaturesView

# Logs and CI are not terminals: rich would wrap at 80 columns there.
console = make_console(stderr=True)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _init_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` or start an embedded local Ray (``num_cpus`` of this machine's
    CPUs, all by default); True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    # Ray starts its workers at nice 15 so that its own daemons stay responsive; on a laptop or
    # a shared box that lets any ordinary process starve the trials (measured: a 1-CPU ridge
    # search stalled for minutes beside two nice-0 jobs on 2 cores), which stretches the wall-clock
    # cost the leaderboards report. The embedded cluster runs trials at the driver's priority
    # unless the user set RAY_worker_niceness; a cluster from `ray start` keeps its own setting.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # address="local": always a fresh in-process cluster; without it ray.init() joins any
    # cluster a `ray start` left on this machine (or hangs on a dead one).
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    return True


def run_sweep(opts: SweepOptions, resume: bool = False) -> list[SearchOutcome]:
    """Run the whole sweep (or continue it with ``resume``); one outcome per search."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # one line per run, else
    # Checkpoints come at ASHA rungs (1, 2, 4, …), so early epochs checkpoint often by design.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workdir = Path(opts.workdir).resolve()
    if resume:
        saved_opts, sweep_id = load_sweep(workdir)
        # The plan is the saved one; only where and how it runs may change (cluster, store, CPUs,
        # searches side by side, retrying failed searches).
        opts = _replace_opts(saved_opts, workdir=workdir, address=opts.address or saved_opts.address,
                             mlflow_uri=opts.mlflow_uri or saved_opts.mlflow_uri,
                             num_cpus=opts.num_cpus or saved_opts.num_cpus,
                             concurrent_searches=opts.concurrent_searches,
                             retry_failed_searches=opts.retry_failed_searches)
    else:
        # A workdir may hold several sweeps (one MLflow store); sweep.json names the latest,
        # which is the one --resume continues.
        sweep_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    # Bad data (a missing file, an invalid row) fails here, before the workdir is touched: a new
    # sweep's sweep.json would replace the one of the sweep that --resume continues.
    datasets = load_datasets(opts)
    check_plan(opts, datasets)
    workdir.mkdir(parents=True, exist_ok=True)
    tracking_uri = opts.mlflow_uri or tracking.default_tracking_uri(workdir)
    experiment_id = tracking.prepare_store(tracking_uri, workdir, opts.experiment)
    write_json(workdir / "sweep.json", {
        "sweep_id": sweep_id, "tracking_uri": tracking_uri, "experiment_id": experiment_id,
        "options": options_to_json(opts),
    })
    console.print(f"sweep [bold]{sweep_id}[/]{' (resumed)' if resume else ''} · workdir {workdir} · MLflow {tracking_uri}")

    optuna_storage(workdir)
    STOP.clear()
    started_ray = _init_ray(opts.address, opts.num_cpus)
    jobs: list[tuple] = []
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
            stored: dict[str, Any] = {}  # input kind -> (Features, its ObjectRef), put this dataset
            for model in opts.models:
                spec = get_model(model)
                if spec.input_kind not in features_by_kind:
                    features_by_kind[spec.input_kind] = _features_in_object_store(spec.input_kind, dataset, stored,
                                                                                  opts.graph)
                for split in selected_splits(dataset, opts.folds):
                    jobs.append((dataset, model, split, features_by_kind[spec.input_kind]))
        # The whole plan, for `harness status` (which lists the searches not yet started too).
        write_json(workdir / PLAN_FILE, {"sweep_id": sweep_id,
                                          "searches": [f"{m}/{d.name}/{sp.name}" for d, m, sp, _ in jobs]})
        if opts.address:
            # A cluster may grow (the autoscaler adds nodes for waiting trials): the searches ask
            # as given, and each sizes its trials to the cluster when it starts.
            searches_at_once, trials_at_once = opts.concurrent_searches, opts.max_concurrent_trials
        else:
            # The embedded Ray's size is fixed: share its slots (trials at once, and final fits at
            # once) among the searches, so that together they never ask for more than it holds.
            searches_at_once, trials_at_once = fair_share(
                trial_slots(opts), opts.concurrent_searches, opts.max_concurrent_trials)
            if searches_at_once < opts.concurrent_searches and len(jobs) > 1:
                side_by_side = ("one search at a time" if searches_at_once == 1
                                else f"{searches_at_once} searches side by side")
                console.print(f"[yellow]--concurrent-searches {opts.concurrent_searches}: this machine holds "
                              f"{searches_at_once} trial(s) of this size at once, so {side_by_side} (more "
                              f"would wait for each other's slots, and a waiting trial can starve)[/]")
        run = lambda job: _search_and_evaluate(  # noqa: E731
            _replace_opts(opts, max_concurrent_trials=trials_at_once),
            sweep_id, workdir, tracking_uri, experiment_id, *job
        )
        if searches_at_once > 1 and len(jobs) > 1:
            outcomes.extend(_run_concurrently(run, jobs, searches_at_once, workdir))
        else:
            outcomes.extend(run(job) for job in jobs)
    finally:
        if started_ray:
            ray.shutdown()
    print_summary(outcomes)
    return outcomes


def _thread_safe_tune_registry() -> None:
    """Serialize Ray Tune's trainable registry for searches running in threads.

    Deliberately patched rather than worked around: ``ray.tune.registry._Registry`` mutates a
    plain dict in ``register`` while ``flush_values`` iterates it, so two Tuners starting at
    once fail with "dictionary changed size during iteration" (seen with 4 concurrent
    searches). A lock around its methods is the smallest fix; nothing else changes.
    """
    from ray.tune import registry

    cls = registry._Registry
    if getattr(cls, "_harness_thread_safe", False):
        return
    lock = threading.RLock()
    for name in ("register", "unregister", "contains", "get", "flush_values"):
        original = getattr(cls, name, None)
        if original is None:
            continue

        def locked(self, *args, _original=original, **kwargs):
            with lock:
                return _original(self, *args, **kwargs)

        setattr(cls, name, locked)
    cls._harness_thread_safe = True


def _run_concurrently(run, jobs: list[tuple], n: int, workdir: Path) -> list[SearchOutcome]:
    """Run ``n`` searches side by side in threads, sharing the cluster: trials of different models
    and datasets run together, each search keeping its own searcher and ASHA brackets.

    The main thread waits; a Ctrl+C there sets :data:`STOP`, every running search saves its Tune
    experiment and Optuna study and returns, searches not yet started never start, and the sweep
    stops with the resume hint.
    """
    from concurrent.futures import ThreadPoolExecutor

    _thread_safe_tune_registry()
    pool = ThreadPoolExecutor(max_workers=n)
    try:
        with _tune_polls_stop_event_in_threads():
            futures = [pool.submit(run, job) for job in jobs]
            try:
                return [future.result() for future in futures]
            except KeyboardInterrupt:
                STOP.set()
                console.print("[yellow]Ctrl+C: stopping the running searches (their state is saved)…[/]")
                pool.shutdown(wait=True, cancel_futures=True)
                raise SweepInterrupted(f"interrupted; finished searches, trials and Optuna studies are "
                                       f"saved. Continue with: harness sweep --resume {workdir}") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _tune_polls_stop_event_in_threads():
    """Hand Tune's run loop :data:`STOP` as its "experiment interrupted" event in worker threads.

    Deliberately patched: ``ray.tune.tune._setup_signal_catching`` returns the event the loop
    polls, and connects it to SIGINT only in the main thread (``signal.signal`` works nowhere
    else). Where Ray has no such function any more, nothing is patched (a Ctrl+C then stops the
    sweep only after the running searches end, as before).
    """
    from ray.tune import tune as tune_module

    original = getattr(tune_module, "_setup_signal_catching", None)
    if original is None:
        yield
        return

    def setup_signal_catching():
        return original() if threading.current_thread() is threading.main_thread() else STOP

    tune_module._setup_signal_catching = setup_signal_catching
    try:
        yield
    finally:
        tune_module._setup_signal_catching = original


def _replace_opts(opts: SweepOptions, **changes: Any) -> SweepOptions:
    from dataclasses import replace

    return replace(opts, **changes)


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
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    label = f"{model}/{dataset.name}/{split.name}"
    search_name = _safe(f"{sweep_id}__{model}__{dataset.name}__{split.name}")
    outcome = SearchOutcome(dataset.name, model, split.name)
    client = MlflowClient(tracking_uri)
    tags = base_tags(opts, sweep_id, dataset, model, split)
    state = load_state(workdir, search_name)
    if state.get("stage") == "done" and not (
            opts.retry_failed_searches and _reopen_failed_search(client, workdir, search_name, state, label)):
        console.print(f"{label}: done in an earlier run of this sweep; skipped")
        drop_trial_checkpoints(opts, workdir, search_name, state, label)  # left by earlier versions
        return _outcome_from_store(client, state, outcome)
    if "parent_run_id" not in state:
        parent = client.create_run(
            experiment_id, tags={**tags, "stage": "search", "mlflow.runName": label}
        )
        state.update({"parent_run_id": parent.info.run_id, "stage": "searching", "label": label})
        save_state(workdir, search_name, state)
        client.log_batch(parent.info.run_id, params=[
            Param(k, v) for k, v in tracking.flatten("", {
                "num_samples": opts.num_samples, "max_epochs": opts.max_epochs,
                "final_seeds": opts.final_seeds, "sampler": opts.sampler, "seed": opts.seed,
                "grace_period": opts.grace_period, "reduction_factor": opts.reduction_factor,
                "cpus_per_trial": opts.cpus_per_trial, "gpus_per_trial": opts.gpus_per_trial,
                "precision": opts.precision, "split_sizes": "/".join(map(str, split.sizes())),
                **{f"graph_{k}": v for k, v in opts.graph.items()},  # only those given: the reproduce command
            }).items()
        ])
    parent_run_id = state["parent_run_id"]
    outcome.parent_run_id = parent_run_id

    context = TrialContext(
        model=model,
        dataset=dataset.name,
        features=features_ref,
        targets=dataset.targets,
        split=split,
        max_epochs=opts.max_epochs,
        seed=opts.seed,
        num_threads=max(1, int(opts.cpus_per_trial)),
        precision=opts.precision,
        rungs=asha_rungs(opts.grace_period, opts.reduction_factor, opts.max_epochs),
    )
    if state["stage"] == "searching":
        # Experiments started before names were unique were registered as "_trial_entry", and
        # Tune restores an experiment only with the name it was started with.
        name = state.setdefault("trainable_name", LEGACY_TRAINABLE_NAME if experiment_exists(
            opts, workdir, search_name) else trainable_name(search_name, model))
        save_state(workdir, search_name, state)
        results, signalled = run_search(opts, workdir, tracking_uri, experiment_id, search_name, label,
                                         parent_run_id, tags, model, context, name, state)
        if signalled or STOP.is_set() or interrupted(results, opts.num_samples):
            # Tune catches SIGINT, saves the experiment and returns normally: the search must stay
            # "searching" (not be judged on the trials so far) so that --resume finishes it.
            raise SweepInterrupted(f"{label}: interrupted; its trials and Optuna study are saved. "
                                   f"Continue with: harness sweep --resume {workdir}")
        if every_trial_killed_for_memory(results):
            # The node's trouble, not the model's: --resume runs the search again, as a new Tune
            # experiment (the killed trials' runs stay in MLflow, tagged lost at its end).
            state["memory_reruns"] = state.get("memory_reruns", 0) + 1
            save_state(workdir, search_name, state)
            STOP.set()  # searches running beside this one save their state and stop too
            raise SweepOutOfMemory(
                f"{label}: Ray killed the worker of every trial ({len(results)}) for memory "
                f"({first_line(results[0].error)}). Free memory on the node (other jobs), or run fewer "
                f"trials at once (--max-concurrent-trials, --concurrent-searches, --num-cpus), then run "
                f"this search again with: harness sweep --resume {workdir}")
        states = reconcile_trial_runs(client, workdir, search_name, results)
        best_params, best_value = tally(results, states, outcome)
        client.log_batch(parent_run_id, metrics=[
            m for m in [
                _metric("trials_completed", outcome.completed), _metric("trials_pruned", outcome.pruned),
                _metric("trials_failed", outcome.failed), _metric("best_val_mae", best_value),
            ] if m is not None
        ])
        if best_params is None:
            outcome.note = "no trial completed; nothing to evaluate"
            client.set_tag(parent_run_id, "final_status", outcome.note)
            client.set_terminated(parent_run_id, "FAILED")
            state.update({"stage": "done", "note": outcome.note})
            save_state(workdir, search_name, state)
            console.print(f"[red]{label}: {outcome.note}[/]")
            return outcome
        client.log_text(parent_run_id, json.dumps(best_params, indent=1, sort_keys=True), "best_params.json")
        state.update({"stage": "searched", "best_params": best_params, "best_val_mae": best_value,
                      "trials": {"completed": outcome.completed, "pruned": outcome.pruned,
                                 "failed": outcome.failed}})
        save_state(workdir, search_name, state)
    else:
        outcome.completed, outcome.pruned, outcome.failed = (
            state["trials"][k] for k in ("completed", "pruned", "failed")
        )
    outcome.best_val_mae = state["best_val_mae"]
    drop_trial_checkpoints(opts, workdir, search_name, state, label)
    if STOP.is_set():
        raise SweepInterrupted(f"{label}: interrupted before its final fits; the search is saved. "
                               f"Continue with: harness sweep --resume {workdir}")
    final_evaluation(opts, client, experiment_id, workdir, search_name, state, tags, dataset,
                      split, context, outcome, label)
    client.set_terminated(parent_run_id, "FINISHED")
    state["stage"] = "done"
    save_state(workdir, search_name, state)
    return outcome


def _reopen_failed_search(client, workdir: Path, search_name: str, state: dict[str, Any], label: str) -> bool:
    """``--retry-failed``: put a finished search that gave no test MAE back to work; whether it was one.

    For failures that were not the configuration's: a full disk, a node lost for good, a search
    space or a model fixed since. A search none of whose trials completed searches again, as a
    new Tune experiment (``--rerunN``) and Optuna study (``--retryN``) under the same MLflow
    parent run; its failed trial runs stay, as failed. A search whose final
    fits failed refits them into the same final runs. A search with its test MAE is left alone.
    """
    missing = [run_id for run_id in state.get("final_runs", {}).values()
               if "test_mae" not in client.get_run(run_id).data.metrics]
    if state.get("note"):  # "no trial completed; nothing to evaluate"
        why = f"{state.pop('note')}; searching again"
        parent = client.get_run(state["parent_run_id"])
        earlier = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
                                     "and tags.stage = 'trial'", max_results=10000)
        state["kept_trial_runs"] = sorted({*state.get("kept_trial_runs", []), *(r.info.run_id for r in earlier)})
        state["retries"] = state.get("retries", 0) + 1
        state["stage"] = "searching"
    elif missing:
        why = f"{len(missing)} final fit(s) without a test MAE; fitting them again"
        for run_id in missing:
            _reopen_run(client, run_id, "error")
        state["stage"] = "searched"
    else:
        return False
    _reopen_run(client, state["parent_run_id"], "final_status")
    save_state(workdir, search_name, state)
    console.print(f"[yellow]{label}: --retry-failed: {why}[/]", highlight=False)
    return True


def _reopen_run(client, run_id: str, stale_tag: str) -> None:
    client.update_run(run_id, status="RUNNING")
    if stale_tag in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, stale_tag)


def _outcome_from_store(client, state: dict, outcome: SearchOutcome) -> SearchOutcome:
    trials = state.get("trials", {})
    outcome.completed, outcome.pruned, outcome.failed = (trials.get(k, 0) for k in ("completed", "pruned", "failed"))
    outcome.best_val_mae = state.get("best_val_mae", math.nan)
    outcome.parent_run_id = state.get("parent_run_id", "")
    outcome.note = state.get("note", "")
    for run_id in state.get("final_runs", {}).values():
        run = client.get_run(run_id)
        if "test_mae" in run.data.metrics:
            outcome.test_mae.append(run.data.metrics["test_mae"])
    return outcome


def _features_in_object_store(kind: str, dataset: Dataset, stored: dict[str, Any], graph: dict | None = None):
    """An ObjectRef of ``dataset`` featurized as ``kind``, put once: every trial and final fit reads
    it there. A kind that another stored kind can be read as (crystal_graph / periodic_graph)
    gets a :class:`FeaturesView` of that copy instead of a second copy of the same tensors."""
    import ray

    from harness.featurize import featurize

    for other, (features, ref) in stored.items():
        if getattr(features, "as_kind", None) and features.as_kind(kind) is not None:
            console.print(f"{dataset.name} as {kind}: reads the {other} features already stored")
            return FeaturesView(ref, kind)
    start = time.time()
    features = featurize(kind, dataset, graph)
    ref = ray.put(features)
    stored[kind] = (features, ref)
    console.print(f"featurized {dataset.name} as {kind} in {time.time() - start:.1f} s")
    return ref


def _metric(key: str, value: float):
    from mlflow.entities import Metric

    if value is None or not math.isfinite(float(value)):
        return None
    return Metric(key, float(value), int(time.time() * 1000), 0)


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
