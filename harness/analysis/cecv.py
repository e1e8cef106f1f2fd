"""CECV: how many distinct chemical environments a trained model's element features encode.

The Chemical Environment Clustering Vector is the design diagnostic of L-G-DCNN (Du & Wang,
J. Chem. Theory Comput. 20, 6756 (2024); reference code ``lgdcnn/plots/cecv.py`` in
github.com/dhw059/DeepModelFusion). It is an analysis, not a metric: it describes the
representation a model has learned, not how well it predicts.

For every compound of n elements, take the model's per-element features just before its output
head, ``H [n, d]`` (``model.element_features(batch)``), and turn them into the compound's
"chemical environment", an element-by-element correlation matrix:

    Z = H standardised per feature over the n elements        (pandas: (H - mean) / std, ddof 1)
    C = Pearson correlation between the rows of Z              [n, n]; constant features dropped

Compounds with the same n are compared by ``max_ij |C_ij - C'_ij|``. At a threshold t,
compounds whose environments all lie within t of each other form one cluster; the CECV is the
number of clusters at t = 0.05, 0.10, ..., 0.40, summed over n. More clusters: the features
tell more environments apart.

Adapted from the reference code:
- Clusters come from SciPy's complete-linkage clustering (Chebyshev distance, cut at t): every
  pair in a cluster is within t. The reference code grows clusters greedily around the first
  remaining compound (members within t of that "leader"), which depends on the compounds'
  order; complete linkage is the order-free form of the same rule, and its counts never
  increase with t.
- Elements of a compound are in a canonical order (largest fraction first, ties by Z) so that
  ``C_ij`` compares like with like across compounds.
- ``min_elements`` defaults to 3, as the reference code (which used n = 3..7): for n = 2 the
  standardised rows are negatives of each other, so every binary has C = [[1, -1], [-1, 1]].
  The reference code restricts the compounds to those containing one element (``element``,
  e.g. "Si"); here that filter is optional and off by default.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch
from scipy.cluster.hierarchy import fcluster, linkage

from harness.models.blocks import canonical_order

THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 9))  # 0.05 .. 0.40


# ----------------------------------------------------------------------------- the measure


def environment_matrix(features: np.ndarray) -> np.ndarray:
    """``[n, d]`` element features of one compound -> ``[n, n]`` element correlation matrix."""
    H = np.asarray(features, dtype=np.float64)
    std = H.std(axis=0, ddof=1)
    varying = std > 1e-12 * max(1.0, float(np.abs(H).max(initial=0.0)))
    Z = (H[:, varying] - H[:, varying].mean(axis=0)) / std[varying]
    if Z.shape[1] < 2:
        return np.full((len(H), len(H)), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.corrcoef(Z)


def count_clusters(environments: Iterable[np.ndarray], thresholds: Iterable[float] = THRESHOLDS) -> pd.DataFrame:
    """CECV of a set of environment matrices: ``DataFrame(threshold, n_clusters, n_compounds)``.

    Matrices are grouped by size (number of elements); clusters are counted per group and summed.
    NaN entries (an element whose features do not vary) count as 0 correlation.
    """
    groups: dict[int, list[np.ndarray]] = {}
    for C in environments:
        groups.setdefault(len(C), []).append(np.nan_to_num(C, nan=0.0).ravel())
    thresholds = [float(t) for t in thresholds]
    counts = np.zeros(len(thresholds), dtype=int)
    for flat in groups.values():
        if len(flat) == 1:
            counts += 1
            continue
        tree = linkage(np.stack(flat), method="complete", metric="chebyshev")
        for k, t in enumerate(thresholds):
            counts[k] += int(fcluster(tree, t, criterion="distance").max())
    n_compounds = sum(len(flat) for flat in groups.values())
    return pd.DataFrame({"threshold": thresholds, "n_clusters": counts, "n_compounds": n_compounds})


@torch.no_grad()
def element_environments(
    model: torch.nn.Module,
    batches: Iterable[Any],
    *,
    min_elements: int = 3,
    element: str | None = None,
    device: torch.device | str = "cpu",
) -> list[np.ndarray]:
    """Environment matrices of every compound in ``batches`` with at least ``min_elements``.

    ``model.element_features(batch) -> ([B, L, d], real [B, L])`` must exist (CrabNet, HotCrab,
    L-G-DCNN, L-G-DCNN-V1, Roost). ``element`` keeps only compounds containing that element.
    """
    if not hasattr(model, "element_features"):
        raise TypeError(f"{type(model).__name__} has no element_features(batch); CECV needs per-element features")
    focus = None
    if element is not None:
        from pymatgen.core import Element

        focus = Element(element).Z
    model.eval()
    environments = []
    for batch in batches:
        batch = batch.to(device)
        features, real = model.element_features(batch)
        order = canonical_order(batch.elements, batch.fractions)
        for row in range(len(batch)):
            n = int(real[row].sum())
            columns = order[row, :n]
            if n < min_elements or (focus is not None and focus not in batch.elements[row, columns].tolist()):
                continue
            environments.append(environment_matrix(features[row, columns].double().cpu().numpy()))
    return environments


def plot_cecv(frame: pd.DataFrame, path: Path | str, title: str) -> Path:
    """Line plot of clusters against threshold, written as PNG (matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    ax.plot(frame["threshold"], frame["n_clusters"], "o-")
    ax.set_xlabel("threshold  (max |Δ correlation| within a cluster)")
    ax.set_ylabel("clusters of chemical environments")
    n = int(frame["n_compounds"].iloc[0]) if len(frame) else 0
    ax.set_title(f"{title}\n({n} compounds)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------- train, measure, log


def run_cecv(
    model_name: str,
    dataset_name: str,
    *,
    max_epochs: int | None = None,
    subsample: int | None = None,
    seed: int = 0,
    tracking_uri: str | None = None,
    out_dir: Path | str = ".",
    split: str | None = None,
    element: str | None = None,
    min_elements: int = 3,
    thresholds: Iterable[float] = THRESHOLDS,
    model_params: dict[str, Any] | None = None,
    train_params: dict[str, Any] | None = None,
) -> tuple[pd.DataFrame, Path]:
    """Train ``model_name`` on ``dataset_name`` with its recipe, then CECV on the test rows.

    ``max_epochs`` None keeps the recipe's epochs; ``subsample`` takes a seeded subset of rows;
    ``split`` names the split (default: the dataset's first, "fixed" or "fold0").
    Hyperparameters: the paper defaults, updated by the best configuration of the newest search
    for this model and dataset in ``tracking_uri`` (if there is one), then by ``model_params`` /
    ``train_params``. Writes ``cecv_<model>_<dataset>.png`` and ``.csv`` to ``out_dir``; with
    ``tracking_uri`` it also logs a run tagged ``stage=analysis`` with the counts as the metric
    ``cecv_n_clusters`` (step = threshold x 100), the test MAE, the PNG and the CSV.
    Returns ``(frame, png_path)``; ``frame`` has columns threshold, n_clusters, n_compounds.
    """
    from harness.data import load_dataset
    from harness.featurize import featurize
    from harness.models import get_model
    from harness.training import TrainConfig, Trainer, n_parameters

    spec = get_model(model_name)
    dataset = load_dataset(dataset_name)
    if subsample:
        dataset = dataset.subsample(subsample, seed=seed)
    chosen = dataset.split(split) if split else dataset.splits[0]

    searched = _best_searched_params(tracking_uri, model_name, dataset.name) if tracking_uri else {}
    model_params = {**searched.get("model_params", {}), **(model_params or {})}
    train_params = {**searched.get("train_params", {}), **(train_params or {})}
    model_config = spec.make_config(**model_params)
    recipe = {**spec.train_defaults, **train_params, "seed": seed}
    if max_epochs is not None:
        recipe["epochs"] = max_epochs
    train_config = TrainConfig.from_dict(recipe)

    features = featurize(spec.input_kind, dataset)
    torch.manual_seed(seed)
    model = spec.build(model_config, features.info)
    if not hasattr(model, "element_features"):
        raise TypeError(f"model {model_name!r} exposes no per-element features; CECV needs element_features(batch)")
    trainer = Trainer(model, features, dataset.targets, chosen, train_config)
    trainer.fit()
    test = trainer.evaluate(chosen.test)

    test_rows = chosen.test
    batches = features.batches(test_rows, np.zeros(len(test_rows)), trainer.batch_size)
    environments = element_environments(
        trainer.model, batches, min_elements=min_elements, element=element, device=trainer.device
    )
    frame = count_clusters(environments, thresholds)

    out_dir = Path(out_dir)
    stem = f"cecv_{model_name}_{dataset.name}"
    title = f"CECV: {spec.label} on {dataset.name} ({chosen.name} test)" + (f", compounds with {element}" if element else "")
    png = plot_cecv(frame, out_dir / f"{stem}.png", title)
    frame.to_csv(out_dir / f"{stem}.csv", index=False)

    if tracking_uri:
        _log_analysis_run(
            tracking_uri, frame, png, out_dir / f"{stem}.csv",
            tags={
                "stage": "analysis", "analysis": "cecv", "model": model_name, "model_label": spec.label,
                "dataset": dataset.name, "suite": dataset.suite, "split": chosen.name, "seed": str(seed),
                "data_sha256": dataset.sha256, "data_subsample": str(dataset.notes.get("subsample", "")),
                "params_source": "search" if searched else "paper defaults",
                "cecv_element": element or "", "cecv_min_elements": str(min_elements),
                "mlflow.runName": f"cecv/{model_name}/{dataset.name}/{chosen.name}",
            },
            params={"model_params": asdict(model_config), "train_params": asdict(train_config)},
            metrics={"test_mae": test["mae"], "test_rmse": test["rmse"], "n_params": n_parameters(model),
                     "epochs_run": trainer.epoch},
        )
    return frame, png


def _best_searched_params(tracking_uri: str, model: str, dataset: str) -> dict[str, Any]:
    """``best_params.json`` of the best finished search run for (model, dataset); {} if none."""
    from mlflow.tracking import MlflowClient

    from harness.tuning.tracking import EXPERIMENT

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return {}
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.stage = 'search' and tags.model = '{model}' and tags.dataset = '{dataset}'",
        order_by=["metrics.best_val_mae ASC"],
        max_results=1,
    )
    if not runs or not math.isfinite(runs[0].data.metrics.get("best_val_mae", math.nan)):
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(runs[0].info.run_id, "best_params.json", tmp)
        except Exception:  # a search that found nothing logged no best_params.json
            return {}
        return json.loads(Path(path).read_text())


def _log_analysis_run(
    tracking_uri: str, frame: pd.DataFrame, png: Path, csv: Path,
    tags: dict[str, str], params: dict[str, Any], metrics: dict[str, float],
) -> str:
    import time

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from harness.tuning import tracking

    workdir = _workdir_of(tracking_uri, png.parent)
    experiment_id = tracking.prepare_store(tracking_uri, workdir)
    client = MlflowClient(tracking_uri)
    run = client.create_run(experiment_id, tags={**tracking.provenance_tags(), **tags})
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if math.isfinite(float(v))]
        + [Metric("cecv_n_clusters", float(n), now, int(round(t * 100)))
           for t, n in zip(frame["threshold"], frame["n_clusters"])],
        params=[Param(k, v) for k, v in tracking.flatten("", params).items()],
    )
    client.log_artifact(run_id, str(png))
    client.log_artifact(run_id, str(csv))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _workdir_of(tracking_uri: str, fallback: Path) -> Path:
    """The folder of a ``sqlite:///<dir>/mlflow.db`` store (where its artifacts go), else ``fallback``."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).parent
    return fallback
