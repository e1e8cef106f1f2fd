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

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shlex
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

from harness.console import make_console
from harness.data.dataset import Dataset, Split
from harness.models import get_model
from harness.training.config import PRECISIONS
from harness.tuning import tracking
from harness.tuning.optuna_search import ERROR_KEY, FINISHED_KEY, TruthfulOptunaSearch, make_sampler
from harness.tuning.progress import ProgressPrinter
from harness.tuning.space import load_space
from harness.tuning.status import PLAN_FILE
from harness.tuning.trial import TrialContext
from harness.tuning.worker import FeaturesView, final_task, trial_entry

METRIC = "best_val_mae"  # best validation MAE so far: what ASHA compares and Optuna minimises

# Logs and CI are not terminals: rich would wrap at 80 columns there.
console = make_console(stderr=True)


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
    precision: str = "fp32"  # TrainConfig.precision of every trial and final fit (torch models)
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
    # neighbour settings of the crystal graphs (graphs.GraphConfig); None: each kind's default (k-NN, k = 12)
    graph_k: int | None = None
    graph_cutoff: float | None = None
    graph_mode: str | None = None
    structure_column: str | None = None  # a --dataset-file of crystal structures (CIF, POSCAR or pymatgen dict)
    id_column: str | None = None  # ids of --dataset-file rows (default: <file stem>:<data row>)
    storage: str | None = None  # Ray storage_path; shared (NFS/S3/GCS) on multi-node clusters
    max_failures: int = 3  # retries of a trial whose worker or node died
    concurrent_searches: int = 1  # searches (model x dataset x split) running side by side
    max_concurrent_trials: int | None = None  # per search; None = as many as the cluster fits
    reuse_actors: bool = False  # reuse trial worker processes (many short trials)
    keep_trial_checkpoints: bool = False  # keep each trial's Tune checkpoints after its search is decided
    retry_failed_searches: bool = False  # --resume: run again the finished searches that gave no test MAE
    num_cpus: int | None = None  # CPUs the embedded Ray may use (None = all); ignored with address

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError("--num-samples must be >= 1")
        if self.max_epochs < 1:
            raise ValueError("--max-epochs must be >= 1")
        if self.final_seeds < 1:
            raise ValueError("--final-seeds must be >= 1")
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.cpus_per_trial <= 0:
            raise ValueError("--cpus-per-trial must be > 0")
        if self.concurrent_searches < 1:
            raise ValueError("--concurrent-searches must be >= 1")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ValueError("--max-concurrent-trials must be >= 1 (leave it out for as many as the cluster fits)")
        if self.graph_cutoff is not None and self.graph_mode != "radius":
            raise ValueError("--cutoff is the radius of --graph-mode radius; k-NN graphs take --neighbours")
        if self.graph_k is not None and self.graph_mode == "radius":
            raise ValueError("--neighbours is k of k-NN graphs; --graph-mode radius takes --cutoff")
        if self.graph:
            from harness.featurize.graphs import GraphConfig

            GraphConfig(**self.graph)  # a ValueError naming the bad field
        if self.grace_period < 1:
            raise ValueError("--grace-period must be >= 1 (epochs a trial runs before ASHA may stop it)")
        if self.reduction_factor < 2:
            raise ValueError("--reduction-factor must be >= 2 (ASHA keeps the best 1/F of the trials at each rung)")
        if self.subsample is not None and self.subsample < 1:
            raise ValueError("--subsample must be >= 1 rows (leave it out for all rows)")
        if self.num_cpus is not None and self.num_cpus < self.cpus_per_trial:
            raise ValueError(f"--num-cpus {self.num_cpus} leaves no room for one trial "
                             f"(--cpus-per-trial {self.cpus_per_trial})")

    @property
    def graph(self) -> dict:
        """The graph settings given (GraphConfig fields), for the featurizers."""
        given = {"k": self.graph_k, "cutoff": self.graph_cutoff, "mode": self.graph_mode}
        return {k: v for k, v in given.items() if v is not None}


class SweepInterrupted(RuntimeError):
    """Ctrl+C (SIGINT) stopped a search: its state is saved and ``--resume`` continues it."""

    exit_code = 130  # the shell's code for SIGINT


