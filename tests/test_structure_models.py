"""Structure models (Crysformer, ALIGNN, CGCNN, SchNet, LERN, IRNet-with-structure).

On real crystals (matbench_phonons): output shapes of the paper-default architectures,
parameter counts, invariance of the prediction to rotation, translation and choice of unit cell,
batching, learning (each model overfits 32 structures with the shared trainer) and determinism.
"""

from __future__ import annotations

import dataclasses
import gzip
import json

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

from harness.data.dataset import Split
from harness.featurize.graph_types import CrystalGraph, GraphBatch
from harness.featurize.graphs import GRAPH_KINDS, CrystalGraphs, GraphConfig, build_arrays, build_crystal_graph
from harness.models import get_model, model_groups
from harness.paths import data_dir
from harness.training import TrainConfig, Trainer, n_parameters, seed_everything

GRAPH_MODELS = ["crysformer", "alignn", "cgcnn", "schnet", "lern"]
# Small widths for the learning / determinism tests (the shape, count and invariance tests use
# the paper defaults).
SMALL = {
    "crysformer": dict(hidden=32, heads=2, n_blocks=2, edge_bins=32, angle_bins=16),
    "alignn": dict(alignn_layers=1, gcn_layers=1, hidden_features=32, embedding_features=16,
                   edge_input_features=32, triplet_input_features=16),
    "cgcnn": dict(atom_fea_len=32, h_fea_len=32),
    "schnet": dict(hidden_channels=32, num_filters=32, num_interactions=2),
    "lern": dict(stem_width=8, stages=((8, 1, 1), (16, 1, 2), (32, 1, 2)), head_hidden=(32,)),
}
# Parameter counts of the paper-default configurations: (low, high), exact where a reference exists.
PARAM_RANGES = {
    "alignn": (4_026_753, 4_026_753),  # the alignn package's default ALIGNNConfig counts 4,026,753
    "cgcnn": (80_833, 80_833),  # reference CGCNN (txie-93/cgcnn, defaults): 80,833
    "schnet": (60_000, 80_000),  # PyG SchNet(64, 64, 3, 50) = 68,033 (100-row embedding; ours 119 rows)
    "crysformer": (1_000_000, 5_000_000),
    "lern": (4_000_000, 7_000_000),  # ResNet-34 at half width: ~21.3M / 4
}


# ---------------------------------------------------------------- real structures -> graphs


def _load_structures(n: int, max_sites: int = 8) -> tuple[list[Structure], np.ndarray]:
    root = data_dir()
    path = None if root is None else root / "structures" / "matbench_phonons.json.gz"
    if path is None or not path.is_file():
        pytest.skip("matbench_phonons.json.gz not available")
    with gzip.open(path, "rt") as f:
        raw = json.load(f)
    structures, targets = [], []
    for entry, target in raw["data"]:
        if len(entry["sites"]) <= max_sites:
            structures.append(Structure.from_dict(entry))
            targets.append(target)
        if len(structures) == n:
            break
    return structures, np.asarray(targets, dtype=np.float64)


def _kind_config(name: str) -> GraphConfig:
    """The graphs model ``name`` reads in a sweep (its input kind's), with site environments: the
    fields every directed-graph model reads (LERN's included), so one set serves them all."""
    config = GRAPH_KINDS[get_model(name).input_kind]
    return config if config.symmetric else dataclasses.replace(config, site_env=True)


def _graph(structure: Structure, name: str, dtype: torch.dtype = torch.float32) -> CrystalGraph:
    """The featurizer's crystal graph of ``structure`` as model ``name`` reads it (k = 12, ties kept)."""
    c = _kind_config(name)
    graph = build_crystal_graph(structure, k=c.k, site_env=c.site_env, symmetric=c.symmetric, line=c.line_graph,
                                line_pairs=c.line_pairs)
    for key in ("edge_vec", "edge_length", "angle", "site_env"):
        if getattr(graph, key, None) is not None:
            setattr(graph, key, getattr(graph, key).to(dtype))
    return graph


def _features(real, name: str) -> CrystalGraphs:
    """The featurizer's ``Features`` (the trainer's batch protocol) of the ``real`` crystals as
    model ``name`` reads them: one store of directed graphs, one of symmetric graphs (ALIGNN's)."""
    config = _kind_config(name)
    return CrystalGraphs(real[2][config.symmetric], config)


def _batch(graphs: list[CrystalGraph]) -> GraphBatch:
    return GraphBatch(Batch.from_data_list(graphs), torch.zeros(len(graphs)))


