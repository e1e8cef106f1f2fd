"""Classical regressors (scikit-learn) on the 145 Magpie attributes.

The comparison columns of two papers:
- random forest, the "RF" column of CrabNet (Wang et al., npj Comput. Mater. 7, 77, 2021;
  RF on Magpie features, after Ward et al., npj Comput. Mater. 2, 16028, 2016; Breiman 2001);
- the traditional regressors IRNet compares against (Jha et al., KDD 2019): linear
  regression, ridge, ElasticNet, SVR with an RBF kernel, AdaBoost, decision tree, gradient
  boosting (and random forest).

Every config's defaults are scikit-learn's (the papers do not publish theirs; they searched),
except ElasticNet's ``alpha`` and ``max_iter`` (see there); every one is searchable
(``search_spaces/<name>.yaml``). ``build`` returns an unfitted estimator;
``harness/training/sklearn_fit.py`` fits it on the training rows, seeds every ``random_state``
and scores val/test in original units.

Scaling, only where the method is not invariant to it, and always fitted on training rows inside
the estimator (no leakage; the cached features stay raw):
- ridge, ElasticNet, SVR: ``StandardScaler`` on the inputs (penalties and the RBF kernel compare
  columns), and the target standardised too (``TransformedTargetRegressor``) so that ``alpha``,
  ``C`` and ``epsilon`` mean the same on every dataset, as the torch models' scaled targets.
  Before standardising, each input is clipped to its training range (``MinMaxScaler(clip=True)``;
  an affine map, so the fit on the training rows is unchanged). Why: a Magpie column that is
  nearly constant on the training rows has a tiny std, and a test composition outside that range
  becomes a huge standardised value. Seen on matbench_expt_gap fold 3: a column with training
  std 5.6e-7, Fe9Co7 at 2.7e6 std, a ridge prediction off by 49,000 eV and a fold MAE of 54.0 eV;
  with the clip the same ridge scores 0.715 eV (train MAE identical, 0.699);
- trees, ensembles of trees and ordinary least squares: raw inputs (they are invariant).
Note: SVR is O(N^2) in memory and time; on the 100k-340k row sets it is impractical.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sklearn.base import RegressorMixin
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import AdaBoostRegressor, GradientBoostingRegressor, RandomForestRegressor
from sklearn.linear_model import ElasticNet, LinearRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler
from sklearn.svm import SVR
from sklearn.tree import DecisionTreeRegressor

from harness.models.registry import MAGPIE, ModelSpec, register

CRABNET_PAPER = "Wang et al., npj Comput. Mater. 7, 77 (2021) (RF column); Breiman, Mach. Learn. 45, 5 (2001)"
IRNET_PAPER = "Jha et al., KDD 2019, doi:10.1145/3292500.3330703 (baselines)"


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _scaled(estimator: RegressorMixin) -> TransformedTargetRegressor:
    """Standardised inputs (clipped to their training range first) and target around
    ``estimator``, all fitted on the training rows."""
    inputs = make_pipeline(MinMaxScaler(clip=True), StandardScaler(), estimator)
    return TransformedTargetRegressor(regressor=inputs, transformer=StandardScaler())


@dataclass
class RandomForestConfig:
    n_estimators: int = 100
    max_depth: int | None = None
    min_samples_leaf: int = 1
    max_features: float = 1.0  # fraction of columns per split; 1.0 = all (scikit-learn's regressor default)
    n_jobs: int | None = None  # None = 1 process (a Ray trial owns its CPUs); -1 = all cores

    def __post_init__(self) -> None:
        _check(self.n_estimators >= 1 and self.min_samples_leaf >= 1, "n_estimators and min_samples_leaf must be >= 1")
        _check(self.max_depth is None or self.max_depth >= 1, f"max_depth must be None or >= 1, got {self.max_depth}")
        _check(0.0 < self.max_features <= 1.0, f"max_features must be in (0, 1], got {self.max_features}")


@dataclass
class LinearConfig:
    positive: bool = False  # non-negative coefficients

    def __post_init__(self) -> None:
        _check(isinstance(self.positive, bool), f"positive must be a bool, got {self.positive!r}")


@dataclass
class RidgeConfig:
    alpha: float = 1.0

    def __post_init__(self) -> None:
        _check(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")


@dataclass
class ElasticNetConfig:
    # Not scikit-learn's 1.0: its penalty is per sample, and on a standardised target 1.0 zeroes
    # every coefficient on steels_yield (a mean predictor) and nearly all on aflow bulk modulus.
    alpha: float = 0.01
    l1_ratio: float = 0.5
    max_iter: int = 10_000  # scikit-learn's 1000 stops short of convergence on Magpie features

    def __post_init__(self) -> None:
        _check(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")
        _check(0.0 <= self.l1_ratio <= 1.0, f"l1_ratio must be in [0, 1], got {self.l1_ratio}")
        _check(self.max_iter >= 1, f"max_iter must be >= 1, got {self.max_iter}")


@dataclass
class SVRConfig:
    C: float = 1.0
    epsilon: float = 0.1  # in standardised target units
    gamma: float | str = "scale"  # "scale" = 1 / (n_features * var(X)) = 1/145 on standardised inputs

    def __post_init__(self) -> None:
        _check(self.C > 0 and self.epsilon >= 0, f"C must be > 0 and epsilon >= 0, got {self.C}, {self.epsilon}")
        _check(self.gamma in ("scale", "auto") or float(self.gamma) > 0, f"gamma must be > 0, 'scale' or 'auto', got {self.gamma!r}")


@dataclass
class AdaBoostConfig:
    n_estimators: int = 50
    learning_rate: float = 1.0
    loss: str = "linear"
    max_depth: int = 3  # of each tree (scikit-learn's default base estimator)

    def __post_init__(self) -> None:
        _check(self.n_estimators >= 1 and self.max_depth >= 1, "n_estimators and max_depth must be >= 1")
        _check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        _check(self.loss in ("linear", "square", "exponential"), f"loss must be linear/square/exponential, got {self.loss!r}")


@dataclass
class DecisionTreeConfig:
    max_depth: int | None = None
    min_samples_split: int = 2
    min_samples_leaf: int = 1

    def __post_init__(self) -> None:
        _check(self.max_depth is None or self.max_depth >= 1, f"max_depth must be None or >= 1, got {self.max_depth}")
        _check(self.min_samples_split >= 2 and self.min_samples_leaf >= 1, "min_samples_split >= 2, min_samples_leaf >= 1")


@dataclass
class GradientBoostingConfig:
    n_estimators: int = 100
    learning_rate: float = 0.1
    max_depth: int = 3
    subsample: float = 1.0

    def __post_init__(self) -> None:
        _check(self.n_estimators >= 1 and self.max_depth >= 1, "n_estimators and max_depth must be >= 1")
        _check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        _check(0.0 < self.subsample <= 1.0, f"subsample must be in (0, 1], got {self.subsample}")


def build_rf(config: RandomForestConfig, info: dict | None = None) -> RegressorMixin:
    return RandomForestRegressor(**asdict(config))


def build_linear(config: LinearConfig, info: dict | None = None) -> RegressorMixin:
    return LinearRegression(positive=config.positive)


def build_ridge(config: RidgeConfig, info: dict | None = None) -> RegressorMixin:
    return _scaled(Ridge(alpha=config.alpha))


def build_elasticnet(config: ElasticNetConfig, info: dict | None = None) -> RegressorMixin:
    return _scaled(ElasticNet(**asdict(config)))


def build_svr(config: SVRConfig, info: dict | None = None) -> RegressorMixin:
    gamma = config.gamma if config.gamma in ("scale", "auto") else float(config.gamma)
    return _scaled(SVR(kernel="rbf", C=config.C, epsilon=config.epsilon, gamma=gamma))


def build_adaboost(config: AdaBoostConfig, info: dict | None = None) -> RegressorMixin:
    return AdaBoostRegressor(
        estimator=DecisionTreeRegressor(max_depth=config.max_depth),
        n_estimators=config.n_estimators, learning_rate=config.learning_rate, loss=config.loss,
    )


def build_decision_tree(config: DecisionTreeConfig, info: dict | None = None) -> RegressorMixin:
    return DecisionTreeRegressor(**asdict(config))


def build_gradient_boosting(config: GradientBoostingConfig, info: dict | None = None) -> RegressorMixin:
    return GradientBoostingRegressor(**asdict(config))


def _register(name: str, label: str, config_cls: type, build: Any, paper: str = IRNET_PAPER) -> None:
    register(
        ModelSpec(name=name, input_kind=MAGPIE, config_cls=config_cls, build=build, search_space=f"{name}.yaml",
                  paper=paper, framework="sklearn", display_name=label),
        groups=("all-composition",),
    )


_register("rf", "RF", RandomForestConfig, build_rf, CRABNET_PAPER)
_register("linear", "Linear", LinearConfig, build_linear)
_register("ridge", "Ridge", RidgeConfig, build_ridge)
_register("elasticnet", "ElasticNet", ElasticNetConfig, build_elasticnet)
_register("svr", "SVR (RBF)", SVRConfig, build_svr)
_register("adaboost", "AdaBoost", AdaBoostConfig, build_adaboost)
_register("decision_tree", "Decision tree", DecisionTreeConfig, build_decision_tree)
_register("gradient_boosting", "Gradient boosting", GradientBoostingConfig, build_gradient_boosting)