class SweepOutOfMemory(SweepInterrupted):
    """Ray's memory monitor kept killing a search's trial workers: the sweep stops, state saved."""

    exit_code = 1


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
    from harness.data import load_custom, load_custom_structures, load_dataset
    from harness.data.structures import CUTOFF
    from harness.featurize import STRUCTURE_KINDS

    # radius graphs: an atom with no neighbour within the radius is an invalid row (named, or
    # dropped with --drop-invalid) when the data loads, not an error once the sweep has begun
    cutoff = (opts.graph_cutoff or CUTOFF) if opts.graph_mode == "radius" else CUTOFF
    datasets = []
    if opts.dataset_file is not None:
        if not opts.target:
            raise ValueError("--dataset-file needs --target (the name of the target column)")
        if opts.structure_column:  # structures; their compositions serve the composition models
            datasets.append(load_custom_structures(opts.dataset_file, opts.target, opts.structure_column,
                                                   id_col=opts.id_column, drop_invalid=opts.drop_invalid,
                                                   seed=opts.seed, cutoff=cutoff))
        else:
            datasets.append(load_custom(opts.dataset_file, opts.target, opts.formula_column, opts.id_column,
                                        drop_invalid=opts.drop_invalid, seed=opts.seed))
    # Matbench's structure tasks carry their structures only where a model reads them (parsing
    # mp_e_form's 132,752 structures is minutes of work a composition sweep does not need).
    with_structures = any(get_model(m).input_kind in STRUCTURE_KINDS for m in opts.models)
    for name in opts.datasets:
        datasets.append(load_dataset(name, drop_invalid=opts.drop_invalid, with_structures=with_structures,
                                     cutoff=cutoff))
    if opts.subsample:
        datasets = [d.subsample(opts.subsample, seed=opts.seed) for d in datasets]
    return datasets


def check_plan(opts: SweepOptions, datasets: list[Dataset]) -> None:
    """Fail now, not hours into the sweep, on a --folds value a dataset lacks or a search space
    that does not load (a missing or invalid YAML in --search-spaces), or a structure model given
    a dataset of compositions only."""
    from harness.featurize import STRUCTURE_KINDS
    from harness.featurize.graphs import GRAPH_KINDS, graph_config, structures_of

    if not opts.address:
        _check_room_on_this_machine(opts)
    regression = [d for d in datasets if d.task_type == "regression"]
    for dataset in regression:
        selected_splits(dataset, opts.folds)
    for model in opts.models:
        spec = get_model(model)
        load_space(spec, opts.space_dir)
        if spec.input_kind in STRUCTURE_KINDS:
            if spec.input_kind in GRAPH_KINDS:
                graph_config(spec.input_kind, opts.graph)  # e.g. ALIGNN's line graph needs k-NN
            for dataset in regression:
                structures_of(dataset, spec.input_kind)


def _check_room_on_this_machine(opts: SweepOptions) -> None:
    """The embedded Ray holds this machine's CPUs (or --num-cpus) and the GPUs torch sees: a trial
    asking for more would wait for ever (Ray only warns, once a minute, that nothing runs)."""
    cpus = opts.num_cpus or os.cpu_count() or 1
    if opts.cpus_per_trial > cpus:
        raise ValueError(f"--cpus-per-trial {opts.cpus_per_trial:g} asks for more than the {cpus} CPU(s) of the "
                         "embedded Ray (this machine, or --num-cpus): no trial could start. Ask for at most "
                         f"{cpus}, or run on a cluster with --address")
    if opts.gpus_per_trial > 0:
        import torch

        gpus = torch.cuda.device_count()
        if opts.gpus_per_trial > gpus:
            found = f"{gpus} GPU(s)" if gpus else "no GPU (torch.cuda.is_available() is False)"
            raise ValueError(f"--gpus-per-trial {opts.gpus_per_trial:g}: torch sees {found} on this machine, so no "
                             "trial could start. Leave --gpus-per-trial out to train on the CPU, install the "
                             "CUDA build of torch, or run on a GPU cluster with --address")


def selected_splits(dataset: Dataset, folds: list[int] | None) -> list[Split]:
    if folds is None or len(dataset.splits) == 1:
        return list(dataset.splits)
    chosen = [s for s in dataset.splits if s.name in {f"fold{k}" for k in folds}]
    if not chosen:
        raise ValueError(f"dataset {dataset.name!r} has no folds {folds}; it has {[s.name for s in dataset.splits]}")
    return chosen


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


# ----------------------------------------------------------------------------- sweep state
# A sweep is resumable: sweep.json holds its id and options; searches/<name>.json holds each
# search's parent run, its stage (searching -> searched -> done), the chosen configuration
# and the final runs' ids. `--resume` replays the same plan and skips what is done.

def _state_path(workdir: Path, search_name: str) -> Path:
    return workdir / "searches" / f"{search_name}.json"


def _load_state(workdir: Path, search_name: str) -> dict[str, Any]:
    path = _state_path(workdir, search_name)
    return json.loads(path.read_text()) if path.exists() else {}


def _save_state(workdir: Path, search_name: str, state: dict[str, Any]) -> None:
    path = _state_path(workdir, search_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, state)


def _options_to_json(opts: SweepOptions) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}