def _build(name: str, small: bool = False, seed: int = 0):
    spec = get_model(name)
    seed_everything(seed)
    return spec.build(spec.make_config(**(SMALL[name] if small else {})), {})


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these graphs are small, and on a busy 2-core machine two OpenMP
    threads spin against other processes and run 5-50x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def real() -> tuple[list[Structure], np.ndarray, CrystalGraphs]:
    """40 real crystals (<= 8 sites) from matbench_phonons, their targets (cm^-1) and graph
    tensors {symmetric: tensors} (read them with ``_features(real, name)``)."""
    structures, targets = _load_structures(40)
    ids = [str(i) for i in range(len(structures))]
    stores = {symmetric: build_arrays(structures, ids, _kind_config(name))
              for symmetric, name in ((False, "cgcnn"), (True, "alignn"))}
    return structures, targets, stores


# ------------------------------------------------------------------------------- tests


def test_registry_group_and_spaces() -> None:
    from harness.models.registry import (
        CRYSTAL_GRAPH, CRYSTAL_GRAPH_CHAIN, CRYSTAL_GRAPH_LERN, MAGPIE_STRUCTURE, PERIODIC_GRAPH,
    )
    from harness.tuning.space import load_space

    assert set(model_groups()["all-structure"]) >= {
        "crysformer", "alignn", "cgcnn", "schnet", "lern", "irnet17_structure", "irnet48_structure"
    }
    kinds = {name: get_model(name).input_kind for name in model_groups()["all-structure"]}
    assert kinds["lern"] == CRYSTAL_GRAPH_LERN
    assert kinds["crysformer"] == CRYSTAL_GRAPH  # they read the line graph's angles; ALIGNN the reference's
    assert kinds["alignn"] == CRYSTAL_GRAPH_CHAIN  # (symmetric edges, bond j->i feeds bond i->k)
    assert kinds["cgcnn"] == kinds["schnet"] == PERIODIC_GRAPH
    assert kinds["irnet17_structure"] == kinds["irnet48_structure"] == MAGPIE_STRUCTURE
    for name in model_groups()["all-structure"]:
        spec = get_model(name)
        space = load_space(spec)  # every key is a real config / TrainConfig field
        assert space["train_params"], name
        TrainConfig.from_dict(spec.train_defaults)
        assert spec.paper


def test_configs_are_validated() -> None:
    for name, bad in [
        ("crysformer", dict(hidden=30, heads=4)),
        ("alignn", dict(alignn_layers=0, gcn_layers=0)),
        ("cgcnn", dict(step=0.0)),
        ("schnet", dict(readout="max")),
        ("lern", dict(stages=((32, 0, 1),))),
    ]:
        with pytest.raises(ValueError):
            get_model(name).make_config(**bad)


def test_element_table_names_an_atomic_number_it_lacks() -> None:
    from harness.models.blocks_graph import CGCNN_MAX_Z, ElementTable, cgcnn_atom_features

    table = ElementTable(cgcnn_atom_features())
    assert torch.equal(table(torch.tensor([1, 8, CGCNN_MAX_Z])), cgcnn_atom_features()[[1, 8, CGCNN_MAX_Z]])
    with pytest.raises(ValueError, match=f"atomic number 101 is outside the element table \\(Z <= {CGCNN_MAX_Z}\\)"):
        table(torch.tensor([1, 101]))


