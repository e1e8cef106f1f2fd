"""One search of a (model, dataset, split) on Ray Tune: Optuna proposes (told the truth about
pruned trials), ASHA stops weak trials at epoch rungs, one MLflow child run per trial. Started
afresh or restored from its experiment directory; it survives Ctrl+C and Ray's memory kills."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from harness.console import make_console
from harness.models import get_model
from harness.tuning import tracking
from harness.tuning.interrupts import STOP, SweepOutOfMemory
from harness.tuning.optuna_search import ERROR_KEY, FINISHED_KEY, TruthfulOptunaSearch, make_sampler
from harness.tuning.plan import SearchOutcome, SweepOptions
from harness.tuning.progress import ProgressPrinter
from harness.tuning.space import load_space
from harness.tuning.worker import trial_entry

# Logs and CI are not terminals: rich would wrap at 80 columns there.
console = make_console(stderr=True)


METRIC = "best_val_mae"  # best validation MAE so far: what ASHA compares and Optuna minimises


_OPTUNA_STORAGES: dict[str, Any] = {}


def optuna_storage(workdir: Path):
    """One Optuna RDB storage per workdir, created in the driver before searches start:
    concurrent first use of a fresh sqlite file races on its schema migration."""
    import optuna

    url = f"sqlite:///{workdir / 'optuna.db'}"
    if url not in _OPTUNA_STORAGES:
        _OPTUNA_STORAGES[url] = optuna.storages.RDBStorage(url)
    return _OPTUNA_STORAGES[url]


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
    n = reruns(state)
    return f"{search_name}--rerun{n}" if n else search_name


def _study_name(search_name: str, state: dict[str, Any]) -> str:
    """The search's Optuna study. A search retried with --retry-failed gets a new one: its
    search space may have been fixed since, and Optuna refuses a changed categorical in a
    study (the failed trials stay in the earlier study, and in MLflow)."""
    retries = state.get("retries", 0)
    return f"{search_name}--retry{retries}" if retries else search_name


def reruns(state: dict[str, Any]) -> int:
    return state.get("memory_reruns", 0) + state.get("retries", 0)


def _killed_for_memory(error) -> bool:
    import ray

    return isinstance(error, ray.exceptions.OutOfMemoryError) or tracking.MEMORY_KILL in str(error)


def every_trial_killed_for_memory(results) -> bool:
    errors = [result.error for result in results]
    return bool(errors) and all(e is not None and _killed_for_memory(e) for e in errors)


def first_line(error) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    memory = [line for line in lines if tracking.MEMORY_KILL in line]
    return (memory or lines or [type(error).__name__])[0][:300]


def run_search(opts, workdir, tracking_uri, experiment_id, search_name, label, parent_run_id,
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
        storage=optuna_storage(workdir),
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
                searcher, max_concurrent=opts.max_concurrent_trials or trial_slots(opts))),
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


def drop_trial_checkpoints(opts, workdir: Path, search_name: str, state: dict[str, Any], label: str) -> int:
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
    names = [search_name] + [f"{search_name}--rerun{n}" for n in range(1, reruns(state) + 1)]
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
                STOP.set()  # searches running beside this one save their state and stop too
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


LEGACY_TRAINABLE_NAME = "_trial_entry"


def _experiment_path(opts, workdir, search_name) -> str:
    storage_root = opts.storage or str(workdir / "ray_results")
    return f"{storage_root.rstrip('/')}/{search_name}"


def experiment_exists(opts, workdir, search_name) -> bool:
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


def interrupted(results, num_samples: int) -> bool:
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


def trial_slots(opts: SweepOptions) -> int:
    """How many trials of this size the cluster holds at once (at least 1)."""
    import ray

    total = ray.cluster_resources()
    slots = total.get("CPU", 1.0) / opts.cpus_per_trial
    if opts.gpus_per_trial > 0:
        slots = min(slots, total.get("GPU", 0.0) / opts.gpus_per_trial)
    return max(1, int(slots + 1e-9))


def tally(results, states: dict[str, str], outcome: SearchOutcome) -> tuple[dict | None, float]:
    """Count trial outcomes (MLflow's recorded state wins, see ``reconcile_trial_runs``);
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


def reconcile_trial_runs(client, workdir: Path, search_name: str, results) -> dict[str, str]:
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