def load_sweep(workdir: Path) -> tuple[SweepOptions, str]:
    """Options and id of the sweep in ``workdir`` (for --resume and status)."""
    path = Path(workdir) / "sweep.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {workdir} is not a sweep directory")
    saved = json.loads(path.read_text())
    options = dict(saved["options"])
    for key in ("workdir", "space_dir", "dataset_file"):
        if options.get(key) is not None:
            options[key] = Path(options[key])
    return SweepOptions(**options), saved["sweep_id"]


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
    _write_json(workdir / "sweep.json", {
        "sweep_id": sweep_id, "tracking_uri": tracking_uri, "experiment_id": experiment_id,
        "options": _options_to_json(opts),
    })
    console.print(f"sweep [bold]{sweep_id}[/]{' (resumed)' if resume else ''} · workdir {workdir} · MLflow {tracking_uri}")

    _optuna_storage(workdir)
    _STOP.clear()
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
        _write_json(workdir / PLAN_FILE, {"sweep_id": sweep_id,
                                          "searches": [f"{m}/{d.name}/{sp.name}" for d, m, sp, _ in jobs]})
        if opts.address:
            # A cluster may grow (the autoscaler adds nodes for waiting trials): the searches ask
            # as given, and each sizes its trials to the cluster when it starts.
            searches_at_once, trials_at_once = opts.concurrent_searches, opts.max_concurrent_trials
        else:
            # The embedded Ray's size is fixed: share its slots (trials at once, and final fits at
            # once) among the searches, so that together they never ask for more than it holds.
            searches_at_once, trials_at_once = fair_share(
                _trial_slots(opts), opts.concurrent_searches, opts.max_concurrent_trials)
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


_OPTUNA_STORAGES: dict[str, Any] = {}

def _optuna_storage(workdir: Path):
    """One Optuna RDB storage per workdir, created in the driver before searches start:
    concurrent first use of a fresh sqlite file races on its schema migration."""
    import optuna

    url = f"sqlite:///{workdir / 'optuna.db'}"
    if url not in _OPTUNA_STORAGES:
        _OPTUNA_STORAGES[url] = optuna.storages.RDBStorage(url)
    return _OPTUNA_STORAGES[url]


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


# Set by a Ctrl+C while searches run in threads (--concurrent-searches): the event each of their
# Tune loops polls, and what their final fits check. Tune wires its own event to SIGINT only in
# the main thread, so without this a Ctrl+C left the running searches going to their end.
_STOP = threading.Event()


def _run_concurrently(run, jobs: list[tuple], n: int, workdir: Path) -> list[SearchOutcome]:
    """Run ``n`` searches side by side in threads, sharing the cluster: trials of different models
    and datasets run together, each search keeping its own searcher and ASHA brackets.

    The main thread waits; a Ctrl+C there sets :data:`_STOP`, every running search saves its Tune
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
                _STOP.set()
                console.print("[yellow]Ctrl+C: stopping the running searches (their state is saved)…[/]")
                pool.shutdown(wait=True, cancel_futures=True)
                raise SweepInterrupted(f"interrupted; finished searches, trials and Optuna studies are "
                                       f"saved. Continue with: harness sweep --resume {workdir}") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _tune_polls_stop_event_in_threads():
    """Hand Tune's run loop :data:`_STOP` as its "experiment interrupted" event in worker threads.

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
        return original() if threading.current_thread() is threading.main_thread() else _STOP

    tune_module._setup_signal_catching = setup_signal_catching
    try:
        yield
    finally:
        tune_module._setup_signal_catching = original


def _replace_opts(opts: SweepOptions, **changes: Any) -> SweepOptions:
    from dataclasses import replace

    return replace(opts, **changes)


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def _base_tags(opts: SweepOptions, sweep_id: str, dataset: Dataset, model: str, split: Split) -> dict[str, str]:
    from harness.featurize.graphs import GRAPH_KINDS, graph_text

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
        **({"structures_sha256": dataset.notes["structures_sha256"]} if "structures_sha256" in dataset.notes else {}),
        "data_rows": str(len(dataset)),
        "data_subsample": str(dataset.notes.get("subsample", "")),
        "data_dropped": str(dataset.dropped),
        "seed": str(opts.seed),
        "max_epochs": str(opts.max_epochs),
        "num_samples": str(opts.num_samples),
        "sampler": opts.sampler,
        **({"graph": graph_text(opts.graph)} if spec.input_kind in GRAPH_KINDS else {}),
        # a user's file has no catalog name: the options that load it, for the reproduce command
        **({"dataset_options": dataset_file_options(opts)} if dataset.suite == "custom" else {}),
    }


