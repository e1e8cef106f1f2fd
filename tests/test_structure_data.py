"""Structure datasets and structure featurization, on real structures.

Real data: ``data_dir()/structures`` (mp_elasticity, mp_2018_subset, matbench_phonons) and the
PyPI sdist matminer==0.4.1 (flla_2015, elastic_tensor_2015; skipped when it cannot be fetched).
Parsed structures are cached in the user's cache (the first run parses ~10k structures, later
runs read JSON); featurization cache tests use a temporary cache.
"""

from __future__ import annotations

import hashlib
import gzip
import json
import time

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from torch_geometric.data import Batch

from harness import paths
from harness.data import CATALOG, SUITES, DataError, count_rows, load_custom_structures, load_dataset, resolve_datasets
from harness.data import structures as st
from harness.data.fetch import sha256_file
from harness.data.dataset import Dataset, Split
from harness.data.matbench import read_official_test_ids
from harness.featurize import FEATURIZERS, featurize
from harness.featurize import graphs as gr
from harness.featurize.graph_types import GraphBatch
from harness.featurize.local_env import coordination_numbers

DATA = paths.data_dir()
needs_structures = pytest.mark.skipif(
    DATA is None or not (DATA / "structures" / "mp_elasticity.csv.gz").is_file(),
    reason="shared structure data (../shared/data/structures or HARNESS_DATA_DIR) absent")


@pytest.fixture(scope="module")
def elastic():
    if DATA is None or not (DATA / "structures" / "mp_elasticity.csv.gz").is_file():
        pytest.skip("shared structure data absent")
    return load_dataset("mp_elasticity:K_VRH")


@pytest.fixture(scope="module")
def sdist():
    try:
        return st.sdist_path()
    except DataError as exc:
        pytest.skip(f"matminer==0.4.1 sdist unavailable: {exc}")


def small(elastic, n=40, max_sites=12):
    """The first ``n`` real structures with at most ``max_sites`` atoms (ids, structures)."""
    f = elastic.frame[[len(s) <= max_sites for s in elastic.frame["structure"]]].head(n)
    return f["id"].tolist(), f["structure"].tolist()


def rows_dataset(ids, structures, name="subset"):
    frame = pd.DataFrame({"id": ids, "formula": [s.composition.formula.replace(" ", "") for s in structures],
                          "target": np.arange(len(ids), dtype=float), "structure": structures})
    idx = np.arange(len(ids))
    return Dataset(name, "test", "t", "", frame, [Split("fixed", idx, idx, idx)], sha256=f"{name}-{len(ids)}")


# ---------------------------------------------------------------- catalog + loaders


def test_catalog_names_and_suites():
    assert resolve_datasets("mp_2018_subset") == ["mp_2018_subset:formation_energy_per_atom", "mp_2018_subset:band_gap"]
    assert resolve_datasets("mp_elasticity") == ["mp_elasticity:K_VRH", "mp_elasticity:G_VRH"]
    assert resolve_datasets("structures") == [
        "mp_2018_subset:formation_energy_per_atom", "mp_2018_subset:band_gap", "mp_elasticity:K_VRH",
        "mp_elasticity:G_VRH", "flla_2015:formation_energy_per_atom", "elastic_tensor_2015:K_VRH",
        "elastic_tensor_2015:G_VRH", "matbench_phonons"]
    assert "jarvis_dft_3d:formation_energy_peratom" in SUITES["jarvis"]
    assert all(CATALOG[n].kind == "structure" for n in SUITES["structures"] + SUITES["jarvis"] if n != "matbench_phonons")
    assert (CATALOG["mp_2018_subset:band_gap"].unit, CATALOG["mp_elasticity:G_VRH"].unit) == ("eV", "GPa")
    assert {"crystal_graph", "crystal_graph_lern", "magpie_structure"} <= set(FEATURIZERS)


@needs_structures
def test_mp_2018_subset_row_count():
    assert count_rows("mp_2018_subset:band_gap") == 36737  # CIFs span lines: counted by the CSV parser


def test_mp_elasticity(elastic):
    ds = elastic
    assert len(ds) == 3191 and list(ds.frame.columns) == ["id", "formula", "target", "structure"]
    assert ds.frame["id"].is_unique and np.isfinite(ds.targets).all() and ds.dropped == 0
    assert all(isinstance(s, Structure) for s in ds.frame["structure"])
    split = ds.split("random")
    assert split.sizes() == (2553, 319, 319) and ds.notes["split_seed"] == 0
    assert len(np.unique(np.concatenate([split.train, split.val, split.test]))) == 3191
    first = ds.frame.iloc[0]
    assert first["structure"].composition.reduced_formula == "Hf2S" and first["formula"] == "Hf4S2"
    g = load_dataset("mp_elasticity:G_VRH")  # same rows, same split, same cached structures
    assert g.sha256 == ds.sha256 and np.array_equal(g.split("random").test, split.test)
    assert not np.allclose(g.targets, ds.targets)


