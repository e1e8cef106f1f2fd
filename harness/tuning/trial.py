"""What runs inside a Tune trial, and the final fits of the winning configuration.

The model and trainer know nothing of Ray: this module adapts the trainer's per-epoch
callback to ``tune.report`` (with checkpoints at ASHA rungs and every N epochs), and resumes
from ``tune.get_checkpoint()`` when Ray restarts a trial.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.data.dataset import Split
from harness.models import get_model
from harness.training.config import TrainConfig

# What the trainable's results tell the searcher (optuna_search.py) and the progress lines.
FINISHED_KEY = "trial_finished"  # on the epoch a trial ends by itself (max epochs, own early stop)
ERROR_KEY = "trial_error"  # set when a trial fails for a reason of its own

TRIAL_SECONDS_KEY = "trial_seconds"  # reported every epoch: see TrialClock

# Failures that belong to the configuration, not the machine: retrying them elsewhere gives
# the same result, so the trial ends as failed (with the reason) and the sweep goes on.
# Anything else (a lost node, a killed worker) is raised to Ray, which retries the trial
# from its last checkpoint (FailureConfig).
OWN_FAILURES = (FloatingPointError, MemoryError)


def _own_failure(exc: BaseException) -> bool:
    if isinstance(exc, OWN_FAILURES):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except AttributeError:  # very old torch
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (tests calling run_trial directly)
        return "local"


@dataclass
class TrialContext:
    """Everything a trial needs that is the same for every trial of one search.

    Shipped once through Ray's object store (``tune.with_parameters``), so the dataset is
    featurized once in the driver, never per trial.
    """

    model: str
    dataset: str
    features: Any
    targets: np.ndarray
    split: Split
    max_epochs: int
    seed: int
    num_threads: int = 1
    precision: str = "fp32"
    checkpoint_every: int = 25
    rungs: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        """``model/dataset/split``: reported with every result (``trained_on``) and kept as a
        trial run's tag, so a run shows what its trial actually trained on."""
        return f"{self.model}/{self.dataset}/{self.split.name}"


def build(context: TrialContext, params: dict[str, Any], seed: int):
    """(model, train_config) for one set of sampled hyperparameters."""
    spec = get_model(context.model)
    model_config = spec.make_config(**params.get("model_params", {}))
    train_config = TrainConfig.from_dict(
        {
            **spec.train_defaults,
            **params.get("train_params", {}),
            "epochs": context.max_epochs,
            "seed": seed,
            "num_threads": context.num_threads,
            "precision": context.precision,
        }
    )
    return spec, model_config, train_config


class TrialClock:
    """Seconds a trial has spent running, across restores.

    This process's time since the trial function started, plus what the trial's checkpoint
    carried from earlier processes. The leaderboards' search cost sums it: a trial run's
    start-to-end span in MLflow also counts any time the sweep was stopped (a trial cut off by
    Ctrl+C at night and resumed the next morning). Work done after the last checkpoint of an
    interrupted process is lost and trained again; only the repeat is counted.
    """

    FILE = "trial_seconds.json"

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.carried = 0.0

    def seconds(self) -> float:
        return self.carried + (time.perf_counter() - self.started)

    def save(self, directory: Path, seconds: float) -> None:
        (directory / self.FILE).write_text(json.dumps({"seconds": seconds}))

    def restore(self, directory: Path) -> None:
        path = directory / self.FILE
        if path.is_file():  # checkpoints written before this file existed carry nothing
            self.carried = float(json.loads(path.read_text())["seconds"])


def _should_checkpoint(epoch: int, last: bool, context: TrialContext) -> bool:
    return last or epoch in context.rungs or epoch % context.checkpoint_every == 0


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Tune function trainable: train one configuration, reporting every epoch."""
    from ray import tune

    from harness.training import Trainer, n_parameters

    clock = TrialClock()
    spec, model_config, train_config = build(context, config, context.seed)
    if spec.framework == "sklearn":
        from harness.training.sklearn_fit import fit_sklearn

        metrics = fit_sklearn(spec, model_config, context.features, context.targets, context.split,
                              seed=context.seed)
        tune.report({**metrics, "epoch": 1, FINISHED_KEY: True, "trained_on": context.label,
                     TRIAL_SECONDS_KEY: clock.seconds()})
        return

    import torch

    torch.manual_seed(train_config.seed)
    model = spec.build(model_config, context.features.info)
    trainer = Trainer(model, context.features, context.targets, context.split, train_config)
    n_params = n_parameters(model)

    node = _node_id()

    def on_epoch(metrics: dict[str, float], trainer) -> None:
        epoch = int(metrics["epoch"])
        last = epoch >= train_config.epochs or bool(getattr(trainer, "will_stop", False))
        seconds = clock.seconds()
        report = {**metrics, "n_params": n_params, "best_val_mae": trainer.best_val_mae, "node_id": node,
                  "trained_on": context.label, TRIAL_SECONDS_KEY: seconds}
        if last:
            report[FINISHED_KEY] = True
        if _should_checkpoint(epoch, last, context):
            with tempfile.TemporaryDirectory() as d:
                trainer.save_checkpoint(Path(d))
                clock.save(Path(d), seconds)
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            tune.report(report)

    checkpoint = tune.get_checkpoint()
    try:
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                clock.restore(Path(d))
                trainer.fit(on_epoch, resume_from=Path(d))
        else:
            trainer.fit(on_epoch)
    except Exception as exc:
        if not _own_failure(exc):
            raise
        tune.report({
            "epoch": int(getattr(trainer, "epoch", 0)) + 1,
            "best_val_mae": float("nan"),
            "node_id": node,
            TRIAL_SECONDS_KEY: clock.seconds(),
            ERROR_KEY: f"{type(exc).__name__}: {exc}"[:2000],
        })


def final_fit(context: TrialContext, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """Retrain ``params`` from scratch with ``seed`` and score train/val/test.

    Returns metrics, the per-epoch history and the test predictions; the driver logs them.
    """
    spec, model_config, train_config = build(context, params, seed)
    split = context.split
    start = time.time()
    if spec.framework == "sklearn":
        from harness.training.sklearn_fit import final_sklearn

        out = final_sklearn(spec, model_config, context.features, context.targets, split, seed)
        out["seconds"] = time.time() - start
        return out

    import torch

    from harness.training import Trainer, n_parameters

    torch.manual_seed(seed)
    model = spec.build(model_config, context.features.info)
    trainer = Trainer(model, context.features, context.targets, split, train_config)
    # timed from here: building the optimizer imports torch._dynamo and pytorch_optimizer (~4 s,
    # once per worker process), a start-up cost that is not the configuration's training cost
    start = time.time()
    result = trainer.fit()
    metrics: dict[str, float] = {"n_params": n_parameters(model), "epochs_run": result.epochs_run}
    for part, idx in (("train", split.train), ("val", split.val), ("test", split.test)):
        for name, value in trainer.evaluate(idx).items():
            metrics[f"{part}_{name}"] = value
    return {
        "metrics": metrics,
        "history": result.history,
        "test_pred": trainer.predict(split.test),
        "train_pred": trainer.predict(split.train),
        "seconds": time.time() - start,
    }