def dataset_file_options(opts: SweepOptions) -> str:
    """``--dataset-file F --target T …``: how this sweep read the user's file."""
    parts = [f"--dataset-file {shlex.quote(str(opts.dataset_file))}", f"--target {shlex.quote(opts.target or '')}"]
    if opts.structure_column:
        parts.append(f"--structure-column {shlex.quote(opts.structure_column)}")
    elif opts.formula_column != "formula":
        parts.append(f"--formula-column {shlex.quote(opts.formula_column)}")
    if opts.id_column:
        parts.append(f"--id-column {shlex.quote(opts.id_column)}")
    if opts.drop_invalid:
        parts.append("--drop-invalid")
    return " ".join(parts)


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
    tags = _base_tags(opts, sweep_id, dataset, model, split)
    state = _load_state(workdir, search_name)
    if state.get("stage") == "done" and not (
            opts.retry_failed_searches and _reopen_failed_search(client, workdir, search_name, state, label)):
        console.print(f"{label}: done in an earlier run of this sweep; skipped")
        _drop_trial_checkpoints(opts, workdir, search_name, state, label)  # left by earlier versions
        return _outcome_from_store(client, state, outcome)
    if "parent_run_id" not in state:
        parent = client.create_run(
            experiment_id, tags={**tags, "stage": "search", "mlflow.runName": label}
        )
        state.update({"parent_run_id": parent.info.run_id, "stage": "searching", "label": label})
        _save_state(workdir, search_name, state)
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
        rungs=_asha_rungs(opts.grace_period, opts.reduction_factor, opts.max_epochs),
    )
    if state["stage"] == "searching":
        # Experiments started before names were unique were registered as "_trial_entry", and
        # Tune restores an experiment only with the name it was started with.
        name = state.setdefault("trainable_name", _LEGACY_TRAINABLE_NAME if _experiment_exists(
            opts, workdir, search_name) else trainable_name(search_name, model))
        _save_state(workdir, search_name, state)
        results, signalled = _run_search(opts, workdir, tracking_uri, experiment_id, search_name, label,
                                         parent_run_id, tags, model, context, name, state)
        if signalled or _STOP.is_set() or _interrupted(results, opts.num_samples):
            # Tune catches SIGINT, saves the experiment and returns normally: the search must stay
            # "searching" (not be judged on the trials so far) so that --resume finishes it.
            raise SweepInterrupted(f"{label}: interrupted; its trials and Optuna study are saved. "
                                   f"Continue with: harness sweep --resume {workdir}")
        if _every_trial_killed_for_memory(results):
            # The node's trouble, not the model's: --resume runs the search again, as a new Tune
            # experiment (the killed trials' runs stay in MLflow, tagged lost at its end).
            state["memory_reruns"] = state.get("memory_reruns", 0) + 1
            _save_state(workdir, search_name, state)
            _STOP.set()  # searches running beside this one save their state and stop too
            raise SweepOutOfMemory(
                f"{label}: Ray killed the worker of every trial ({len(results)}) for memory "
                f"({_first_line(results[0].error)}). Free memory on the node (other jobs), or run fewer "
                f"trials at once (--max-concurrent-trials, --concurrent-searches, --num-cpus), then run "
                f"this search again with: harness sweep --resume {workdir}")
        states = _reconcile_trial_runs(client, workdir, search_name, results)
        best_params, best_value = _tally(results, states, outcome)
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
            _save_state(workdir, search_name, state)
            console.print(f"[red]{label}: {outcome.note}[/]")
            return outcome
        client.log_text(parent_run_id, json.dumps(best_params, indent=1, sort_keys=True), "best_params.json")
        state.update({"stage": "searched", "best_params": best_params, "best_val_mae": best_value,
                      "trials": {"completed": outcome.completed, "pruned": outcome.pruned,
                                 "failed": outcome.failed}})
        _save_state(workdir, search_name, state)
    else:
        outcome.completed, outcome.pruned, outcome.failed = (
            state["trials"][k] for k in ("completed", "pruned", "failed")
        )
    outcome.best_val_mae = state["best_val_mae"]
    _drop_trial_checkpoints(opts, workdir, search_name, state, label)
    if _STOP.is_set():
        raise SweepInterrupted(f"{label}: interrupted before its final fits; the search is saved. "
                               f"Continue with: harness sweep --resume {workdir}")
    _final_evaluation(opts, client, experiment_id, workdir, search_name, state, tags, dataset,
                      split, context, outcome, label)
    client.set_terminated(parent_run_id, "FINISHED")
    state["stage"] = "done"
    _save_state(workdir, search_name, state)
    return outcome


def trainable_name(search_name: str, model: str) -> str:
    """The name a search's trainable is registered under in Ray, unique per search.

    Tune registers a function trainable in the cluster-wide registry under its ``__name__`` and
    looks it up by that name each time it starts a trial. With one shared name, two searches
    running side by side (``--concurrent-searches``) overwrote each other's entry, and trials of
    one search ran with the other's bound context (model, dataset, split) while reporting to
    the first: seen as "model 'ridge': unknown hyperparameter(s) ['l1_ratio']"."""
    return f"{model}_{hashlib.sha1(search_name.encode()).hexdigest()[:8]}"


