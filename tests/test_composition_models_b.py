"""L-G-DCNN, L-G-DCNN-V1, Roost and the CECV analysis: shapes, invariances, learning, sizes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml

from harness.analysis import THRESHOLDS, count_clusters, environment_matrix, run_cecv
from harness.data import load_dataset
from harness.data.dataset import Split
from harness.featurize import CompositionBatch, CompositionTokens
from harness.models import get_model, model_groups
from harness.models.lgdcnn import LGDCNN, LGDCNNConfig
from harness.models.roost import RoostConfig
from harness.paths import REPO_ROOT
from harness.training import TrainConfig, Trainer, n_parameters, seed_everything

DATASET = "aflow__ael_bulk_modulus_vrh"
MODELS = ("lgdcnn", "lgdcnn_v1", "roost")
# Small configs where a test is about learning or invariance, not about the paper's size.
SMALL = {
    "lgdcnn": dict(d_model=64, n_blocks=1, out_hidden=(64, 32)),
    "lgdcnn_v1": dict(d_model=64, n_blocks=1, out_hidden=(64, 32)),
    "roost": dict(elem_fea_len=32, elem_hidden=64, cry_hidden=64, out_hidden=(64, 32)),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a small shared CPU, 2 threads on tiny matrices run ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rows() -> tuple[CompositionTokens, np.ndarray]:
    """The first 64 training rows of AFLOW bulk modulus (GPa), as element tokens."""
    dataset = load_dataset(DATASET)
    train = dataset.split("fixed").train[:64]
    frame = dataset.frame.iloc[train]
    return CompositionTokens.from_formulas(frame["formula"].tolist()), frame["target"].to_numpy()


def build(name: str, seed: int = 0, **params) -> torch.nn.Module:
    torch.manual_seed(seed)
    spec = get_model(name)
    return spec.build(spec.make_config(**params), {})


def batch_of(tokens: CompositionTokens, n: int) -> CompositionBatch:
    return next(tokens.batches(np.arange(n), np.zeros(n), n))


def without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]


@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes_on_real_batch_paper_defaults(rows, name: str) -> None:
    model = build(name)
    batch = batch_of(rows[0], 16)
    out = model(batch)
    assert out.shape == (16, 2) and torch.isfinite(out).all()
    features, real = model.element_features(batch)
    assert features.shape[:2] == batch.elements.shape and torch.equal(real, batch.elements != 0)
    assert (features[~real] == 0).all()
    out.sum().backward()
    assert model.embed_in.weight.grad is not None and model.embedding.weight.grad is None  # frozen table


@pytest.mark.parametrize("name", MODELS)
def test_prediction_ignores_formula_order_and_padding(rows, name: str) -> None:
    model = build(name, **SMALL[name]).eval()
    # Written in another order, equal fractions included (NaCl/ClNa: the featurizer keeps
    # the formula's order for ties, so the columns really differ).
    pairs = CompositionTokens.from_formulas(["Fe2O3", "O3Fe2", "NaCl", "ClNa", "Al3B2Ru4", "Ru4B2Al3"])
    assert not torch.equal(pairs.elements[2], pairs.elements[3])
    with torch.no_grad():
        out = model(batch_of(pairs, 6))
        assert torch.allclose(out[0::2], out[1::2], atol=1e-6)

        # Real rows: shuffle every row's columns (padding lands between elements) and pad 3 more.
        batch = batch_of(rows[0], 32)
        expected = model(batch)
        generator = torch.Generator().manual_seed(1)
        perm = torch.stack([torch.randperm(batch.elements.shape[1], generator=generator) for _ in range(32)])
        pad = torch.zeros(32, 3)
        shuffled = CompositionBatch(
            torch.cat([batch.elements.gather(1, perm), pad.long()], dim=1),
            torch.cat([batch.fractions.gather(1, perm), pad], dim=1),
            batch.y,
        )
        assert torch.allclose(model(shuffled), expected, atol=1e-5)
        # element_features follow the batch's own columns
        features, real = model.element_features(shuffled)
        reference, _ = model.element_features(batch)
        assert torch.allclose(features[:, :-3].gather(1, perm.argsort(1).unsqueeze(-1).expand_as(reference)),
                              reference, atol=1e-5)


def fit(rows, name: str, epochs: int, seed: int = 0, **train) -> list[dict]:
    """Train on 32 real rows (val = the same rows: this is about fitting, not generalising)."""
    tokens, targets = rows
    seed_everything(seed)
    model = build(name, seed, **SMALL[name])
    split = Split("overfit", np.arange(32), np.arange(32), np.arange(32, 64))
    recipe = {**get_model(name).train_defaults, "epochs": epochs, "batch_size": 32, "seed": seed,
              "swa": False, **train}
    return Trainer(model, tokens, targets, split, TrainConfig.from_dict(recipe), device="cpu").fit().history


@pytest.mark.parametrize("name", MODELS)
def test_overfits_32_real_samples(rows, name: str) -> None:
    # Each model's own recipe (loss, optimizer, LR schedule), in batches of 8: 160 steps.
    history = fit(rows, name, epochs=40, batch_size=8)
    first, last = history[0], history[-1]
    assert last["train_loss"] < first["train_loss"] - 1.0  # robust L1, scaled units
    assert last["val_mae"] < 0.4 * first["val_mae"]  # GPa, on the 32 training rows


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_history(rows, name: str) -> None:
    first, second = fit(rows, name, epochs=3, seed=5), fit(rows, name, epochs=3, seed=5)
    assert without_time(first) == without_time(second)
    assert without_time(fit(rows, name, epochs=3, seed=6)) != without_time(first)


def test_paper_default_parameter_counts() -> None:
    counts = {name: n_parameters(build(name)) for name in MODELS}
    print("paper-default sizes:", {k: f"{v:,}" for k, v in counts.items()})
    # L-G-DCNN with the reference code's single linear head is exactly the model its notebook
    # reports ("Model size: 8635911 parameters"): mat2vec->512, BiLSTM + BiGRU (2 x 256), one
    # shared attention scorer, region conv + 3 residual blocks of two 512x512x3 convs.
    assert n_parameters(LGDCNN(LGDCNNConfig(out_hidden=()))) == 8_635_911
    head = (512 * 1024 + 1024 + 1024 * 512 + 512 + 512 * 256 + 256 + 256 * 128 + 128  # fcs
            + 512 * 1024 + 1024 * 512 + 512 * 256 + 256 * 128 + 128 * 3 + 3)  # res_fcs, fc_out
    assert counts["lgdcnn"] == 8_635_911 - (512 * 3 + 3) + head == counts["lgdcnn_v1"]
    # Roost: 200->63 embedding; per message head gate 128-256-1 + message 128-256-64 + pow;
    # per pooling head 64-256-1 + 64-256-64 + pow; residual output 64-1024-512-256-128-64-2.
    mlp = lambda a, h, b: a * h + h + h * b + b  # noqa: E731
    message = 3 * 3 * (mlp(128, 256, 1) + mlp(128, 256, 64) + 1)
    pooling = 3 * (mlp(64, 256, 1) + mlp(64, 256, 64) + 1)
    dims = [64, 1024, 512, 256, 128, 64]
    output = sum(a * b + b + a * b for a, b in zip(dims, dims[1:])) + 64 * 2 + 2
    assert counts["roost"] == 200 * 63 + 63 + message + pooling + output == 2_433_233


def test_v1_fuses_by_max_pool_over_features(rows) -> None:
    batch = batch_of(rows[0], 8)
    plain, fused = build("lgdcnn", **SMALL["lgdcnn"]).eval(), build("lgdcnn_v1", **SMALL["lgdcnn_v1"]).eval()
    fused.load_state_dict(plain.state_dict())  # same weights: only the fusion differs
    with torch.no_grad():
        assert not torch.allclose(plain(batch), fused(batch))
        h, real = fused.element_features(batch)
    assert (h[~real] == 0).all() and torch.isfinite(h).all()  # pooling stays within each element


def test_registry_recipes_and_search_spaces() -> None:
    assert {"lgdcnn", "lgdcnn_v1", "roost"} <= set(model_groups()["all-composition"])
    assert get_model("lgdcnn").label == "L-G-DCNN" and get_model("lgdcnn_v1").label == "L-G-DCNN-V1"
    assert get_model("lgdcnn_v1").make_config().fusion and not get_model("lgdcnn").make_config().fusion
    lg = TrainConfig.from_dict(get_model("lgdcnn").train_defaults)
    assert (lg.optimizer, lg.loss, lg.scheduler, lg.swa, lg.epochs) == ("lamb_lookahead", "robust_l1", "cyclic", True, 300)
    ro = TrainConfig.from_dict(get_model("roost").train_defaults)
    assert (ro.optimizer, ro.lr, ro.loss, ro.batch_size) == ("adamw", 3e-4, "robust_l1", 128)
    for name, config_cls, file in (("lgdcnn", LGDCNNConfig, "lgdcnn.yaml"), ("roost", RoostConfig, "roost.yaml")):
        spec = get_model(name)
        assert spec.input_kind == "composition_tokens" and spec.search_space == file
        raw = yaml.safe_load((REPO_ROOT / "search_spaces" / file).read_text())
        defaults = {"model_params": config_cls(), "train_params": TrainConfig.from_dict(spec.train_defaults)}
        for section, default in defaults.items():
            known = {f.name: getattr(default, f.name) for f in dataclasses.fields(default)}
            for key, entry in raw[section].items():
                value = known[key]  # KeyError: not a config field
                if entry["type"] == "categorical":
                    assert value in entry["choices"], key
                else:
                    assert entry["low"] <= value <= entry["high"], key
    with pytest.raises(ValueError, match="kernel_size"):
        LGDCNNConfig(kernel_size=4)
    from harness.tuning.space import load_space  # the sweep's own reader accepts every space

    for name in MODELS:
        assert set(load_space(get_model(name))) == {"model_params", "train_params"}


def test_crabnet_element_features_feed_its_head(rows) -> None:
    from harness.models.blocks import gated_mean

    model = build("crabnet", d_model=32, n_layers=1, heads=2, dim_feedforward=64, out_hidden=(32, 16)).eval()
    batch = batch_of(rows[0], 8)
    with torch.no_grad():
        features, real = model.element_features(batch)
        assert torch.equal(gated_mean(model.output_nn(features), ~real), model(batch))


def test_cecv_counts_fall_with_threshold() -> None:
    rng = np.random.default_rng(0)
    # 60 compounds of 3 and 4 elements, 16 features each
    environments = [environment_matrix(rng.normal(size=(n, 16))) for n in [3] * 40 + [4] * 20]
    C = environments[0]
    assert C.shape == (3, 3) and np.allclose(np.diag(C), 1) and np.allclose(C, C.T)
    frame = count_clusters(environments)
    assert list(frame["threshold"]) == list(THRESHOLDS) and (frame["n_compounds"] == 60).all()
    counts = frame["n_clusters"].to_numpy()
    assert (np.diff(counts) <= 0).all() and counts[0] <= 60 and counts[-1] >= 2  # two sizes, never merged
    assert count_clusters([C, C.copy(), C.copy()])["n_clusters"].tolist() == [1] * len(THRESHOLDS)
    # binaries are degenerate after per-feature standardisation: always [[1, -1], [-1, 1]]
    assert np.allclose(environment_matrix(rng.normal(size=(2, 16))), [[1, -1], [-1, 1]])


def test_run_cecv_trains_plots_and_logs(tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    frame, png = run_cecv(
        "lgdcnn", DATASET, max_epochs=2, subsample=400, seed=0, tracking_uri=uri, out_dir=tmp_path,
        model_params=SMALL["lgdcnn"],
    )
    counts = frame["n_clusters"].to_numpy()
    assert len(frame) == 8 and (np.diff(counts) <= 0).all() and counts[0] >= 1
    assert frame["n_compounds"].iloc[0] > 10  # ternaries among ~60 test rows
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1024
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("harness").experiment_id],
                               filter_string="tags.stage = 'analysis'")
    assert run.data.tags["model"] == "lgdcnn" and run.data.tags["analysis"] == "cecv"
    history = client.get_metric_history(run.info.run_id, "cecv_n_clusters")
    assert sorted((m.step, int(m.value)) for m in history) == [(round(t * 100), n) for t, n in zip(THRESHOLDS, counts)]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {png.name, png.with_suffix(".csv").name}
