"""CrabNet / HotCrab: shapes, masking, element tables, loss, registry and search space."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from harness.data.dataset import DataError
from harness.featurize import CompositionBatch, CompositionTokens, element_table, featurize
from harness.models import get_model, model_groups
from harness.models.crabnet import CrabNet, CrabNetConfig, FractionalEncoder
from harness.paths import REPO_ROOT, data_dir
from harness.training import TrainConfig, compute_loss, n_parameters, robust_l1

SMALL = dict(d_model=32, n_layers=2, heads=2, dim_feedforward=64, out_hidden=(32, 16))


@pytest.fixture(scope="module")
def formulas() -> list[str]:
    root = data_dir()
    path = None if root is None else root / "matbench_v0.1" / "matbench_expt_gap.csv.gz"
    if path is None or not path.is_file():
        pytest.skip("matbench_expt_gap.csv.gz not available")
    return pd.read_csv(path)["composition"].iloc[:64].tolist()


def small_model(seed: int = 0, **overrides) -> CrabNet:
    torch.manual_seed(seed)
    return get_model("crabnet").build(get_model("crabnet").make_config(**{**SMALL, **overrides}), {})


def first_batch(tokens: CompositionTokens, n: int) -> CompositionBatch:
    return next(tokens.batches(np.arange(n), np.zeros(n), n))


def test_composition_tokens_parse_sort_and_pad() -> None:
    tokens = CompositionTokens.from_formulas(["Fe2O3", "NaCl", "Zr1"])
    assert tokens.info == {"max_elements": 2}
    assert tokens.elements.tolist() == [[8, 26], [11, 17], [40, 0]]  # largest fraction first
    assert torch.allclose(tokens.fractions, torch.tensor([[0.6, 0.4], [0.5, 0.5], [1.0, 0.0]]))
    with pytest.raises(DataError, match="bad-row"):
        CompositionTokens.from_formulas(["NaCl", "Xx2Qq"], ids=["ok", "bad-row"])


def test_element_tables_indexed_by_atomic_number() -> None:
    mat2vec, onehot = element_table("mat2vec"), element_table("onehot")
    assert mat2vec.shape == (119, 200) and onehot.shape == (119, 118)
    assert mat2vec[0].abs().sum() == 0 and onehot[0].abs().sum() == 0  # padding row
    assert torch.equal(onehot[1:], torch.eye(118))  # row Z is the one-hot of Z


def test_forward_shapes_on_real_batch(formulas: list[str]) -> None:
    tokens = CompositionTokens.from_formulas(formulas)
    model = small_model()
    out = model(first_batch(tokens, 16))
    assert out.shape == (16, 2) and torch.isfinite(out).all()
    out.sum().backward()  # gradients reach the trainable parts, not the frozen table
    assert model.embed_in.weight.grad is not None and model.embedding.weight.grad is None


def test_prediction_ignores_element_order_and_padding(formulas: list[str]) -> None:
    tokens = CompositionTokens.from_formulas(formulas)
    batch = first_batch(tokens, 32)
    model = small_model().eval()
    with torch.no_grad():
        expected = model(batch)
        # Shuffle every row's columns (padding may land between elements) and add padding.
        generator = torch.Generator().manual_seed(1)
        width = batch.elements.shape[1]
        perm = torch.stack([torch.randperm(width, generator=generator) for _ in range(32)])
        pad = torch.zeros(32, 3)
        shuffled = CompositionBatch(
            torch.cat([batch.elements.gather(1, perm), pad.long()], dim=1),
            torch.cat([batch.fractions.gather(1, perm), pad], dim=1),
            batch.y,
        )
        assert torch.allclose(model(shuffled), expected, atol=1e-5)


def test_hotcrab_uses_onehot_table() -> None:
    spec = get_model("hotcrab")
    config = spec.make_config(**SMALL)
    assert config.embedding == "onehot" and spec.label == "HotCrab"
    model = spec.build(config, {})
    assert model.embedding.weight.shape == (119, 118)
    assert model.embed_in.in_features == 118
    crabnet = get_model("crabnet")
    assert crabnet.build(crabnet.make_config(**SMALL), {}).embedding.weight.shape == (119, 200)


def test_default_parameter_count() -> None:
    model = CrabNet(CrabNetConfig())
    count = n_parameters(model)
    print(f"CrabNet default size: {count:,} trainable parameters")
    # CrabNet's own code prints 11,987,206 for d_model 512, 3 layers, FF 2048, out 1024-512-256-128.
    assert count == 11_987_206
    assert not model.embedding.weight.requires_grad


def test_reset_parameters_reinitialises() -> None:
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.emb_scaler.fill_(3.0)
    model.reset_parameters()
    assert model.emb_scaler.item() == 1.0
    assert not torch.equal(model.embed_in.weight, before["embed_in.weight"])
    assert torch.equal(model.embedding.weight, before["embedding.weight"])  # frozen table untouched
    layers = model.transformer.layers
    assert torch.equal(layers[0].linear1.weight, layers[1].linear1.weight)  # clones, as nn.TransformerEncoder


def test_fractional_encoding_matches_crabnet_table() -> None:
    encoder = FractionalEncoder(8, resolution=5000)
    fraction = torch.tensor([[0.5, 0.0]])
    row = encoder(fraction)[0]
    j = torch.arange(8.0)
    angle = 2499 / 50 ** (2 * j / 8)  # index round(0.5 * 5000) - 1
    assert torch.allclose(row[0], torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle)))
    log_row = FractionalEncoder(8, resolution=5000, log=True)(torch.tensor([[0.25]]))[0, 0]
    k = round(0.0025 * math.log2(0.25) ** 2 * 5000) - 1  # = 49
    assert torch.allclose(log_row, encoder.table[k])


def test_robust_l1_hand_example() -> None:
    mean, log_std, target = torch.tensor([1.0, 2.0]), torch.tensor([0.0, math.log(2.0)]), torch.tensor([2.0, 2.0])
    # row 1: sqrt(2)*1*e^0 + 0 = 1.41421; row 2: 0 + ln 2 = 0.69315; mean 1.05368
    assert robust_l1(mean, log_std, target).item() == pytest.approx((math.sqrt(2) + math.log(2)) / 2)
    out = torch.stack([mean, log_std], dim=1)
    assert compute_loss("robust_l1", out, target).item() == pytest.approx(1.0536814)
    assert compute_loss("mae", out, target).item() == pytest.approx(0.5)  # column 0 is the prediction
    with pytest.raises(ValueError, match="robust_l1"):
        compute_loss("robust_l1", mean, target)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="divisible"):
        CrabNetConfig(d_model=510, heads=4)
    with pytest.raises(ValueError, match="embedding"):
        CrabNetConfig(embedding="magpie2vec")
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        get_model("crabnet").make_config(n_heads=4)
    assert CrabNetConfig(out_hidden=[64, 32]).out_hidden == (64, 32)  # lists from YAML become tuples


def test_registry_and_recipe() -> None:
    assert model_groups()["all-composition"][:2] == ["crabnet", "hotcrab"]
    for name in ("crabnet", "hotcrab"):
        spec = get_model(name)
        assert spec.input_kind == "composition_tokens" and spec.search_space == "crabnet.yaml"
        recipe = TrainConfig.from_dict(spec.train_defaults)
        assert (recipe.optimizer, recipe.loss, recipe.scheduler) == ("lamb_lookahead", "robust_l1", "cyclic")
        assert recipe.swa and recipe.epochs == 300
        assert (recipe.base_lr, recipe.max_lr, recipe.batch_size) == (1e-4, 6e-3, None)


def test_search_space_is_valid_and_contains_paper_defaults() -> None:
    raw = yaml.safe_load((REPO_ROOT / "search_spaces" / "crabnet.yaml").read_text())
    assert set(raw["model"]) == {"crabnet", "hotcrab"}
    defaults = {
        "model_params": CrabNetConfig(),
        "train_params": TrainConfig.from_dict(get_model("crabnet").train_defaults),
    }
    for section, default in defaults.items():
        known = {f.name: getattr(default, f.name) for f in dataclasses.fields(default)}
        for key, entry in raw[section].items():
            assert key in known, f"{section}.{key} is not a config field"
            value = known[key]
            if entry["type"] == "categorical":
                assert value in entry["choices"], key
            else:
                assert entry["low"] <= value <= entry["high"], key
    # every sampled (d_model, heads) pair is a valid config
    for d_model in raw["model_params"]["d_model"]["choices"]:
        for heads in raw["model_params"]["heads"]["choices"]:
            CrabNetConfig(d_model=d_model, heads=heads)


def test_featurize_registry() -> None:
    from harness.data.dataset import Dataset, Split

    frame = pd.DataFrame({"id": ["a", "b"], "formula": ["NaCl", "SiO2"], "target": [1.0, 2.0]})
    split = Split("fixed", np.array([0]), np.array([1]), np.array([1]))
    features = featurize("composition_tokens", Dataset("d", "s", "t", "", frame, [split], "0"))
    assert len(features) == 2 and features.info["max_elements"] == 2
    with pytest.raises(KeyError, match="no featurizer"):
        featurize("nonsense", Dataset("d", "s", "t", "", frame, [split], "0"))