def _search_trainable(context, name: str, resources: dict[str, float]):
    from ray import tune

    bound = tune.with_parameters(trial_entry, context=context)
    bound.__name__ = name  # the registry key (and the trial directory prefix)
    return tune.with_resources(bound, resources)


def _tune_name(search_name: str, state: dict[str, Any]) -> str:
    """The search's Tune experiment: a new one for each time every trial was killed for memory
    and for each --retry-failed of a search none of whose trials completed."""
    reruns = _reruns(state)
    return f"{search_name}--rerun{reruns}" if reruns else search_name


def _study_name(search_name: str, state: dict[str, Any]) -> str:
    """The search's Optuna study. A search retried with --retry-failed gets a new one: its
    search space may have been fixed since, and Optuna refuses a changed categorical in a
    study (the failed trials stay in the earlier study, and in MLflow)."""
    retries = state.get("retries", 0)
    return f"{search_name}--retry{retries}" if retries else search_name


def _reruns(state: dict[str, Any]) -> int:
    return state.get("memory_reruns", 0) + state.get("retries", 0)


def _killed_for_memory(error) -> bool:
    import ray

    return isinstance(error, ray.exceptions.OutOfMemoryError) or tracking.MEMORY_KILL in str(error)


def _every_trial_killed_for_memory(results) -> bool:
    errors = [result.error for result in results]
    return bool(errors) and all(e is not None and _killed_for_memory(e) for e in errors)


def _first_line(error) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    memory = [line for line in lines if tracking.MEMORY_KILL in line]
    return (memory or lines or [type(error).__name__])[0][:300]


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
    _save_state(workdir, search_name, state)
    console.print(f"[yellow]{label}: --retry-failed: {why}[/]", highlight=False)
    return True


def _reopen_run(client, run_id: str, stale_tag: str) -> None:
    client.update_run(run_id, status="RUNNING")
    if stale_tag in client.get_run(run_id).data.tags:
        client.delete_tag(run_id, stale_tag)


