"""Model registry: name -> how to build, feed and train one architecture.

Adding a model is one file under ``harness/models/`` (which calls ``register(...)``) and one
line in ``MODEL_FILES`` of ``harness/models/__init__.py`` (files are imported on first use).
Everything downstream (trainer, sweep, leaderboard) reads only what is in a :class:`ModelSpec`.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

# Input kinds a featurizer knows how to build (see harness/featurize/__init__.py).
COMPOSITION_TOKENS = "composition_tokens"  # element indices + fractions, padded (CrabNet, L-G-DCNN, Roost)
ELEMENT_FRACTIONS = "element_fractions"  # fixed-length vector of element fractions (ElemNet)
MAGPIE = "magpie"  # 145 Magpie/Ward-2016 attributes (IRNet, classical)
CRYSTAL_GRAPH = "crystal_graph"  # periodic k-NN graph + line graph with bond angles (Crysformer)
PERIODIC_GRAPH = "periodic_graph"  # the same periodic k-NN graph, no line graph (CGCNN, SchNet)
# every k-NN bond and its reverse + DGL's directed line graph, bond j->i to i->k (ALIGNN, as its reference)
CRYSTAL_GRAPH_CHAIN = "crystal_graph_chain"
CRYSTAL_GRAPH_LERN = "crystal_graph_lern"  # crystal graph + per-site 6x11 local-environment matrices (LERN)
MAGPIE_STRUCTURE = "magpie_structure"  # 145 Magpie + Ward-2017 structure attributes (IRNet-with-structure)


@dataclass(frozen=True)
class ModelSpec:
    """Everything the harness needs to know about one architecture.

    name:        registry name used on the command line (``--models crabnet``)
    input_kind:  which featurizer feeds it (one of the constants above)
    config_cls:  typed dataclass of architecture hyperparameters, paper defaults as defaults
    build:       ``build(config, feature_info) -> torch.nn.Module`` (or an sklearn estimator
                 for ``framework == "sklearn"``)
    train_defaults: the paper's training recipe, as ``TrainConfig`` overrides (dict)
    search_space: file name in ``search_spaces/``
    paper:       citation shown in ``harness models list`` and logged to MLflow
    framework:   "torch" or "sklearn"
    config_overrides: fixed config values (e.g. HotCrab = CrabNet with one-hot embedding)
    paper_patience: where the published recipe has no fixed epoch count but trains until this
                 many epochs pass without a better validation error (IRNet, ElemNet); the
                 leaderboards say so beside a budget of fewer epochs
    """

    name: str
    input_kind: str
    config_cls: type
    build: Callable[..., Any]
    train_defaults: dict[str, Any] = field(default_factory=dict)
    search_space: str = ""
    paper: str = ""
    framework: str = "torch"
    config_overrides: dict[str, Any] = field(default_factory=dict)
    display_name: str = ""
    paper_patience: int | None = None

    def make_config(self, **params: Any) -> Any:
        """The model's typed config: paper defaults, then ``params``, then fixed overrides.

        Fixed overrides win (HotCrab stays one-hot whatever a search space says). Unknown
        keys raise, so a search space cannot silently set nothing.
        """
        names = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = set(params) - names
        if unknown:
            raise ValueError(
                f"model {self.name!r}: unknown hyperparameter(s) {sorted(unknown)}; "
                f"known: {sorted(names)}"
            )
        return self.config_cls(**{**params, **self.config_overrides})

    @property
    def label(self) -> str:
        return self.display_name or self.name


MODELS: dict[str, ModelSpec] = {}
GROUPS: dict[str, list[str]] = {}


def register(spec: ModelSpec, groups: tuple[str, ...] = ()) -> ModelSpec:
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} registered twice")
    MODELS[spec.name] = spec
    for group in groups:
        GROUPS.setdefault(group, []).append(spec.name)
    return spec


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name.lower(), [*MODELS, *GROUPS], n=3)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise KeyError(
            f"unknown model {name!r}{hint}; known models: {', '.join(sorted(MODELS))}; "
            f"groups: {', '.join(sorted(GROUPS))}"
        ) from None