@needs_structures
def test_matbench_phonons_carries_structures_and_official_folds():
    ds = load_dataset("matbench_phonons")
    assert len(ds) == 1265 and {"formula", "structure"} <= set(ds.frame.columns)
    official = read_official_test_ids("matbench_phonons", DATA / "matbench_v0.1" / "folds.json.gz")
    ids = ds.frame["id"].to_numpy()
    assert [sorted(ids[s.test]) for s in ds.splits] == [sorted(t) for t in official]
    from pymatgen.core import Composition

    same = [Composition(f).reduced_composition == s.composition.reduced_composition
            for f, s in zip(ds.frame["formula"], ds.frame["structure"])]
    assert all(same)  # composition models and structure models read the same materials


def test_matminer_sdist_sets(sdist):
    flla = load_dataset("flla_2015:formation_energy_per_atom")
    assert len(flla) == 3938 and flla.frame["structure"].map(len).sum() > 3938
    assert flla.notes["format"] == "literal"  # ast.literal_eval, never eval
    et = load_dataset("elastic_tensor_2015:K_VRH")
    assert len(et) == 1181 and et.split("random").sizes() == (945, 118, 118)
    assert sha256_file(sdist) == st.SDIST_SHA256


# ---------------------------------------------------------------- bad structures


def write_csv(path, rows):
    pd.DataFrame(rows, columns=["id", "cif", "target"]).to_csv(path, index=False)
    return path