def _run_search(opts, workdir, tracking_uri, experiment_id, search_name, label, parent_run_id,
                tags, model, context, registered_name, state):
    """Fit (or, if its experiment directory exists, restore and finish) one Tune search:
    (results, whether a Ctrl+C came during it)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from harness.tuning.restored_search import ReconciledSearchGenerator

    spec = get_model(model)
    tune_name = _tune_name(search_name, state)
    storage_root = opts.storage or str(workdir / "ray_results")
    experiment_path = _experiment_path(opts, workdir, tune_name)
    trainable = _search_trainable(context, registered_name,
                                  {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})
    space = load_space(spec, opts.space_dir)
    def restored():
        # Our own experiment directory (trusted): Ray restores its pickled state, the
        # searcher (same Optuna study) and the callbacks (same trial -> run mapping).
        _quiet_restore_of_trials_without_results()
        return tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True,
                                  resume_errored=True, param_space=space)

    if tune.Tuner.can_restore(experiment_path):
        console.print(f"{label}: resuming the Tune experiment at {experiment_path}")
        return _fit_surviving_memory_kills(restored(), restored, opts, label, workdir)
    searcher = TruthfulOptunaSearch(
        sampler=make_sampler(opts.sampler, opts.seed),
        storage=_optuna_storage(workdir),
        study_name=_study_name(search_name, state),
        seed=opts.seed,
    )
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=opts.max_epochs,
        grace_period=min(opts.grace_period, opts.max_epochs),
        reduction_factor=opts.reduction_factor,
    )
    mapping_file = workdir / "trial_runs" / f"{search_name}.json"
    mapping_file.parent.mkdir(exist_ok=True)
    logger = tracking.TrialRunLogger(
        tracking_uri, experiment_id, parent_run_id, tags, mapping_file=mapping_file,
        finished_key=FINISHED_KEY, error_key=ERROR_KEY, kept_runs=state.get("kept_trial_runs", ()),
    )
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="min", scheduler=scheduler,
            # The concurrency limit is also how many trials Tune asks the cluster for at once:
            # without it Tune keeps one trial pending at a time for a custom searcher, and short
            # trials never overlap. (Tune's max_concurrent_trials builds the same wrapping, but
            # with its own generator, which a torn snapshot can leave out of step on restore.)
            search_alg=ReconciledSearchGenerator(ConcurrencyLimiter(
                searcher, max_concurrent=opts.max_concurrent_trials or _trial_slots(opts))),
            num_samples=opts.num_samples,
            # --reuse-actors: a trial's worker process (torch, the featurized data) serves the
            # next trial; worth it for many short trials (seconds per start), but reused
            # workers stay where they are, so trials spread less over the nodes.
            reuse_actors=opts.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=tune_name,
            storage_path=storage_root,
            callbacks=[logger, ProgressPrinter(label, opts.num_samples, METRIC, console)],
            verbose=0,
            # Retries cover lost nodes and killed workers; a trial's own failure (NaN loss,
            # OOM) is reported as a result by the trainable and never retried.
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    return _fit_surviving_memory_kills(tuner, restored, opts, label, workdir)


def _drop_trial_checkpoints(opts, workdir: Path, search_name: str, state: dict[str, Any], label: str) -> int:
    """Delete the ``checkpoint_*`` folders of a decided search's trials; the bytes freed.

    Tune keeps ``num_to_keep`` checkpoints per trial, not per sweep, and never deletes those of
    finished trials: a checkpoint folder of an attention model is 0.2–0.45 GB, so a 24-search stage held 20 GB and a
    long sweep filled a 250 GB disk. Once a search has its best configuration (stage "searched")
    nothing reads them: the final fits train from scratch with K seeds, and the pages read MLflow
    only. The trials' results (``result.json``, ``progress.csv``) stay. ``--keep-trial-checkpoints``
    keeps them (e.g. to look at the trials' weights).
    """
    if opts.keep_trial_checkpoints:
        return 0
    storage_root = opts.storage or str(workdir / "ray_results")
    names = [search_name] + [f"{search_name}--rerun{n}" for n in range(1, _reruns(state) + 1)]
    freed = folders = 0
    for name in names:
        freed_here, folders_here = _delete_checkpoint_folders(f"{storage_root.rstrip('/')}/{name}")
        freed, folders = freed + freed_here, folders + folders_here
    if folders:
        console.print(f"{label}: deleted {folders} trial checkpoint folder(s), {freed / 1e9:.2f} GB "
                      "(the final fits train from scratch; --keep-trial-checkpoints keeps them)", highlight=False)
    return freed


def _delete_checkpoint_folders(experiment: str) -> tuple[int, int]:
    """(bytes, folders) of the ``<trial>/checkpoint_*`` folders deleted under one Tune experiment,
    local or on the shared storage Ray writes to (pyarrow's filesystems, as Ray's own storage)."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(experiment) if "://" in experiment else (pafs.LocalFileSystem(), experiment)
    def listing(path: str, recursive: bool = False):
        return fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))

    freed = folders = 0
    for trial in listing(root):
        if trial.type != pafs.FileType.Directory:
            continue
        for entry in listing(trial.path):
            if entry.type == pafs.FileType.Directory and entry.base_name.startswith("checkpoint_"):
                freed += sum(f.size or 0 for f in listing(entry.path, recursive=True)
                             if f.type == pafs.FileType.File)
                fs.delete_dir(entry.path)
                folders += 1
    return freed, folders


def _fit_surviving_memory_kills(tuner, restored, opts, label: str, workdir: Path) -> tuple[Any, bool]:
    """``_fit_keeping_sigint(tuner)``, continuing the search when Ray's memory monitor kills a
    trial's worker (the node above 95 % memory, e.g. another job's peak).

    Ray 2.60's Tune does not count such a kill as a trial failure: the ``OutOfMemoryError`` is
    neither an actor nor a task error to its actor manager, which raises "Caught unexpected
    exception" out of ``Tuner.fit`` and so would crash the whole sweep (seen on 2 cores with a
    9 GB fit running beside the sweep). The experiment is saved as it runs, so the search is
    restored (unfinished trials from their last checkpoint) up to ``--max-failures`` times; then
    the sweep stops with its state saved and says what to do.
    """
    import ray

    for attempt in range(opts.max_failures + 1):
        try:
            return _fit_keeping_sigint(tuner)
        except RuntimeError as exc:
            if not isinstance(exc.__cause__, ray.exceptions.OutOfMemoryError):
                raise
            why = str(exc.__cause__).split("\n")[0]
            if attempt == opts.max_failures:
                _STOP.set()  # searches running beside this one save their state and stop too
                raise SweepOutOfMemory(
                    f"{label}: Ray killed this search's trial workers for memory {attempt + 1} times "
                    f"({why}). Free memory on the node (other jobs), or run fewer trials at once "
                    f"(--max-concurrent-trials, --concurrent-searches, --num-cpus), then continue with: "
                    f"harness sweep --resume {workdir}") from exc
            console.print(f"[yellow]{label}: Ray killed a trial's worker for memory ({why}); continuing the "
                          f"search from its saved state ({attempt + 1} of {opts.max_failures})[/]", highlight=False)
            tuner = restored()
    raise AssertionError("unreachable")


