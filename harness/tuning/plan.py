"""What a sweep runs: its options, the datasets and splits they select, the checks that fail a
bad plan before the sweep touches its workdir, the tags every run of a search carries, and what a
search came to (:class:`SearchOutcome`)."""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from harness.data.dataset import Dataset, Split
from harness.models import get_model
from harness.training.config import PRECISIONS
from harness.tuning import tracking
from harness.tuning.space import load_space


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


def asha_rungs(grace: int, factor: int, max_t: int) -> tuple[int, ...]:
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


def base_tags(opts: SweepOptions, sweep_id: str, dataset: Dataset, model: str, split: Split) -> dict[str, str]:
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