def test_cgcnn_conv_equals_the_reference_conv_layer() -> None:
    """GateNormCGConv + the outer softplus == the reference ``ConvLayer`` (txie-93/cgcnn,
    ``cgcnn/model.py``), written out here in its dense N x M form with the same weights:
    ``fc_full`` is PyG's two linear maps stacked, ``bn1`` their two BatchNorms side by side."""
    import torch.nn.functional as F

    from harness.models.cgcnn import GateNormCGConv

    torch.manual_seed(0)
    n_atoms, m, width, n_gauss = 10, 12, 16, 41
    conv = GateNormCGConv(width, n_gauss)
    for bn in (conv.bn_gate, conv.bn_core, conv.bn):  # non-trivial affine parameters
        torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
        torch.nn.init.uniform_(bn.bias, -0.5, 0.5)
    x = torch.randn(n_atoms, width)
    nbr_idx = torch.randint(0, n_atoms, (n_atoms, m))  # reference layout: M neighbours per atom
    nbr_fea = torch.rand(n_atoms, m, n_gauss)
    # PyG: edge j -> i for every (i, neighbour j)
    edge_index = torch.stack([nbr_idx.reshape(-1), torch.arange(n_atoms).repeat_interleave(m)])
    ours = F.softplus(conv(x, edge_index, nbr_fea.reshape(-1, n_gauss)))

    fc_w = torch.cat([conv.lin_f.weight, conv.lin_s.weight])
    fc_b = torch.cat([conv.lin_f.bias, conv.lin_s.bias])
    total = torch.cat([x.unsqueeze(1).expand(n_atoms, m, width), x[nbr_idx], nbr_fea], dim=2)
    gated = F.linear(total, fc_w, fc_b).view(-1, 2 * width)
    gated = F.batch_norm(gated, None, None, torch.cat([conv.bn_gate.weight, conv.bn_core.weight]),
                         torch.cat([conv.bn_gate.bias, conv.bn_core.bias]), training=True, eps=1e-5)
    nbr_filter, nbr_core = gated.view(n_atoms, m, 2 * width).chunk(2, dim=2)
    summed = torch.sum(torch.sigmoid(nbr_filter) * F.softplus(nbr_core), dim=1)
    summed = F.batch_norm(summed, None, None, conv.bn.weight, conv.bn.bias, training=True, eps=1e-5)
    reference = F.softplus(x + summed)
    assert torch.allclose(ours, reference, atol=1e-5), (ours - reference).abs().max()


def test_parameter_counts_of_paper_defaults() -> None:
    counts = {}
    for name, (low, high) in PARAM_RANGES.items():
        counts[name] = n_parameters(_build(name))
        assert low <= counts[name] <= high, (name, counts[name])
    irnet = get_model("irnet17_structure")
    counts["irnet17_structure"] = n_parameters(irnet.build(irnet.make_config(), {"n_features": 273}))
    irnet48 = get_model("irnet48_structure")
    counts["irnet48_structure"] = n_parameters(irnet48.build(irnet48.make_config(), {"n_features": 273}))
    assert counts["irnet17_structure"] < counts["irnet48_structure"]
    cgcnn = get_model("cgcnn")  # PyG's plain CGConv has no BatchNorm on the gate/core: 2 x 128 fewer per layer
    assert n_parameters(cgcnn.build(cgcnn.make_config(gate_batch_norm=False), {})) == 80_833 - 3 * 256
    print("\nparameters (paper defaults):", ", ".join(f"{k} {v:,}" for k, v in counts.items()))


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_forward_shape_paper_default(real, name: str) -> None:
    features = _features(real, name)
    model = _build(name)
    batch = _batch([features.graph(i) for i in range(8)])
    model.train()
    out = model(batch)
    assert out.shape == (8,) and torch.isfinite(out).all()
    out.sum().backward()
    # ALIGNN keeps the reference layout: the edge BatchNorms of the last line-graph update and
    # of the last GCN layer feed nothing (they count in the reference's 4,026,753 too)
    unused = set()
    if name == "alignn":
        last = ("alignn_layers.3.edge_update", "gcn_layers.3")
        unused = {f"{m}.bn_edges.{p}" for m in last for p in ("weight", "bias")}
    for pname, p in model.named_parameters():
        assert (p.grad is None) == (pname in unused), pname
        assert p.grad is None or torch.isfinite(p.grad).all(), pname
    model.eval()
    with torch.no_grad():
        single = model(_batch([features.graph(0)]))
    assert single.shape == (1,)


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_no_subnormal_floats_enter_linear_layers(real, name: str) -> None:
    """A Gaussian basis far from its centres reaches float32's subnormal range, and every x86
    multiply-add on a subnormal takes a slow path (CGCNN and SchNet trained 3.5-5x slower): the
    basis tails are cut to 0, so no Linear layer sees a subnormal input on real crystals."""
    features = _features(real, name)
    model = _build(name)
    tiny = torch.finfo(torch.float32).tiny
    seen: dict[str, int] = {}

    def count_subnormals(module_name: str):
        def hook(_module, inputs) -> None:
            x = inputs[0]
            seen[module_name] = seen.get(module_name, 0) + int(((x != 0) & (x.abs() < tiny)).sum())
        return hook

    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(count_subnormals(module_name))
    model(_batch([features.graph(i) for i in range(16)]))
    assert seen, "no Linear layer ran"
    assert {k: v for k, v in seen.items() if v} == {}


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_invariance_rotation_translation_supercell(real, name: str) -> None:
    """Same prediction (eval mode, float64) for a rotated, translated, and 2x1x1 supercell crystal."""
    structures, _, _ = real
    picks = [s for s in structures if len(s) >= 2][:3]
    model = _build(name).double()
    # a few training-mode passes give BatchNorm non-trivial running statistics
    model.train()
    with torch.no_grad():
        model(_batch([_graph(s, name, dtype=torch.float64) for s in picks]))
    model.eval()

    def predict(variants: list[Structure]) -> torch.Tensor:
        with torch.no_grad():
            return model(_batch([_graph(s, name, dtype=torch.float64) for s in variants]))

    reference = predict(picks)
    rot = _rotation(1)
    rotated = [Structure(Lattice(s.lattice.matrix @ rot.T), s.species, s.frac_coords) for s in picks]
    translated = [Structure(s.lattice, s.species, (s.frac_coords + [0.137, -0.31, 0.52]) % 1.0) for s in picks]
    supercells = [s.make_supercell([2, 1, 1], in_place=False) for s in picks]
    for label, variants in (("rotation", rotated), ("translation", translated), ("supercell 2x1x1", supercells)):
        got = predict(variants)
        # the featurizer stores lengths/angles in float32: agreement to ~1e-6, not 1e-15
        assert torch.allclose(got, reference, rtol=1e-5, atol=1e-5), (name, label, got, reference)


