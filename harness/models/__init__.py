"""Model registry. One line per model file in ``MODEL_FILES``; see registry.py for what a spec holds.

A model file is imported when one of its models is first asked for, not when the registry is:
every Ray trial worker imports this package, and importing all models made a CrabNet trial pay
for PyTorch Geometric, torch._dynamo and scikit-learn (with the driver's modules, 13 s of imports
per worker on a 2-core Xeon; 3 s now).
"""

from __future__ import annotations

import importlib

from harness.models import registry
from harness.models.registry import ModelSpec, register

# model file (harness/models/<file>.py) -> the registry names its register() calls define
MODEL_FILES: dict[str, tuple[str, ...]] = {
    "crabnet": ("crabnet", "hotcrab"),
    "lgdcnn": ("lgdcnn", "lgdcnn_v1"),
    "roost": ("roost",),
    "irnet": ("irnet17", "irnet48", "srnet17", "plainnet17"),
    "elemnet": ("elemnet",),
    "classical": ("rf", "linear", "ridge", "elasticnet", "svr", "adaboost", "decision_tree", "gradient_boosting"),
    "crysformer": ("crysformer",),
    "alignn": ("alignn",),
    "cgcnn": ("cgcnn",),
    "schnet": ("schnet",),
    "lern": ("lern",),
    "irnet_structure": ("irnet17_structure", "irnet48_structure"),
}
_FILE_OF = {name: file for file, names in MODEL_FILES.items() for name in names}


def _import_file(file: str) -> None:
    importlib.import_module(f"harness.models.{file}")


def all_models() -> dict[str, ModelSpec]:
    """Every registered model, in ``MODEL_FILES`` order (imports every model file)."""
    for file in MODEL_FILES:
        _import_file(file)
    order = [*_FILE_OF, *(name for name in registry.MODELS if name not in _FILE_OF)]
    return {name: registry.MODELS[name] for name in order}


def model_groups() -> dict[str, list[str]]:
    """Group name (``all-composition``, ``all-structure``) -> model names, in ``MODEL_FILES``
    order whatever order the files were imported in (a resumed sweep replays the same plan)."""
    order = list(all_models())
    return {group: sorted(names, key=order.index) for group, names in registry.GROUPS.items()}


def get_model(name: str) -> ModelSpec:
    if name not in registry.MODELS:
        if name in _FILE_OF:
            _import_file(_FILE_OF[name])
        else:
            all_models()  # the error then lists every model and group
    return registry.get_model(name)


def resolve_models(text: str) -> list[str]:
    """``"crabnet,hotcrab"`` or a group name (``all-composition``) -> model names, in order."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    groups = model_groups() if any(item not in _FILE_OF for item in items) else {}
    names: list[str] = []
    for item in items:
        for name in groups.get(item, [item]):
            get_model(name)  # raises for an unknown name, listing every model and group
            if name not in names:
                names.append(name)
    if not names:
        raise ValueError("no model given (e.g. --models crabnet)")
    return names


__all__ = ["MODEL_FILES", "ModelSpec", "all_models", "get_model", "model_groups", "register", "resolve_models"]
