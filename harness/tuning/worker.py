"""The functions Ray runs in its worker processes: a Tune trial and a final fit.

Kept apart from the driver's modules (sweep.py, search.py, final.py) on purpose: a worker imports the module of the function it runs, and
every trial and final fit starts a fresh worker. This module pulls in only what training needs
(the model's own file, the trainer, ray.tune), not the driver's MLflow, Optuna and rich
imports, which would add seconds to every trial's start.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from harness.provenance import hardware
from harness.tuning.trial import TrialContext, final_fit, run_trial


@dataclass(frozen=True)
class FeaturesView:
    """Features already in the object store (``ref``), read in the worker as input kind ``kind``."""

    ref: Any  # ray.ObjectRef
    kind: str


def resolve_features(context: TrialContext) -> TrialContext:
    """Inside the worker: the context with its features fetched from the object store."""
    import ray

    features = context.features
    if isinstance(features, FeaturesView):
        features = ray.get(features.ref).as_kind(features.kind)
    elif isinstance(features, ray.ObjectRef):
        features = ray.get(features)
    return replace(context, features=features)


def trial_entry(config: dict[str, Any], context: TrialContext) -> None:
    """A Tune trial: resolve the features inside the worker, then train."""
    run_trial(config, resolve_features(context))


def final_task(context: TrialContext, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """One final fit of the chosen configuration (a Ray task), with the hardware it ran on."""
    out = final_fit(resolve_features(context), params, seed)
    out["hardware"] = hardware()
    return out
