"""``harness``: search, evaluate and rank materials-property models.

A typical day:

[bold]harness data list[/]  (what can be benchmarked)

[bold]harness sweep --models crabnet --datasets mp_bulk_modulus --num-samples 16 --max-epochs 40[/]

[bold]harness leaderboard --suite crabnet28[/]  (writes runs/default/leaderboards/crabnet28.md)

[bold]harness ui[/]  (browse every trial in MLflow)
"""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from harness.console import make_console

app = typer.Typer(
    help=__doc__,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="List and fetch datasets.", no_args_is_help=True)
models_app = typer.Typer(help="List the registered architectures.", no_args_is_help=True)
analyze_app = typer.Typer(help="Analyses of trained models (logged to MLflow, plotted as PNG).",
                          no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")
app.add_typer(analyze_app, name="analyze")

console = make_console()
err = make_console(stderr=True)

DEFAULT_WORKDIR = Path("runs/default")

WorkdirOpt = Annotated[
    Path,
    typer.Option("--workdir", help="Sweep directory: Ray results, Optuna study, and the embedded "
                 "MLflow store (mlflow.db) unless --mlflow-uri is given."),
]
MlflowOpt = Annotated[
    Optional[str],
    typer.Option("--mlflow-uri", help="MLflow tracking URI (e.g. http://127.0.0.1:5000 or "
                 "postgresql://…). Default: sqlite:///<workdir>/mlflow.db."),
]


def _fail(message: str) -> None:
    # soft_wrap: one line however long its paths are, so a log or `2>&1 | grep` keeps it whole
    err.print(f"[red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(2)


def _run_or_report_interrupt(run_sweep, *args, **kwargs) -> None:
    """Run the sweep; on Ctrl+C say how to continue and exit 130 (the shell's code for SIGINT)."""
    import signal

    from harness.tuning.sweep import SweepInterrupted

    # A sweep started as `cmd &` by a non-interactive shell (a script, `nohup … &`) inherits SIGINT
    # ignored. Tune installs its own handler during each search, so `kill -INT` would stop a
    # search but be ignored while featurizing or in the final fits: make it stop every phase.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run_sweep(*args, **kwargs)
    except SweepInterrupted as exc:
        err.print(f"[yellow]stopped:[/] {exc}")
        raise typer.Exit(exc.exit_code)
    except KeyboardInterrupt:  # Ctrl+C outside a Tune search (featurizing, final fits)
        workdir = Path(args[0].workdir).resolve()
        err.print(f"[yellow]stopped:[/] interrupted. Continue with: harness sweep --resume {workdir}")
        raise typer.Exit(130)


def _tracking_uri(workdir: Path, mlflow_uri: str | None) -> str:
    from harness.tuning.tracking import default_tracking_uri

    if mlflow_uri:
        # Reading a sqlite store that is not there would create an empty one at that path (a
        # mistyped --mlflow-uri leaves a stray database behind and reports "no sweep").
        database = _sqlite_file(mlflow_uri)
        if database is not None and not database.exists():
            _fail(f"no MLflow store at {database} (from --mlflow-uri {mlflow_uri}); give the URI the sweep "
                  "logged to (`harness status WORKDIR` shows it), e.g. sqlite:///runs/default/mlflow.db")
        return mlflow_uri
    if not (workdir / "mlflow.db").exists():
        _fail(f"no MLflow store at {workdir / 'mlflow.db'}; pass --workdir of a sweep or --mlflow-uri")
    return default_tracking_uri(workdir)


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for servers, in-memory and other stores)."""
    from sqlalchemy.engine import make_url

    if not uri.startswith("sqlite:"):
        return None
    database = make_url(uri).database
    return Path(database) if database and database != ":memory:" else None


# ----------------------------------------------------------------------------- data
@data_app.command("list")
def data_list(
    suite: Annotated[Optional[str], typer.Option(help="Only this suite (crabnet28, matbench, structures, jarvis).")] = None,
) -> None:
    """Table of datasets: name, suite, inputs, rows, target, unit, split scheme.

    inputs: every dataset has compositions (for the composition models); the structure models
    (`harness models list`, group all-structure) need a dataset with structures."""
    from harness.data import data_table

    frame = data_table(suite)
    table = Table(title=f"datasets{f' in {suite}' if suite else ''}")
    for col in frame.columns:
        table.add_column(str(col), justify="right" if col == "rows" else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*["?" if v is None else str(v) for v in row])
    console.print(table)


@data_app.command("fetch")
def data_fetch(
    names: Annotated[str, typer.Argument(help="Datasets or suites, comma separated.")] = "crabnet28,matbench",
) -> None:
    """Download sources into the cache (HARNESS_CACHE, default ~/.cache/harness) and check them."""
    from harness.data import fetch, resolve_datasets

    try:
        datasets = [d for part in names.split(",") for d in resolve_datasets(part)]
        where = fetch(datasets)
    except (KeyError, ValueError, OSError) as exc:
        _fail(str(exc))
    by_source: dict[Path, list[str]] = {}  # crabnet28's 28 sets share one wheel: one line, not 28
    for name, path in sorted(where.items(), key=lambda item: item[0].lower()):
        by_source.setdefault(path, []).append(name)
    for path, in_it in by_source.items():
        console.print(f"{in_it[0]}: {path}" if len(in_it) == 1 else f"{len(in_it)} datasets ({', '.join(in_it)}): {path}",
                      soft_wrap=True)


# ----------------------------------------------------------------------------- models
@models_app.command("list")
def models_list() -> None:
    """Registered models with input kind, parameter count (default config) and paper."""
    from harness.featurize import default_info
    from harness.models import all_models, model_groups
    from harness.training import n_parameters

    table = Table(title="models")
    for col in ("name", "input", "parameters", "groups"):
        table.add_column(col, no_wrap=True)
    # A terminal keeps the table on one screen; a pipe or a file gets the whole citation.
    table.add_column("paper", overflow="ellipsis", no_wrap=True, max_width=60 if console.is_terminal else None)
    groups_of = model_groups()
    for name, spec in all_models().items():
        groups = ",".join(g for g, members in groups_of.items() if name in members)
        try:
            model = spec.build(spec.make_config(), default_info(spec.input_kind))
            params = f"{n_parameters(model):,}" if spec.framework == "torch" else "n/a"
        except Exception as exc:  # listing must not die on one model's missing resource
            params = f"? ({type(exc).__name__})"
        table.add_row(name, spec.input_kind, params, groups, spec.paper)
    console.print(table)


# ----------------------------------------------------------------------------- sweep
@app.command()
def sweep(
    models: Annotated[str, typer.Option(help="Models or groups, comma separated (see `harness models list`).")] = "",
    datasets: Annotated[str, typer.Option(help="Datasets or a suite name, comma separated (see `harness data list`).")] = "",
    num_samples: Annotated[int, typer.Option(help="Trials per (model, dataset, split) search.")] = 8,
    max_epochs: Annotated[int, typer.Option(help="Epochs of a trial that ASHA never stops; also the final fits' epochs.")] = 50,
    final_seeds: Annotated[int, typer.Option(help="Seeds K for the final fits of the best configuration.")] = 3,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    mlflow_uri: MlflowOpt = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster address (e.g. 127.0.0.1:6379 or auto). Default: start Ray in-process.")] = None,
    cpus_per_trial: Annotated[float, typer.Option(help="CPUs reserved per trial (also torch threads).")] = 1.0,
    gpus_per_trial: Annotated[float, typer.Option(help="GPUs per trial; fractions pack several trials on a GPU.")] = 0.0,
    precision: Annotated[str, typer.Option(help="fp32, or bf16: mixed precision (training forward passes under bfloat16 autocast; weights, optimizer and loss in float32; predictions in float32). Measured on a CPU with AMX: ALIGNN 2.1x, Crysformer 2.9x, CrabNet 1.5x faster per epoch; on CPUs without bf16 instructions it is slower.")] = "fp32",
    sampler: Annotated[str, typer.Option(help="Optuna sampler: tpe, random or cmaes.")] = "tpe",
    seed: Annotated[int, typer.Option(help="Seed of the sampler, of training, and of the first final fit.")] = 0,
    folds: Annotated[Optional[str], typer.Option(help="CV folds to run, e.g. 0,1 (default: all).")] = None,
    subsample: Annotated[Optional[int], typer.Option(help="Use a seeded random subset of N rows (quick runs).")] = None,
    drop_invalid: Annotated[bool, typer.Option(help="Drop invalid rows (counted and logged) instead of failing.")] = False,
    grace_period: Annotated[int, typer.Option(help="ASHA: epochs before a trial can be stopped.")] = 1,
    reduction_factor: Annotated[int, typer.Option(help="ASHA: keep the top 1/F at each rung.")] = 2,
    dataset_file: Annotated[Optional[Path], typer.Option(help="Your own CSV with a formula (or, with --structure-column, a structure) column and a target column; structures may also come as JSON(.gz). A seeded 80/10/10 split.")] = None,
    target: Annotated[Optional[str], typer.Option(help="Target column of --dataset-file.")] = None,
    formula_column: Annotated[str, typer.Option(help="Formula column of --dataset-file.")] = "formula",
    neighbours: Annotated[Optional[int], typer.Option(help="Crystal graphs: the k nearest periodic neighbours of each atom (default 12, ties with the k-th kept).")] = None,
    graph_mode: Annotated[Optional[str], typer.Option(help="Crystal graphs: knn (default; --neighbours) or radius (every neighbour within --cutoff; an atom with none is an error naming the entry). ALIGNN's line graph needs knn.")] = None,
    cutoff: Annotated[Optional[float], typer.Option(help="Crystal graphs with --graph-mode radius: the radius in Å (default 8).")] = None,
    structure_column: Annotated[Optional[str], typer.Option(help="Structure column of --dataset-file (CIF, POSCAR or pymatgen dict, detected per row): structure models read the structure, composition models its composition.")] = None,
    id_column: Annotated[Optional[str], typer.Option(help="Unique row ids of --dataset-file (default: <file name>:<data row>).")] = None,
    search_spaces: Annotated[Optional[Path], typer.Option(help="Folder of search-space YAMLs (default: search_spaces/).")] = None,
    storage: Annotated[Optional[str], typer.Option(help="Ray experiment storage; on a multi-node cluster shared storage (s3://…, gs://…, or an NFS path). Default: <workdir>/ray_results.")] = None,
    max_failures: Annotated[int, typer.Option(help="Retries (from the last checkpoint) of a trial whose worker or node died.")] = 3,
    concurrent_searches: Annotated[Optional[int], typer.Option(help="Searches (model × dataset × split) run side by side; fills the slots a search's last trials leave idle. On the embedded Ray each gets an equal share of the trial slots (at most one search per slot); with --address as many as asked (an autoscaler adds nodes). Default 1; with --resume, the interrupted sweep's value unless given.")] = None,
    max_concurrent_trials: Annotated[Optional[int], typer.Option(help="Trials (and final fits) of one search at once (default: as many as the CPUs/GPUs fit; on the embedded Ray divided among --concurrent-searches).")] = None,
    reuse_actors: Annotated[bool, typer.Option(help="Reuse trial worker processes across trials (for many short trials).")] = False,
    keep_trial_checkpoints: Annotated[bool, typer.Option(help="Keep the trials' Tune checkpoints after each search has chosen its configuration (by default they are deleted then: 0.2–0.45 GB per trial checkpoint folder for the attention models, and nothing reads them; the final fits train from scratch).")] = False,
    num_cpus: Annotated[Optional[int], typer.Option(help="CPUs of this machine the embedded Ray may use (default: all); leaves the rest free for other work. Ignored with --address.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the interrupted sweep in this workdir: same Ray experiments, Optuna studies and MLflow runs.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="With --resume: run again the finished searches that gave no test MAE (none of their trials completed, or their final fits failed), e.g. after a full disk or a fixed search space. Their failed runs stay in MLflow.")] = False,
) -> None:
    """Search hyperparameters, retrain the best with K seeds, score it on the test split.

    Optuna proposes configurations and ASHA stops weak trials early, on Ray; every trial is an
    MLflow run. The best configuration of each search is retrained with K seeds on the split's
    training data and scored on its test part (every fold for CV suites).

    Example: [bold]harness sweep --models crabnet --datasets aflow__ael_bulk_modulus_vrh --num-samples 8 --max-epochs 20[/]
    """
    from harness.data import DataError, resolve_datasets
    from harness.models import resolve_models
    from harness.tuning.optuna_search import SAMPLERS
    from harness.tuning.space import SearchSpaceError
    from harness.tuning.sweep import SweepOptions, run_sweep

    if resume is not None:
        from harness.tuning.sweep import load_sweep

        try:
            saved, _ = load_sweep(resume)
        except FileNotFoundError as exc:
            _fail(str(exc))
        saved.address, saved.mlflow_uri = address or saved.address, mlflow_uri or saved.mlflow_uri
        saved.num_cpus = num_cpus or saved.num_cpus
        saved.concurrent_searches = concurrent_searches or saved.concurrent_searches
        saved.retry_failed_searches = retry_failed
        _run_or_report_interrupt(run_sweep, saved, resume=True)
        return
    if retry_failed:
        _fail("--retry-failed goes with --resume WORKDIR (it runs again that sweep's failed searches)")
    if not models:
        _fail("give --models (see `harness models list`) or --resume WORKDIR")
    if sampler not in SAMPLERS:
        _fail(f"--sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
    if not datasets and dataset_file is None:
        _fail("give --datasets (a name or suite; see `harness data list`) or --dataset-file")
    try:
        model_names = resolve_models(models)
        dataset_names = [d for part in datasets.split(",") if part.strip() for d in resolve_datasets(part.strip())]
        fold_list = [int(f) for f in folds.split(",")] if folds else None
        opts = SweepOptions(
            models=model_names, datasets=dataset_names, num_samples=num_samples,
            max_epochs=max_epochs, final_seeds=final_seeds, workdir=workdir, mlflow_uri=mlflow_uri,
            address=address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, precision=precision,
            sampler=sampler, seed=seed, folds=fold_list, subsample=subsample,
            drop_invalid=drop_invalid, grace_period=grace_period,
            reduction_factor=reduction_factor, space_dir=search_spaces,
            dataset_file=dataset_file, target=target, formula_column=formula_column,
            structure_column=structure_column, id_column=id_column,
            graph_k=neighbours, graph_mode=graph_mode, graph_cutoff=cutoff,
            storage=storage, max_failures=max_failures, concurrent_searches=concurrent_searches or 1,
            max_concurrent_trials=max_concurrent_trials, reuse_actors=reuse_actors, num_cpus=num_cpus,
            keep_trial_checkpoints=keep_trial_checkpoints,
        )
        _run_or_report_interrupt(run_sweep, opts)
    except (KeyError, ValueError, DataError, SearchSpaceError, FileNotFoundError) as exc:
        # str(KeyError) is the repr of its message (quoted); other errors' messages are as written
        _fail(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))


# ----------------------------------------------------------------------------- status
@app.command()
def status(
    workdir: Annotated[Path, typer.Argument(
        help="A sweep's --workdir, or a folder of them (one summary row per sweep).")] = DEFAULT_WORKDIR,
) -> None:
    """Where a sweep stands: trials by state, best so far, final fits, hours, time left.

    One row per model, dataset and split: trials running / completed / pruned / failed, the best
    val MAE so far, final fits, and the searches not yet started as `pending`; works while the
    sweep runs and after it was interrupted. `hours`: a search's trial time plus its final fits'
    time. Under the table, the time left: each unfinished search costs what its model's finished
    searches cost per dataset row, times its rows.

    Given a folder of sweep workdirs (e.g. the stages of scripts/first_leaderboard.sh): one row
    per sweep."""
    from harness.tuning.status import (disk_text, stage_counts, sweep_dirs, sweep_status, sweeps_summary,
                                       time_left_text)

    try:  # OSError: a missing sweep.json (our message) or a path the OS refuses (e.g. a name too long)
        if not (workdir / "sweep.json").exists() and sweep_dirs(workdir):
            n = len(sweep_dirs(workdir))
            free = shutil.disk_usage(workdir).free / 1e9
            _print_frame(sweeps_summary(workdir), title=f"{n} sweep{'s' * (n != 1)} in {workdir}",
                         caption=f"disk_gb: what each workdir holds ({free:.3g} GB free on the disk)\n"
                                 f"searches of one sweep: harness status {workdir}/<sweep>")
            return
        sweep, frame = sweep_status(workdir)
    except OSError as exc:
        _fail(str(exc))
    caption = stage_counts(frame)
    if left := time_left_text(sweep, frame):
        caption += "\n" + left
    caption += "\n" + disk_text(workdir)
    _print_frame(frame, title=f"sweep {sweep['sweep_id']} · {sweep['tracking_uri']}", caption=caption)


def _print_frame(frame, title: str, caption: str) -> None:
    """A DataFrame as a rich table: floats to 4 significant digits, missing values as —."""
    table = Table(title=title, caption=caption)
    for col in frame.columns:
        table.add_column(col)
    for row in frame.itertuples(index=False):
        table.add_row(*["—" if v is None or (isinstance(v, float) and v != v) else
                        (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in row])
    console.print(table)


# ----------------------------------------------------------------------------- leaderboard
@app.command()
def leaderboard(
    suite: Annotated[Optional[str], typer.Option(help="Suite to rank (default: every suite in the store).")] = None,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    mlflow_uri: MlflowOpt = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Output folder (default: <workdir>/leaderboards, beside the sweep's runs). The repository's "
             "committed leaderboards/ are written only when asked for (--out leaderboards), as "
             "scripts/first_leaderboard.sh does.")] = None,
) -> None:
    """Write markdown leaderboards, plots and CSV exports from the runs in MLflow.

    MLflow is the only source of truth: one page per suite, and per dataset a page with plots;
    CSV exports (and, for matbench, Matbench submission files); README.md (index, protocols,
    budget, commands). The same store gives the same bytes. Each suite page is composed from its
    datasets' records (<suite>/<dataset>/record.json), which scripts/publish_leaderboard.py uses
    to publish one dataset at a time. Only the suites written are replaced: a folder's other
    suites (e.g. from another store) stay, and README.md indexes every suite in the folder (each
    suite's rows: <suite>/index.json)."""
    from harness.leaderboard.build import LeaderboardError, suites_in_store, write_all

    uri = _tracking_uri(workdir, mlflow_uri)
    suites = [suite] if suite else suites_in_store(uri)
    if not suites:
        _fail(f"no sweep in {uri}; run `harness sweep` first")
    try:
        # A user's sweep never overwrites the committed pages of the repository by default.
        pages = write_all(uri, out or workdir / "leaderboards", suites)
    except LeaderboardError as exc:
        _fail(str(exc))
    for path in pages:
        console.print(f"wrote {path} (+ {path.with_suffix('')}/)")
    console.print(f"wrote {pages[0].parent / 'README.md'}")


# ----------------------------------------------------------------------------- analyze
@analyze_app.command("cecv")
def analyze_cecv(
    dataset: Annotated[str, typer.Option(help="A composition dataset (see `harness data list`).")],
    model: Annotated[str, typer.Option(help="A model exposing per-element features: lgdcnn, crabnet, roost (or lgdcnn_v1, hotcrab).")] = "lgdcnn",
    max_epochs: Annotated[Optional[int], typer.Option(help="Training epochs (default: the model's paper recipe).")] = None,
    subsample: Annotated[Optional[int], typer.Option(help="Train and measure on a seeded random subset of this many rows.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the subset and of training.")] = 0,
    split: Annotated[Optional[str], typer.Option(help="Split to train on and measure (default: the dataset's first, fixed or fold0).")] = None,
    element: Annotated[Optional[str], typer.Option(help="Only compounds containing this element (the paper uses Si).")] = None,
    min_elements: Annotated[int, typer.Option(help="Smallest compounds counted (binaries carry no information: see the module's docstring).")] = 3,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    mlflow_uri: MlflowOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder of the PNG and CSV (default: <workdir>/analysis).")] = None,
) -> None:
    """CECV of a trained model: clusters of chemical environments at similarity thresholds.

    L-G-DCNN's diagnostic of its learned element features (Du & Wang, JCTC 2024). Trains the model
    (with the best hyperparameters a search in this store found for the model and dataset, else the
    paper's), then counts the distinct per-compound environments of the test rows at thresholds
    0.05 ... 0.40. Writes a PNG and a CSV, and logs an MLflow run tagged stage=analysis.

    Example: [bold]harness analyze cecv --model lgdcnn --dataset aflow__ael_bulk_modulus_vrh --max-epochs 20[/]
    """
    from harness.analysis import run_cecv
    from harness.data import DataError, resolve_datasets
    from harness.models import resolve_models
    from harness.tuning.tracking import default_tracking_uri

    try:
        (model_name,) = resolve_models(model)
        (dataset_name,) = resolve_datasets(dataset)
    except KeyError as exc:
        _fail(str(exc.args[0]) if exc.args else str(exc))
    except ValueError:
        _fail("give one model and one dataset (not a group or suite)")
    if mlflow_uri:
        uri = _tracking_uri(workdir, mlflow_uri)
    else:
        workdir.mkdir(parents=True, exist_ok=True)
        uri = default_tracking_uri(workdir)
    out = out or workdir / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    try:
        frame, png = run_cecv(model_name, dataset_name, max_epochs=max_epochs, subsample=subsample, seed=seed,
                              tracking_uri=uri, out_dir=out, split=split, element=element, min_elements=min_elements)
    except (KeyError, ValueError, TypeError, DataError) as exc:
        _fail(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
    _print_frame(frame, title=f"CECV: {model_name} on {dataset_name}", caption="")
    console.print(f"wrote {png}\nwrote {png.with_suffix('.csv')}\nlogged to MLflow {uri} (a run tagged stage=analysis)")


# ----------------------------------------------------------------------------- ui
@app.command()
def ui(
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    mlflow_uri: MlflowOpt = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Start the MLflow UI on the sweep's store, bound to 127.0.0.1 (reach it remotely via SSH -L)."""
    uri = _tracking_uri(workdir, mlflow_uri)
    # One server process, and no GenAI job runners (MLflow 3 starts 7 `huey` consumers, each
    # importing MLflow): a one-person viewer then starts in ~13 s instead of ~40 s on 2 cores.
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if (workdir / "mlartifacts").exists() and not mlflow_uri:
        cmd += ["--default-artifact-root", (workdir / "mlartifacts").resolve().as_uri()]
    console.print(f"MLflow UI on http://127.0.0.1:{port} (Ctrl-C to stop)")
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}  # the user's setting wins
    raise typer.Exit(subprocess.call(cmd, env=env))


def _reflow_help(*apps: typer.Typer) -> None:
    """Join the lines of each docstring paragraph: rich help keeps a docstring's line breaks,
    which then break again at the terminal's width (a ragged column in `--help`)."""
    def reflow(text: str | None) -> str | None:
        if not text:
            return text
        return "\n\n".join(" ".join(line.strip() for line in part.splitlines())
                           for part in inspect.cleandoc(text).split("\n\n"))

    for sub in apps:
        for command in sub.registered_commands:
            command.callback.__doc__ = reflow(command.callback.__doc__)


_reflow_help(app, data_app, models_app, analyze_app)

if __name__ == "__main__":
    app()
