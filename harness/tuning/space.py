"""Search spaces: ``search_spaces/<family>.yaml`` -> Ray Tune domains.

A space file names the model(s) it is for and two sections, ``model_params`` (fields of the
model's typed config) and ``train_params`` (fields of :class:`TrainConfig`). Each entry is
``{type: categorical, choices: [...]}``, ``{type: uniform|loguniform, low, high}`` or
``{type: int, low, high[, step]}``; a plain value fixes that field. Keys are checked against
the config classes here, so a typo fails before any trial starts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml
from ray import tune

from harness.models import ModelSpec
from harness.paths import REPO_ROOT
from harness.training.config import TrainConfig

DEFAULT_SPACE_DIR = REPO_ROOT / "search_spaces"


class SearchSpaceError(ValueError):
    pass


def _domain(path: Path, key: str, entry: Any) -> Any:
    if not isinstance(entry, dict):
        return entry  # a fixed value
    kind = entry.get("type")
    try:
        if kind == "categorical":
            return tune.choice(list(entry["choices"]))
        if kind == "uniform":
            return tune.uniform(float(entry["low"]), float(entry["high"]))
        if kind == "loguniform":
            return tune.loguniform(float(entry["low"]), float(entry["high"]))
        if kind == "int":
            step = int(entry.get("step", 1))
            # Ray's qrandint includes the upper bound, like Optuna's IntDistribution.
            return tune.qrandint(int(entry["low"]), int(entry["high"]), step)
    except KeyError as missing:
        raise SearchSpaceError(f"{path}: {key}: type {kind!r} needs {missing}") from None
    raise SearchSpaceError(
        f"{path}: {key}: unknown type {kind!r}; use categorical, uniform, loguniform or int"
    )


def load_space(spec: ModelSpec, space_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """``{"model_params": {...}, "train_params": {...}}`` of Ray Tune domains for ``spec``."""
    path = Path(space_dir or DEFAULT_SPACE_DIR) / spec.search_space
    if not path.is_file():
        raise SearchSpaceError(f"no search space for model {spec.name!r}: {path} does not exist")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    unknown_sections = set(raw) - {"model", "model_params", "train_params"}
    if unknown_sections:
        raise SearchSpaceError(f"{path}: unknown section(s) {sorted(unknown_sections)}")
    checks = {
        "model_params": {f.name for f in dataclasses.fields(spec.config_cls)},
        "train_params": {f.name for f in dataclasses.fields(TrainConfig)},
    }
    space: dict[str, dict[str, Any]] = {}
    for section, known in checks.items():
        entries = raw.get(section) or {}
        bad = set(entries) - known
        if bad:
            raise SearchSpaceError(
                f"{path}: {section} has unknown field(s) {sorted(bad)}; known: {sorted(known)}"
            )
        space[section] = {k: _domain(path, f"{section}.{k}", v) for k, v in entries.items()}
    return space