@pytest.mark.parametrize("name", ["crysformer", "alignn"])
def test_batching_matches_single_graphs(real, name: str) -> None:
    """Line graphs batch correctly: each structure alone gives what it gets inside a batch."""
    features = _features(real, name)
    model = _build(name, small=True).eval()
    graphs = [features.graph(i) for i in range(5)]
    with torch.no_grad():
        together = model(_batch(graphs))
        alone = torch.cat([model(_batch([g])) for g in graphs])
    assert torch.allclose(together, alone, atol=1e-5)


def _trainer(features: CrystalGraphs, targets: np.ndarray, name: str, epochs: int, seed: int = 0,
             val_on_train: bool = False, **train) -> Trainer:
    spec = get_model(name)
    recipe = {**spec.train_defaults, "epochs": epochs, "batch_size": 8, "seed": seed, "scheduler": "none", **train}
    rows = np.arange(len(features))
    val = rows[:32] if val_on_train else rows[32:40]  # overfitting: the "best epoch" is the best fit
    split = Split("random", rows[:32], val, rows[32:40])
    model = _build(name, small=True, seed=seed)
    return Trainer(model, features, targets, split, TrainConfig.from_dict(recipe), device="cpu")


OVERFIT = {  # epochs and optimizer overrides for the small models
    "crysformer": dict(epochs=25, lr=3e-3),
    "alignn": dict(epochs=25, lr=3e-3),
    "cgcnn": dict(epochs=40, optimizer="adam", lr=5e-3),  # CGCNN's code offers Adam beside SGD
    "schnet": dict(epochs=40, lr=3e-3),
    "lern": dict(epochs=25, lr=3e-3),
}


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_overfits_32_real_structures(real, name: str) -> None:
    targets, features = real[1], _features(real, name)
    settings = dict(OVERFIT[name])
    trainer = _trainer(features, targets, name, val_on_train=True, **settings)
    history = trainer.fit().history
    first, last = history[0]["train_loss"], min(h["train_loss"] for h in history[-3:])
    train_mae = np.abs(trainer.predict(trainer.split.train) - targets[:32]).mean()  # eval mode
    spread = np.abs(targets[:32] - targets[:32].mean()).mean()
    print(f"\n{name}: train loss {first:.3f} -> {last:.3f}; train MAE {train_mae:.1f} vs spread {spread:.1f} cm^-1")
    assert last < 0.35 * first, (name, first, last)
    assert train_mae < 0.4 * spread, (name, train_mae, spread)


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_deterministic_under_seed(real, name: str) -> None:
    targets, features = real[1], _features(real, name)
    histories, predictions = [], []
    for _ in range(2):
        trainer = _trainer(features, targets, name, epochs=2, seed=7)
        histories.append([{k: v for k, v in h.items() if k != "epoch_seconds"} for h in trainer.fit().history])
        predictions.append(trainer.predict(np.arange(32, 40)))
    assert histories[0] == histories[1]
    np.testing.assert_array_equal(predictions[0], predictions[1])


def test_lern_needs_site_environments(real) -> None:
    features = _features(real, "lern")
    graph = features.graph(0)
    del graph.site_env
    with pytest.raises(ValueError, match="site_env"):
        _build("lern", small=True)(_batch([graph]))


