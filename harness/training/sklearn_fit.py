"""Fitting and scoring scikit-learn models (``ModelSpec.framework == "sklearn"``).

The counterpart of the torch ``Trainer`` for the classical baselines: fit once on the split's
training rows of ``features.matrix`` (raw targets; any scaling lives inside the estimator, see
``harness/models/classical.py``), score in original units. There are no epochs: a trial reports
once, and ``best_val_mae`` is the val MAE. ``seed`` goes to every ``random_state`` parameter of
the estimator, nested ones included (the trees inside AdaBoost, say).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from harness.data.dataset import Split
from harness.featurize.base import Features
from harness.training.metrics import regression_metrics


def _fit(spec: Any, model_config: Any, features: Features, targets: np.ndarray, split: Split, seed: int):
    estimator = spec.build(model_config, features.info)
    seeds = {k: seed for k in estimator.get_params(deep=True) if k == "random_state" or k.endswith("__random_state")}
    estimator.set_params(**seeds)
    start = time.perf_counter()
    estimator.fit(features.matrix(split.train), np.asarray(targets, dtype=np.float64)[split.train])
    return estimator, time.perf_counter() - start


def _predict_and_score(estimator, features: Features, targets: np.ndarray, indices: np.ndarray, part: str):
    """(predictions, ``{part}_mae / _rmse / _r2``) on rows ``indices``, original units."""
    indices = np.asarray(indices)
    prediction = estimator.predict(features.matrix(indices))
    metrics = regression_metrics(np.asarray(targets, dtype=np.float64)[indices], prediction)
    return prediction, {f"{part}_{name}": value for name, value in metrics.items()}


def fit_sklearn(
    spec: Any, model_config: Any, features: Features, targets: np.ndarray, split: Split, seed: int = 0
) -> dict[str, float]:
    """One trial: fit on train, score train and val. Keys as the torch trial's epoch report."""
    estimator, seconds = _fit(spec, model_config, features, targets, split, seed)
    metrics = {"epoch_seconds": seconds}
    for part, indices in (("train", split.train), ("val", split.val)):
        metrics.update(_predict_and_score(estimator, features, targets, indices, part)[1])
    metrics["best_val_mae"] = metrics["val_mae"]
    return metrics


def final_sklearn(
    spec: Any, model_config: Any, features: Features, targets: np.ndarray, split: Split, seed: int
) -> dict[str, Any]:
    """A final fit: train/val/test metrics, no history, and the test predictions (original units)."""
    estimator, seconds = _fit(spec, model_config, features, targets, split, seed)
    metrics: dict[str, float] = {"train_seconds": seconds}
    predictions: dict[str, np.ndarray] = {}
    for part, indices in (("train", split.train), ("val", split.val), ("test", split.test)):
        predictions[part], scores = _predict_and_score(estimator, features, targets, indices, part)
        metrics.update(scores)
    return {"metrics": metrics, "history": [], "test_pred": predictions["test"],
            "train_pred": predictions["train"]}