def test_bad_structures_named_or_dropped(elastic, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    ids, structs = small(elastic, 6)
    good = [(i, s.to(fmt="cif"), 1.0) for i, s in zip(ids, structs)]
    overlap = structs[0].copy()
    overlap.append("O", overlap[0].coords + [0.3, 0, 0], coords_are_cartesian=True)
    isolated = Structure(Lattice.cubic(20.0), ["Ar"], [[0, 0, 0]])  # nearest image 20 Å away
    bad = [("bad-cif", "data_x\n_cell_length_a 3\nthis is no cif", 1.0),
           ("too-close", overlap.to(fmt="cif"), 2.0), ("alone", isolated.to(fmt="cif"), 3.0)]
    path = write_csv(tmp_path / "mine.csv", good + bad)
    with pytest.raises(DataError) as err:
        load_custom_structures(path, "target", structure_col="cif", id_col="id")
    msg = str(err.value)
    assert "mine.csv" in msg and "3 invalid row(s)" in msg
    assert "'bad-cif'" in msg and "does not parse" in msg
    assert "'too-close'" in msg and "overlapping atoms" in msg and "0.300 Å" in msg
    assert "'alone'" in msg and "isolated atom" in msg
    ds = load_custom_structures(path, "target", structure_col="cif", id_col="id", drop_invalid=True)
    assert ds.dropped == 3 and ds.frame["id"].tolist() == ids and len(ds.split("random").train) >= 4
    # a smaller cutoff makes ordinary structures "isolated"; radius graphs name the entry
    with pytest.raises(DataError, match="isolated atom"):
        load_custom_structures(path, "target", structure_col="cif", id_col="id", drop_invalid=False, cutoff=1.0)
    with pytest.raises(DataError, match=rf"id '{ids[0]}'.*no neighbour within the 1.0 Å cutoff"):
        gr.CrystalGraphs.from_dataset(rows_dataset(ids, structs), gr.GraphConfig(mode="radius", cutoff=1.0))
    with pytest.raises(DataError, match="isolated atom"):
        gr.build_crystal_graph(isolated, mode="radius", cutoff=8.0)


def test_custom_formats_autodetected(elastic, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    ids, structs = small(elastic, 6)
    values = [structs[0].to(fmt="cif"), structs[1].to(fmt="poscar"), json.dumps(structs[2].as_dict()),
              str(structs[3].as_dict()), structs[4].to(fmt="cif"), structs[5].to(fmt="poscar")]
    rec = [{"id": i, "structure": v, "y": float(k)} for k, (i, v) in enumerate(zip(ids, values))]
    path = tmp_path / "mixed.json.gz"
    path.write_bytes(gzip.compress(json.dumps(rec).encode()))
    ds = load_custom_structures(path, "y", id_col="id")
    for got, want in zip(ds.frame["structure"], structs):
        assert got.composition == want.composition and np.allclose(got.lattice.abc, want.lattice.abc, atol=1e-4)
    assert [st.detect_format(v) for v in values[:4]] == ["cif", "poscar", "json", "literal"]


def test_jarvis_layout_from_local_file(elastic, tmp_path, monkeypatch):
    """jarvis dft_3d's layout: a list of dicts with ``jid``, ``atoms`` and properties ("na" = missing)."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    ids, structs = small(elastic, 8)
    entries = [{"jid": f"JVASP-{k}", "formation_energy_peratom": ("na" if k == 3 else -0.1 * k),
                "atoms": {"lattice_mat": s.lattice.matrix.tolist(), "coords": s.frac_coords.tolist(),
                          "elements": [sp.symbol for sp in s.species], "abc": list(s.lattice.abc),
                          "angles": list(s.lattice.angles), "cartesian": False, "props": [""] * len(s)}}
               for k, s in enumerate(structs)]
    entries[5]["atoms"].update(coords=structs[5].cart_coords.tolist(), cartesian=True)
    path = tmp_path / "dft_3d_small.json"
    path.write_text(json.dumps(entries))
    ds = st.load_structure_dataset("jarvis_dft_3d:formation_energy_peratom", source=path)
    assert len(ds) == 7 and ds.notes["missing_target"] == 1 and "JVASP-3" not in set(ds.frame["id"])
    assert ds.unit == "eV/atom" and ds.split("random").sizes() == (5, 1, 1)
    for jid, s in zip(ds.frame["id"], ds.frame["structure"]):
        want = structs[int(jid.split("-")[1])]
        assert s.composition == want.composition
        assert np.allclose(s.cart_coords, want.cart_coords, atol=1e-6)
    jarvis = pytest.importorskip("jarvis.core.atoms")
    ref = jarvis.Atoms.from_dict(entries[0]["atoms"]).pymatgen_converter()
    assert np.allclose(ref.cart_coords, ds.frame["structure"][0].cart_coords, atol=1e-6)


# ---------------------------------------------------------------- graphs on real structures


def test_neighbour_counts_and_bond_lengths(elastic):
    ids, structs = small(elastic, 25)
    for s in structs:
        exact = gr.build_crystal_graph(s, ties=False)
        assert np.bincount(exact.edge_index[1].numpy(), minlength=len(s)).tolist() == [12] * len(s)
        centre, nbr, images, dist = gr.neighbour_arrays(s)
        counts = np.bincount(centre, minlength=len(s))
        assert counts.min() >= 12
        # an atom has more than 12 edges only when its 13th neighbour ties with its 12th
        c, _, _, d = s.get_neighbor_list(float(dist.max()) + 1.0)
        for i in np.flatnonzero(counts > 12):
            di = np.sort(d[c == i])
            assert abs(di[12] - di[11]) < gr.TIE_TOL
        for i, j, im, dd in list(zip(centre, nbr, images, dist))[:: max(1, len(centre) // 40)]:
            assert s.get_distance(int(i), int(j), jimage=im) == pytest.approx(dd, abs=1e-6)
        g = gr.build_crystal_graph(s)
        assert torch.allclose(g.edge_vec.norm(dim=1), g.edge_length, atol=1e-4)
        assert torch.allclose(g.edge_length, torch.as_tensor(dist, dtype=torch.float32))
        assert g.angle.min() >= 0 and g.angle.max() <= np.pi + 1e-6
        deg = np.bincount(centre, minlength=len(s))
        assert g.lg_edge_index.shape[1] == int((deg * (deg - 1)).sum())
        a, b = g.lg_edge_index
        assert (g.edge_index[1][a] == g.edge_index[1][b]).all() and (a != b).all()


def test_one_atom_cells_get_their_periodic_images(elastic):
    ones = {i: s for i, s in zip(elastic.frame["id"], elastic.frame["structure"]) if len(s) == 1}
    fcc = ones["mp-30"]  # Cu, fcc primitive cell: 12 nearest images, next shell 41 % farther
    g = gr.build_crystal_graph(fcc)
    assert g.edge_index.shape[1] == 12 and (g.edge_index == 0).all()
    assert torch.allclose(g.edge_length, torch.full((12,), fcc.lattice.a), atol=1e-4)
    bcc = ones["mp-129"]  # Mo, bcc primitive: 8 + 6 within 1.155 × d_nn
    assert gr.build_crystal_graph(bcc).edge_index.shape[1] == 14  # the whole tied second shell
    assert gr.build_crystal_graph(bcc, ties=False).edge_index.shape[1] == 12


def test_symmetric_knn_adds_every_missing_reverse_edge_once(elastic):
    ids, structs = small(elastic, 25)
    grew = 0
    for s in structs:
        centre, nbr, images, dist = gr.neighbour_arrays(s)
        sc, sn, si, sd = gr.neighbour_arrays(s, symmetric=True)
        directed = {(int(i), int(j), tuple(im)) for i, j, im in zip(centre, nbr, images)}
        both = [(int(i), int(j), tuple(im)) for i, j, im in zip(sc, sn, si)]
        reverse = {(j, i, tuple(-np.array(im))) for i, j, im in directed}
        assert len(both) == len(set(both))  # no edge twice
        assert set(both) == directed | reverse  # the k-NN edges and their reverses, nothing else
        assert (np.diff(sc) >= 0).all()  # still grouped by centre (the line graph relies on it)
        for i, j, im, dd in list(zip(sc, sn, si, sd))[:: max(1, len(sc) // 30)]:
            assert s.get_distance(int(i), int(j), jimage=im) == pytest.approx(dd, abs=1e-6)
        grew += len(both) > len(directed)
        g = gr.build_crystal_graph(s, symmetric=True)
        assert g.edge_index.shape[1] == len(both)
        assert torch.allclose(g.edge_vec.norm(dim=1), g.edge_length, atol=1e-4)
    assert grew > 0  # some real structures have one-sided k-NN edges
    # a supercell's symmetric graph: each atom has its primitive atom's neighbour distances
    _, few = small(elastic, 6, max_sites=6)
    for s in few:
        sc = s.copy()
        sc.make_supercell([1, 2, 1])
        g, gs = gr.build_crystal_graph(s, symmetric=True), gr.build_crystal_graph(sc, symmetric=True)
        assert per_atom_lengths(gs) == sorted(per_atom_lengths(g) * 2)
    # a different cache file than the directed graphs', whose file name does not change
    ds = rows_dataset(*small(elastic, 3))
    assert gr.cache_path(ds, gr.GraphConfig(symmetric=True)) != gr.cache_path(ds, gr.GraphConfig())
    before = gr.config_hash(ds, {"k": 12, "cutoff": 8.0, "mode": "knn", "site_env": False, "ties": True,
                                 "format": gr.GRAPH_FORMAT})  # the fields before `symmetric` existed
    assert gr.cache_path(ds, gr.GraphConfig()).name == f"{ds.cache_key}-{before}.pt"


def test_chain_line_graph_is_the_directed_line_graph_of_the_symmetric_graph(elastic):
    """line_pairs="chain": bond (u -> v) -> bond (v -> w) for every such pair, backtracking
    included (DGL's ``line_graph``, as the reference ALIGNN), angle at v between u and w."""
    _, structs = small(elastic, 8, max_sites=8)
    for s in structs:
        g = gr.build_crystal_graph(s, symmetric=True, line_pairs="chain")
        src, dst = g.edge_index.tolist()
        vec = g.edge_vec.double()
        expected = {}  # written out from the definition, one pair at a time
        for a in range(len(src)):
            for b in range(len(src)):
                if dst[a] == src[b]:
                    # edge_vec points centre -> neighbour: bond a = u -> v gives v -> u = vec[a],
                    # bond b = v -> w gives v -> w = -vec[b]
                    cos = torch.dot(vec[a], -vec[b]) / (vec[a].norm() * vec[b].norm())
                    expected[(a, b)] = float(torch.arccos(cos.clamp(-1, 1)))
        pairs = list(zip(*g.lg_edge_index.tolist()))
        assert len(pairs) == len(set(pairs)) == len(expected)
        assert set(pairs) == set(expected)
        got = dict(zip(pairs, g.angle.tolist()))
        assert max(abs(got[p] - expected[p]) for p in pairs) < 1e-3
        rev = gr.reverse_edges(*gr.neighbour_arrays(s, symmetric=True)[:3])
        assert (rev[rev] == np.arange(len(rev))).all() and (np.array(src)[rev] == np.array(dst)).all()
        assert max(got[(a, int(rev[a]))] for a in range(len(src))) < 1e-3  # backtracking: angle 0
        # the centre pairs join the same bonds' angles (a -> b, a != b), without backtracking
        centre = gr.build_crystal_graph(s, symmetric=True)
        assert centre.lg_edge_index.shape[1] == len(expected) - len(src)
    with pytest.raises(ValueError, match="symmetric"):
        gr.GraphConfig(line_pairs="chain")  # a directed k-NN edge may have no reverse
    with pytest.raises(ValueError, match="line_pairs"):
        gr.GraphConfig(symmetric=True, line_pairs="triangle")
    # stored per dataset (the reverse index travels in the cache file) and sliced per structure
    ds = rows_dataset(*small(elastic, 3))
    config = gr.GraphConfig(symmetric=True, line_pairs="chain")
    graphs = gr.CrystalGraphs.from_dataset(ds, config, cache=False)
    for i, s in enumerate(ds.frame["structure"]):
        one = gr.build_crystal_graph(s, symmetric=True, line_pairs="chain")
        assert torch.equal(graphs.graph(i).lg_edge_index, one.lg_edge_index)
    assert gr.cache_path(ds, config) == gr.cache_path(ds, gr.GraphConfig(symmetric=True))  # pairs: per batch


def test_line_graph_batching_offsets(elastic):
    _, structs = small(elastic, 2)
    g1, g2 = gr.build_crystal_graph(structs[0]), gr.build_crystal_graph(structs[1])
    b = Batch.from_data_list([g1, g2])
    e1, t1 = g1.edge_index.shape[1], g1.lg_edge_index.shape[1]
    assert torch.equal(b.lg_edge_index[:, :t1], g1.lg_edge_index)
    assert torch.equal(b.lg_edge_index[:, t1:], g2.lg_edge_index + e1)  # offset by edges, not nodes
    assert torch.equal(b.edge_index[:, e1:], g2.edge_index + g1.num_nodes)


def per_atom_lengths(g):
    dst, length = g.edge_index[1].numpy(), g.edge_length.numpy()
    return sorted(tuple(np.round(np.sort(length[dst == i]), 4)) for i in range(g.num_nodes))


def per_atom_angles(g):
    centre = g.edge_index[1][g.lg_edge_index[0]].numpy()
    return sorted(tuple(np.round(np.sort(g.angle.numpy()[centre == i]), 3)) for i in range(g.num_nodes))


def test_supercell_rotation_translation_invariance(elastic):
    _, structs = small(elastic, 8, max_sites=6)
    rng = np.random.default_rng(0)
    for s in structs:
        g = gr.build_crystal_graph(s)
        sc = s.copy()
        sc.make_supercell([2, 1, 1])
        gs = gr.build_crystal_graph(sc)
        assert per_atom_lengths(gs) == sorted(per_atom_lengths(g) * 2)  # each atom: same neighbour distances
        assert per_atom_angles(gs) == sorted(per_atom_angles(g) * 2)  # ties kept: same angles too
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        rotated = Structure(Lattice(s.lattice.matrix @ q.T), s.species, s.frac_coords)
        gr_ = gr.build_crystal_graph(rotated)
        assert per_atom_lengths(gr_) == per_atom_lengths(g) and per_atom_angles(gr_) == per_atom_angles(g)
        shifted = s.copy()
        shifted.translate_sites(list(range(len(s))), rng.uniform(size=3), frac_coords=True, to_unit_cell=True)
        gt = gr.build_crystal_graph(shifted)
        assert per_atom_lengths(gt) == per_atom_lengths(g) and per_atom_angles(gt) == per_atom_angles(g)


def test_lern_site_environments(elastic):
    from pymatgen.analysis.local_env import MinimumDistanceNN

    _, structs = small(elastic, 6, max_sites=8)
    for s in structs:
        g = gr.build_crystal_graph(s, site_env=True, line=False)
        env = g.site_env
        assert env.shape == (len(s), 1, 6, 11) and torch.isfinite(env).all()
        assert torch.allclose(env[:, 0, 0, 0] * 100, g.z.float())  # column 0 = the site itself
        assert (env[:, 0, 4, 0] == 0).all() and (env[:, 0, 4, 1:] > 0).all()  # distances, sorted
        assert (env[:, 0, 4, 1:].diff(dim=1) >= -1e-6).all()
        cn = coordination_numbers(len(s), g.edge_index[1].numpy(), g.edge_length.numpy().astype(float))
        ref = [MinimumDistanceNN(tol=0.1).get_cn(s, i) for i in range(len(s))]
        assert [c for c, r in zip(cn, ref) if r <= 12] == [r for r in ref if r <= 12]
        assert torch.allclose(env[:, 0, 2, 0] * 12, torch.as_tensor(cn, dtype=torch.float32))
    # a conventional cell and its primitive cell give the same set of site matrices
    conv = SpacegroupAnalyzer(structs[0]).get_conventional_standard_structure()
    prim = SpacegroupAnalyzer(structs[0]).get_primitive_standard_structure()
    mats = lambda x: sorted(map(tuple, np.round(gr.build_crystal_graph(x, site_env=True).site_env.reshape(len(x), -1).numpy(), 4)))  # noqa: E731
    assert set(mats(conv)) == set(mats(prim))


# ---------------------------------------------------------------- featurizers, cache


def test_crystal_graphs_cached_and_batched(elastic, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    ds = elastic.subsample(300, seed=1)
    start = time.perf_counter()
    feats = featurize("crystal_graph", ds)
    cold = time.perf_counter() - start
    assert len(feats) == 300 and feats.info["k"] == 12 and feats.info["lg"] and feats.info["max_z"] == 100
    files = list((tmp_path / "features" / "crystal_graph").glob(f"{ds.cache_key}-*.pt"))
    assert len(files) == 1

    def no_build(*args, **kwargs):
        raise AssertionError("featurized again despite the cache")

    with monkeypatch.context() as patch:
        patch.setattr(gr, "build_arrays", no_build)
        start = time.perf_counter()
        again = featurize("crystal_graph", ds)
        warm = time.perf_counter() - start
    print(f"crystal_graph of 300 structures: cold {cold:.2f} s, cached {warm:.3f} s")
    assert warm < cold
    # CGCNN and SchNet read the same file without line graphs (built per batch, never stored)
    with monkeypatch.context() as patch:
        patch.setattr(gr, "build_arrays", no_build)
        plain = featurize("periodic_graph", ds)
    assert not plain.info["lg"] and len(list((tmp_path / "features").rglob("*.pt"))) == 1
    plain_batch = next(plain.batches(ds.split("random").train[:4], np.zeros(4), batch_size=4)).graph
    assert "lg_edge_index" not in plain_batch and plain_batch.edge_index.shape[1] > 0
    # ... and a sweep stores one copy: the crystal_graph features read as periodic_graph share the
    # tensors and give the same batches (and back again)
    view = again.as_kind("periodic_graph")
    assert view.info == plain.info and all(view.tensors[k] is again.tensors[k] for k in again.tensors)
    view_batch = next(view.batches(ds.split("random").train[:4], np.zeros(4), batch_size=4)).graph
    assert "lg_edge_index" not in view_batch and torch.equal(view_batch.edge_index, plain_batch.edge_index)
    assert plain.as_kind("crystal_graph").info == again.info
    idx = ds.split("random").train[:70]
    y = np.arange(len(idx), dtype=float)
    batches = list(again.batches(idx, y, batch_size=32))
    assert [len(b) for b in batches] == [32, 32, 6] and isinstance(batches[0], GraphBatch)
    one = again.graph(int(idx[33]))
    b1 = batches[1].graph
    assert torch.equal(b1.get_example(1).edge_index, one.edge_index) and batches[1].y[1] == 33
    assert torch.equal(b1.get_example(1).lg_edge_index, one.lg_edge_index)
    with pytest.raises(TypeError):
        again.matrix(idx)

    # epochs after the first reuse the graphs (line graphs included) instead of building them again
    assert len(again._memo) == 70 and again._memo_bytes > 0
    with monkeypatch.context() as patch:
        patch.setattr(gr, "line_graph", no_build)
        second = list(again.batches(idx, y, batch_size=32))
    assert all(torch.equal(a.graph.lg_edge_index, b.graph.lg_edge_index) and torch.equal(a.graph.angle, b.graph.angle)
               for a, b in zip(batches, second))
    monkeypatch.setenv("HARNESS_GRAPH_MEMO_MB", "0")  # the limit holds: nothing kept
    nothing_kept = featurize("crystal_graph", ds)
    assert sum(len(b) for b in nothing_kept.batches(idx, y, batch_size=32)) == 70 and not nothing_kept._memo

    lern = featurize("crystal_graph_lern", ds)
    g = next(lern.batches(idx[:4], y[:4], 4)).graph
    assert g.site_env.shape == (g.num_nodes, 1, 6, 11) and lern.info["site_env_shape"] == (1, 6, 11)
    assert lern.as_kind("crystal_graph") is None and again.as_kind("crystal_graph_lern") is None
    with pytest.raises(DataError, match="no structures"):
        featurize("crystal_graph", Dataset("comp", "x", "t", "", ds.frame[["id", "formula", "target"]],
                                           ds.splits, sha256="c"))


def test_alignn_chain_graphs_cached_apart_and_read_back_exactly(elastic, tmp_path, monkeypatch):
    """ALIGNN's input kind (symmetric edges + directed line graph) is a cache file of its own,
    whose stored reverse index gives, read back, the same line graphs as a fresh build; it is not
    shared with the directed graphs' kinds (other edges), in either direction."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    ds = elastic.subsample(60, seed=2)
    fresh = gr.CrystalGraphs.from_dataset(ds, gr.GRAPH_KINDS["crystal_graph_chain"], cache=False)
    first = featurize("crystal_graph_chain", ds)
    with monkeypatch.context() as patch:
        patch.setattr(gr, "build_arrays", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built again")))
        cached = featurize("crystal_graph_chain", ds)
    assert cached.info["symmetric"] and cached.info["line_pairs"] == "chain" and cached.info["lg"]
    assert torch.equal(cached.tensors["rev"], fresh.tensors["rev"]) and first.tensors.keys() == fresh.tensors.keys()
    for i in (0, 17, 59):
        a, b = cached.graph(i), fresh.graph(i)
        assert torch.equal(a.lg_edge_index, b.lg_edge_index) and torch.equal(a.angle, b.angle)
        # every bond's reverse is in the graph: the reverse index is an involution from src to dst
        rev = cached.tensors["rev"][cached._edge_ptr[i]:cached._edge_ptr[i + 1]].long()
        assert torch.equal(rev[rev], torch.arange(len(rev))) and torch.equal(a.edge_index[0][rev], a.edge_index[1])
    directed = featurize("crystal_graph", ds)
    assert len(list((tmp_path / "features").rglob("*.pt"))) == 2
    assert directed.tensors["n_edges"].sum() < cached.tensors["n_edges"].sum()
    for kind in ("crystal_graph", "periodic_graph", "crystal_graph_lern"):
        assert cached.as_kind(kind) is None, kind
    assert directed.as_kind("crystal_graph_chain") is None
    assert cached.as_kind("crystal_graph_chain").info == cached.info


def test_structure_attributes_continue_from_the_rows_an_interrupted_run_saved(elastic, tmp_path, monkeypatch):
    from harness.featurize.graphs import save_tensors, structures_of
    from harness.featurize.structure_attributes import cache_paths, structure_attributes

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    f = elastic.frame[[len(s) <= 2 for s in elastic.frame["structure"]]].head(6)
    ds = rows_dataset(f["id"].tolist(), f["structure"].tolist(), name="attrs")
    structures, _ = structures_of(ds, "magpie_structure")
    saved: list[int] = []

    def save_then_stop(rows):  # the run is interrupted right after its first checkpoint
        saved.append(len(rows))
        save_tensors(cache_paths(ds)[1], {"values": torch.from_numpy(rows + 1000.0)})  # marked: not recomputed
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        structure_attributes(structures, checkpoint=save_then_stop, checkpoint_every=4)
    assert saved == [4]
    full = structure_attributes(structures)
    assert full.shape == (6, 128) and np.isfinite(full).all()
    # the featurizer takes the 4 saved rows as they are, computes the other 2, and drops the partial file
    x = featurize("magpie_structure", ds).matrix(np.arange(6))[:, 145:]
    np.testing.assert_allclose(x[:4], full[:4] + 1000.0, rtol=1e-6)
    np.testing.assert_allclose(x[4:], full[4:], rtol=1e-6)
    path, partial = cache_paths(ds)
    assert path.is_file() and not partial.exists()


def test_magpie_structure_attributes(elastic, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    f = elastic.frame[[len(s) <= 2 for s in elastic.frame["structure"]]].head(4)
    ds = rows_dataset(f["id"].tolist(), f["structure"].tolist(), name="attrs")
    feats = featurize("magpie_structure", ds)
    assert feats.info["n_features"] == 273 == len(feats.info["feature_names"])
    x = feats.matrix(np.arange(4))
    assert x.shape == (4, 273) and np.isfinite(x).all()
    assert feats.info["feature_names"][145] == "minimum CN_VoronoiNN"
    assert next(feats.batches(np.arange(4), np.zeros(4), 4)).x.shape == (4, 273)


def test_progress_in_a_log_is_one_line_per_tenth_and_yields_every_item(capsys):
    from harness.console import progress

    assert list(progress(iter(range(25)), 25, "Ward-2017 attributes of 25 x")) == list(range(25))
    lines = capsys.readouterr().out.splitlines()  # pytest's stdout is not a terminal, as a nohup log
    assert [line.split(" (")[0] for line in lines] == [f"Ward-2017 attributes of 25 x: {k}/25"
                                                       for k in (3, 6, 9, 12, 15, 18, 21, 24, 25)]
    assert lines[-1].startswith("Ward-2017 attributes of 25 x: 25/25 (100%, ")
    assert list(progress(range(3), 3, "few", min_total=500)) == [0, 1, 2]
    assert capsys.readouterr().out == ""  # below min_total: nothing


def test_imputed_columns_are_named_in_one_short_line(caplog):
    import logging

    from harness.featurize.magpie import _impute_column_means

    values = np.arange(30.0).reshape(3, 10)
    values[1, :] = np.nan  # one structure matminer failed on: all its columns empty
    with caplog.at_level(logging.WARNING):
        assert _impute_column_means(values, [f"attr{k}" for k in range(10)]) == 10
    np.testing.assert_allclose(values[1], (np.arange(10.0) + np.arange(20.0, 30.0)) / 2)  # the column means
    (message,) = [r.getMessage() for r in caplog.records]
    assert message == ("10 non-finite attribute value(s) in 1 row(s), column(s) attr0, attr1, attr2, attr3, attr4, "
                       "… (10 in all): replaced by column means")


def test_sweep_reads_a_structure_file_given_its_column(elastic, tmp_path, monkeypatch):
    """`harness sweep --dataset-file F --structure-column C`: the file's structures (and their
    compositions) make the dataset, with the user's ids and the seeded 80/10/10 split."""
    from harness.tuning.plan import SweepOptions, load_datasets

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    ids, structs = small(elastic, 10)
    path = write_csv(tmp_path / "mine.csv", [(i, s.to(fmt="cif"), float(k)) for k, (i, s) in enumerate(zip(ids, structs))])
    opts = SweepOptions(models=["cgcnn"], datasets=[], dataset_file=path, target="target",
                        structure_column="cif", id_column="id", workdir=tmp_path / "w")
    (ds,) = load_datasets(opts)
    assert ds.name == "mine" and ds.suite == "custom" and ds.frame["id"].tolist() == ids
    assert [s.composition for s in ds.frame["structure"]] == [s.composition for s in structs]
    assert ds.frame["formula"].tolist() == [s.composition.formula.replace(" ", "") for s in structs]
    assert ds.frame["target"].tolist() == [float(k) for k in range(10)] and ds.splits[0].sizes() == (8, 1, 1)
    # radius graphs of 1 Å: every structure has an isolated atom, found when the data loads
    radius = SweepOptions(**{**opts.__dict__, "graph_mode": "radius", "graph_cutoff": 1.0})
    with pytest.raises(DataError, match=rf"id '{ids[0]}'.*isolated atom.*within the 1.0 Å cutoff"):
        load_datasets(radius)


def test_sweep_on_a_structure_file_with_bad_entries_names_them_and_starts_nothing(elastic, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from harness.cli import app

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    ids, structs = small(elastic, 6)
    rows = [(i, s.to(fmt="cif"), 1.0) for i, s in zip(ids, structs)] + [("bad-cif", "data_x\nno cif here", 2.0)]
    path = write_csv(tmp_path / "mine.csv", rows)
    args = ["sweep", "--models", "cgcnn", "--dataset-file", str(path), "--target", "target",
            "--id-column", "id", "--workdir", str(tmp_path / "w")]
    result = CliRunner().invoke(app, args + ["--structure-column", "cif"], env={"COLUMNS": "300"})
    out = " ".join(result.output.split())
    assert result.exit_code == 2 and "mine.csv" in out and "'bad-cif'" in out and "does not parse" in out
    result = CliRunner().invoke(app, args + ["--structure-column", "poscar"], env={"COLUMNS": "300"})
    out = " ".join(result.output.split())
    assert result.exit_code == 2 and "poscar" in out and "--structure-column" in out
    assert not (tmp_path / "w").exists()


def test_matbench_structure_task_gets_its_structures_from_matbench_json_when_a_model_needs_them(
        elastic, tmp_path, monkeypatch):
    """A Matbench structure task other than phonons: its structures come from matbench's json in
    the cache (what the loader downloads with internet), joined on mbid; the folds stay the
    official ones. The file here is in matbench's layout with real MP structures standing in for
    jdft2d's (none are offline): it checks the join and the plumbing, and trains nothing."""
    from harness.tuning.plan import SweepOptions, load_datasets

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    plain = load_dataset("matbench_jdft2d")
    assert "structure" not in plain.frame.columns  # a composition sweep does not parse structures
    stand_ins = elastic.frame["structure"][[len(s) <= 8 for s in elastic.frame["structure"]]].tolist()
    ids = plain.frame["id"].tolist()[::-1]  # matbench's order need not be the frame's
    doc = {"index": ids, "columns": ["structure", "exfoliation_en"],
           "data": [[stand_ins[k % len(stand_ins)].as_dict(), 1.0] for k in range(len(ids))]}
    cached = tmp_path / "cache" / "matbench" / "matbench_jdft2d.json.gz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(gzip.compress(json.dumps(doc).encode()))

    (with_structures,) = load_datasets(SweepOptions(models=["ridge", "cgcnn"], datasets=["matbench_jdft2d"],
                                                    workdir=tmp_path / "w"))
    frame = with_structures.frame
    assert frame["id"].tolist() == plain.frame["id"].tolist() and frame["target"].equals(plain.frame["target"])
    by_id = dict(zip(ids, (stand_ins[k % len(stand_ins)] for k in range(len(ids)))))
    assert all(s == by_id[i] for i, s in zip(frame["id"], frame["structure"]))
    assert [s.test.tolist() for s in with_structures.splits] == [s.test.tolist() for s in plain.splits]
    assert with_structures.notes["structure_file"] == str(cached)
    # one data version for the rows every sweep of it reads (a composition model's runs from a sweep
    # with a structure model and from one without name the same data); the structures' beside it,
    # and in the features' cache key
    assert with_structures.sha256 == plain.sha256
    assert with_structures.notes["structures_sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert with_structures.cache_key == f"{plain.cache_key}-{with_structures.notes['structures_sha256'][:16]}"
    (composition_only,) = load_datasets(SweepOptions(models=["ridge"], datasets=["matbench_jdft2d"],
                                                     workdir=tmp_path / "w"))
    assert "structure" not in composition_only.frame.columns


def test_sweep_graph_settings_reach_the_graphs_and_are_checked_up_front(elastic, tmp_path, monkeypatch):
    """--neighbours / --graph-mode / --cutoff: the graphs a sweep's structure models read."""
    from harness.tuning.plan import SweepOptions, check_plan

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    ids, structs = small(elastic, 6)
    ds = rows_dataset(ids, structs)
    default, eight = featurize("periodic_graph", ds), featurize("periodic_graph", ds, {"k": 8})
    radius = featurize("periodic_graph", ds, {"mode": "radius", "cutoff": 4.0})
    assert eight.config.k == 8 and len(eight.tensors["dist"]) < len(default.tensors["dist"])
    for i, s in enumerate(structs):
        # the 8 nearest (and any tied with the 8th: an fcc atom keeps all 12 equidistant ones)
        assert eight.graph(i).num_edges == len(gr.neighbour_arrays(s, k=8)[0])
        assert np.bincount(eight.graph(i).edge_index[1].numpy(), minlength=len(s)).min() >= 8
        within = sum(len(s.get_neighbors(site, 4.0)) for site in s)
        assert radius.graph(i).num_edges == within and float(radius.graph(i).edge_length.max()) <= 4.0
    # the sweep's other graph kind reads the same tensors (one copy), with the same settings
    view = eight.as_kind("crystal_graph")
    assert view is not None and view.config.k == 8 and view.tensors is eight.tensors
    opts = SweepOptions(models=["alignn"], datasets=[], graph_mode="radius", workdir=tmp_path / "w")
    with pytest.raises(ValueError, match="input kind 'crystal_graph_chain' with radius 8 Å: line_pairs='chain' needs"):
        check_plan(opts, [ds])
    with pytest.raises(ValueError, match="mode='ball'"):
        SweepOptions(models=["cgcnn"], datasets=[], graph_mode="ball")
    with pytest.raises(ValueError, match="--cutoff is the radius of --graph-mode radius"):
        SweepOptions(models=["cgcnn"], datasets=[], graph_cutoff=5.0)  # would be ignored by k-NN
    with pytest.raises(ValueError, match="--neighbours is k of k-NN graphs"):
        SweepOptions(models=["cgcnn"], datasets=[], graph_mode="radius", graph_k=8)