def test_irnet_structure_reuses_irnet_on_wider_input() -> None:
    from harness.featurize.magpie import TabularBatch

    for name, depth in (("irnet17_structure", 17), ("irnet48_structure", 48)):
        spec = get_model(name)
        assert spec.train_defaults == get_model(name.removesuffix("_structure")).train_defaults
        config = spec.make_config()
        assert config.depth == depth
        model = spec.build(config, {"n_features": 273}).eval()
        assert model(TabularBatch(torch.randn(4, 273), torch.zeros(4))).shape == (4,)


@pytest.mark.parametrize("name", ["alignn", "crysformer"])
def test_compiled_matches_eager(real, name: str) -> None:
    """``compile=True`` (torch.compile of each graph convolution / layer) changes no arithmetic."""
    pytest.importorskip("torch._inductor")
    features = _features(real, name)
    batch = _batch([features.graph(i) for i in range(6)])
    models = []
    for compiled in (False, True):
        seed_everything(0)
        spec = get_model(name)
        # Crysformer: one block (its layers skip the edge update), which halves the graphs to compile
        small = {**SMALL[name], "n_blocks": 1} if name == "crysformer" else SMALL[name]
        models.append(spec.build(spec.make_config(**small, compile=compiled), {}))
    outputs = []
    for model in models:
        out = model(batch)
        out.sum().backward()
        # an unused parameter's gradient is None in eager mode, zeros through the compiled function
        grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}
        outputs.append((out.detach(), grads))
    assert torch.allclose(outputs[0][0], outputs[1][0], atol=1e-5)
    for name, g0 in outputs[0][1].items():
        assert torch.allclose(g0, outputs[1][1][name], atol=1e-4, rtol=1e-4), name
    state0, state1 = models[0].state_dict(), models[1].state_dict()
    assert state0.keys() == state1.keys()  # compiling leaves checkpoints interchangeable
    for key in state0:  # (ALIGNN) BatchNorm running statistics moved alike
        assert torch.allclose(state0[key].float(), state1[key].float(), atol=1e-5), key


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_bf16_mixed_precision_overfits_and_predicts_like_fp32(real, name: str) -> None:
    """``precision="bf16"``: the layers train in bfloat16, the weights stay float32, the model
    learns as in fp32 (the overfit test's bounds); its predictions are float32 (equal to those of
    an fp32 trainer with the same weights), and bf16 inference would be within 5% of the
    targets' spread of them."""
    targets, features = real[1], _features(real, name)
    trainer = _trainer(features, targets, name, val_on_train=True, precision="bf16", **OVERFIT[name])
    dtypes: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda module, args, out: dtypes.add(out.dtype) if module.training else None)
             for m in trainer.model.modules() if isinstance(m, torch.nn.Linear)]
    history = trainer.fit().history
    for hook in hooks:
        hook.remove()
    assert dtypes == {torch.bfloat16}, dtypes
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}

    first, last = history[0]["train_loss"], min(h["train_loss"] for h in history[-3:])
    rows = trainer.split.train
    prediction = trainer.predict(rows)
    spread = np.abs(targets[:32] - targets[:32].mean()).mean()
    train_mae = np.abs(prediction - targets[:32]).mean()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_bf16 = trainer.predict(rows)
    trainer.config = TrainConfig.from_dict({**dataclasses.asdict(trainer.config), "precision": "fp32"})
    assert np.array_equal(trainer.predict(rows), prediction)  # predictions are float32 under bf16 training
    gaps = np.abs(in_bf16 - prediction)
    gap, mean_gap = gaps.max(), gaps.mean()
    print(f"\n{name} bf16: train loss {first:.3f} -> {last:.3f}; train MAE {train_mae:.1f}, spread {spread:.1f}, "
          f"|bf16 - fp32 inference| max {gap:.2f}, mean {mean_gap:.2f} cm^-1")
    assert last < 0.35 * first, (name, first, last)
    assert train_mae < 0.4 * spread, (name, train_mae, spread)
    # bf16 rounds every layer's output to 8 mantissa bits: the inference in bf16 differs, but
    # little. The worst of 32 rows varies with the CPU: under 5 % of the spread on the Intel
    # machine with AMX (earlier sessions), 14.2 of 244 for CGCNN on an AVX2-only EPYC without
    # bf16 instructions (2026-12-04; mean gaps there 0.6-2.8).
    assert 0 < mean_gap < 0.03 * spread and gap < 0.1 * spread, (name, mean_gap, gap, spread)