class _TrialsWithoutResults(logging.Filter):
    """Drops Ray's restore-time warning "Failed to fetch metrics for N trial(s): ... both
    result.json and progress.csv were not found" when that is all it says: those trials had not
    reported (pending, or started just before the stop) and the resumed search runs them. It read
    as an error in every resumed sweep's output. Other fetch failures still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Failed to fetch metrics"):
            return True
        return not all("were not found" in line for line in message.splitlines()[1:])


def _quiet_restore_of_trials_without_results() -> None:
    ray_logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    if not any(isinstance(f, _TrialsWithoutResults) for f in ray_logger.filters):
        ray_logger.addFilter(_TrialsWithoutResults())


_LEGACY_TRAINABLE_NAME = "_trial_entry"


def _experiment_path(opts, workdir, search_name) -> str:
    storage_root = opts.storage or str(workdir / "ray_results")
    return f"{storage_root.rstrip('/')}/{search_name}"


def _experiment_exists(opts, workdir, search_name) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(_experiment_path(opts, workdir, search_name))


def _fit_keeping_sigint(tuner) -> tuple[Any, bool]:
    """``tuner.fit()`` and whether a Ctrl+C (SIGINT) came during it; then put back the SIGINT
    handler Tune replaced (Tune's own handler stays installed after a normal finish and would
    swallow a Ctrl+C during the final fits).

    A Ctrl+C that comes as the last trial finishes leaves no unfinished trial to show it, so
    the trial states cannot tell. Tune's handler tells: on a SIGINT it sets its stop flag and
    reinstalls the handler it found, so that handler (ours) being back means a SIGINT came.
    """
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    after = None
    try:
        results = tuner.fit()
    finally:
        if main and previous is not None:
            after = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, previous)
    tune_catches_sigint = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0") in ("", "0")
    return results, bool(main and previous is not None and tune_catches_sigint and after is previous)


def _interrupted(results, num_samples: int) -> bool:
    """Did the Tune run end early (SIGINT) rather than by finishing all ``num_samples`` trials?"""
    trials = getattr(getattr(results, "_experiment_analysis", None), "trials", None)
    if trials is None:  # Ray changed its internals: fall back to counting results
        return len(results) < num_samples
    unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
    return bool(unfinished) or len(trials) < num_samples


def fair_share(slots: int, searches: int, trials_per_search: int | None) -> tuple[int, int]:
    """(searches run side by side, trials each runs at once) for a cluster of ``slots`` trials.

    Searches side by side must not ask Ray for more than the cluster holds: Ray does not serve
    waiting resource requests oldest first. Seen on one CPU with two searches: the first
    search's first trial waited (PENDING) while the other thread ran every other search of the
    sweep through the one slot, each new Tuner's trial taking the slot as the previous one
    freed it. So at most ``slots`` searches run at once and each gets an equal share of
    the slots (at least one); ``--max-concurrent-trials``, when given, is taken as asked.
    For the embedded Ray only: a cluster's autoscaler adds nodes for waiting trials, so there
    the demand must be allowed to exceed what the cluster holds now.
    """
    searches = max(1, min(searches, slots))
    return searches, trials_per_search or max(1, slots // searches)


def _trial_slots(opts: SweepOptions) -> int:
    """How many trials of this size the cluster holds at once (at least 1)."""
    import ray

    total = ray.cluster_resources()
    slots = total.get("CPU", 1.0) / opts.cpus_per_trial
    if opts.gpus_per_trial > 0:
        slots = min(slots, total.get("GPU", 0.0) / opts.gpus_per_trial)
    return max(1, int(slots + 1e-9))


def _tally(results, states: dict[str, str], outcome: SearchOutcome) -> tuple[dict | None, float]:
    """Count trial outcomes (MLflow's recorded state wins, see ``_reconcile_trial_runs``);
    return the best completed configuration and its value."""
    best_params, best_value = None, math.inf
    for result in results:
        last = result.metrics or {}
        state = states.get(last.get("trial_id", ""), _ray_state(result))
        setattr(outcome, state, getattr(outcome, state) + 1)
        if state == "completed":
            value = last.get(METRIC, math.nan)
            if value < best_value:
                best_value, best_params = value, result.config
    if best_params is not None:
        best_params = {k: best_params[k] for k in ("model_params", "train_params") if k in best_params}
    return best_params, (best_value if best_params is not None else math.nan)


def _ray_state(result) -> str:
    last = result.metrics or {}
    if result.error is not None or ERROR_KEY in last:
        return "failed"
    return "completed" if last.get(FINISHED_KEY) else "pruned"


def _reconcile_trial_runs(client, workdir: Path, search_name: str, results) -> dict[str, str]:
    """Every trial's final state, as MLflow records it; no trial run stays RUNNING.

    A driver killed between Tune finishing a trial and the callback closing its run leaves a
    RUNNING run: it is closed here from Tune's final state. A run already closed keeps the
    state it recorded (a replay after a resume does not rewrite history).
    """
    mapping_file = workdir / "trial_runs" / f"{search_name}.json"
    runs = json.loads(mapping_file.read_text()) if mapping_file.exists() else {}
    states: dict[str, str] = {}
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id", "")
        run_id = runs.get(trial_id)
        if not run_id:
            continue
        run = client.get_run(run_id)
        if run.info.status == "RUNNING":
            state = _ray_state(result)
            client.set_tag(run_id, "trial_state", state)
            client.set_terminated(run_id, "FAILED" if state == "failed" else "FINISHED")
        else:
            state = run.data.tags.get("trial_state", _ray_state(result))
        states[trial_id] = state
    return states


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


def _final_evaluation(
    opts: SweepOptions, client, experiment_id: str, workdir: Path, search_name: str,
    state: dict[str, Any], tags: dict[str, str], dataset: Dataset, split: Split,
    context: TrialContext, outcome: SearchOutcome, label: str,
) -> None:
    """K final fits of the chosen configuration; each logged to its own ``stage=final`` run.

    Run ids are saved before the fits start, so a resumed sweep fills the same runs; fits
    whose run already finished with a test MAE are not repeated.
    """
    import ray
    from mlflow.entities import Param

    params = state["best_params"]
    seeds = [opts.seed + k for k in range(opts.final_seeds)]
    final_runs: dict[str, str] = state.setdefault("final_runs", {})
    for seed in seeds:
        if str(seed) not in final_runs:
            run = client.create_run(experiment_id, tags={
                **tags, "stage": "final", "seed": str(seed), "mlflow.parentRunId": state["parent_run_id"],
                "mlflow.runName": f"{label}/final-seed{seed}",
            })
            client.log_batch(run.info.run_id, params=[
                Param(k, v) for k, v in tracking.flatten("", {**params, "final_seed": seed}).items()
            ])
            final_runs[str(seed)] = run.info.run_id
    _save_state(workdir, search_name, state)
    todo = []
    for seed in seeds:
        run = client.get_run(final_runs[str(seed)])
        if run.info.status == "FINISHED" and "test_mae" in run.data.metrics:
            outcome.test_mae.append(run.data.metrics["test_mae"])
        else:
            todo.append(seed)
    if not todo:
        return
    console.print(f"{label}: final fits with seeds {todo} on {len(split.train)} training rows")
    task = ray.remote(num_cpus=opts.cpus_per_trial, num_gpus=opts.gpus_per_trial,
                      max_retries=opts.max_failures)(final_task)
    # At most this search's share of the slots at once (see fair_share; all at once on a cluster,
    # where waiting fits make the autoscaler add nodes); the rest queue here.
    at_once = opts.max_concurrent_trials or len(todo)
    refs = {seed: task.remote(context, params, seed) for seed in todo[:at_once]}
    queued = todo[at_once:]
    for seed in todo:
        run_id = final_runs[str(seed)]
        failure = None
        try:
            out = _get_unless_stopped(refs[seed], list(refs.values()), label, workdir)
        except SweepInterrupted:
            raise
        except Exception as exc:  # one failed fit must not lose the others
            failure = exc
        if queued:  # its slot is free: start the next fit
            following = queued.pop(0)
            refs[following] = task.remote(context, params, following)
        if failure is not None:
            client.log_batch(run_id, tags=[_tag("error", str(failure)[-5000:])])
            client.set_terminated(run_id, "FAILED")
            console.print(f"[red]{label}: final fit seed {seed} failed: {failure}[/]")
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
        if out.get("train_pred") is not None:  # for the leaderboards' train/test residual plots
            train = dataset.frame.iloc[split.train][["id", "formula", "target"]].copy()
            train["prediction"] = np.asarray(out["train_pred"], dtype=float)
            client.log_text(run_id, train.to_csv(index=False), "predictions_train.csv")
        client.set_terminated(run_id, "FINISHED")
        outcome.test_mae.append(float(metrics["test_mae"]))
        console.print(f"{label}: final fit seed {seed}: test MAE {float(metrics['test_mae']):.4g} "
                      f"({out['seconds']:.0f} s)", highlight=False)


def _get_unless_stopped(ref, all_refs, label: str, workdir: Path):
    """``ray.get(ref)``, unless a Ctrl+C stops the sweep first (a search in a thread gets no
    KeyboardInterrupt): then cancel this search's final fits; --resume redoes the unfinished ones."""
    import ray

    while not ray.wait([ref], timeout=1.0)[0]:
        if _STOP.is_set():
            for other in all_refs:
                ray.cancel(other)
            raise SweepInterrupted(f"{label}: interrupted during its final fits; finished ones are kept. "
                                   f"Continue with: harness sweep --resume {workdir}")
    return ray.get(ref)


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
