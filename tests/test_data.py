"""Dataset layer: catalog, crabnet wheel, Matbench (local, json layout, public download), validation.

Real data: the crabnet==2.0.8 wheel (fetched once into the cache) and the shared Matbench copy
(``harness.paths.data_dir()``); tests needing the latter skip when it is absent.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import urllib.error
import zipfile

import numpy as np
import pandas as pd
import pytest

from harness import paths
from harness.data import (
    CATALOG, SUITES, DataError, count_rows, crabnet_wheel, data_table, fetch, list_specs, load_custom,
    load_dataset, matbench, read_wheel_csv, resolve_datasets,
)
from harness.data.matbench import official_folds, read_matbench_csv, read_matbench_json, read_official_test_ids

DATA = paths.data_dir()
MB = DATA / "matbench_v0.1" if DATA else None
needs_shared = pytest.mark.skipif(
    MB is None or not MB.is_dir(), reason="shared data (../shared/data or HARNESS_DATA_DIR) absent")


@pytest.fixture(scope="session")
def wheel():
    try:
        return crabnet_wheel.wheel_path()
    except DataError as exc:  # offline and not cached yet
        pytest.skip(f"crabnet wheel unavailable: {exc}")


def folds_of(ds):
    return [ds.frame["id"].to_numpy()[s.test].tolist() for s in ds.splits]


def official(name):
    return read_official_test_ids(name, MB / "folds.json.gz")


# ---------------------------------------------------------------- catalog


def test_catalog_and_suites():
    assert len(SUITES["crabnet28"]) == 28 and len(SUITES["matbench"]) == 13
    composition = SUITES["crabnet28"] + SUITES["matbench"]  # structure suites: tests/test_structure_data.py
    assert len(composition) == 41 and all(CATALOG[n].kind == "composition" for n in composition)
    assert {s.task_type for s in list_specs("matbench") if s.task_type == "classification"} == {"classification"}
    assert sorted(s.name for s in list_specs("matbench") if s.task_type == "classification") == [
        "matbench_expt_is_metal", "matbench_glass", "matbench_mp_is_metal"]
    ref = (paths.shared_dir() / "reference_results.csv") if paths.shared_dir() else None
    if ref and ref.is_file():
        published = pd.read_csv(ref)
        assert set(published.loc[published.suite == "crabnet28", "dataset"]) == set(SUITES["crabnet28"])
        assert set(published.loc[published.suite == "matbench", "dataset"]) <= set(SUITES["matbench"])


def test_resolve_datasets():
    assert resolve_datasets("crabnet28") == SUITES["crabnet28"]
    assert resolve_datasets("matbench_steels, castelli,matbench_steels") == ["matbench_steels", "castelli"]
    assert resolve_datasets("oqmd_bandgap") == ["OQMD_Bandgap"]
    assert len(resolve_datasets("all")) == len(CATALOG) == 41 + len(SUITES["structures"]) - 1 + len(SUITES["jarvis"])
    with pytest.raises(KeyError, match="castelli"):  # the message lists the known names
        resolve_datasets("castelli,nope")


# ---------------------------------------------------------------- crabnet28


def test_fixed_split_sizes(wheel):
    ds = load_dataset("aflow__ael_bulk_modulus_vrh")
    assert ds.split("fixed").sizes() == (3428, 732, 736)
    with zipfile.ZipFile(wheel) as zf:  # = wc -l minus header of each member
        lines = [zf.read(m).decode().strip().count("\n") for m in crabnet_wheel.members(ds.name)]
    assert list(ds.split("fixed").sizes()) == lines
    assert ds.frame["id"].is_unique and ds.frame["id"].iloc[0] == "aflow__ael_bulk_modulus_vrh:0"
    assert list(ds.frame.columns) == ["id", "formula", "target"] and np.isfinite(ds.targets).all()
    assert len(ds.sha256) == 64 and ds.sha256 == load_dataset(ds.name).sha256
    assert ds.sha256 != load_dataset("aflow__ael_shear_modulus_vrh").sha256
    assert (ds.unit, ds.suite, ds.dropped) == ("GPa", "crabnet28", 0)


def test_crabnet_cv_castelli(wheel):
    ds = load_dataset("castelli")
    assert [s.name for s in ds.splits] == [f"fold{k}" for k in range(5)]
    formulas = ds.frame["formula"].to_numpy()
    all_formulas = set(formulas)
    used = np.zeros(len(ds), dtype=bool)
    for s in ds.splits:
        parts = np.concatenate([s.train, s.val, s.test])
        used[parts] = True
        assert len(np.unique(parts)) == len(parts)  # parts disjoint
        assert sorted(formulas[parts]) == sorted(all_formulas)  # each fold: every formula once
        assert not set(formulas[s.test]) & set(formulas[np.concatenate([s.train, s.val])])
    tests = np.concatenate([s.test for s in ds.splits])
    assert len(np.unique(tests)) == len(tests)  # fold test parts disjoint
    assert len(set(formulas[tests])) == len(tests)
    assert used.all()  # the frame is exactly the union of the fold files' rows
    # CrabNet's castelli folds test only formulas that were never split across parts
    assert len(tests) == 2255 and len(all_formulas) == 9646


def test_crabnet_cv_test_parts_cover_rows_when_formulas_unique(wheel):
    ds = load_dataset("steels_yield")
    tests = np.sort(np.concatenate([s.test for s in ds.splits]))
    assert len(ds) == 312 and np.array_equal(tests, np.arange(312))


def test_read_wheel_csv(wheel):
    mat2vec = read_wheel_csv("element_properties/mat2vec.csv")
    assert mat2vec.shape[1] == 201 and len(mat2vec) > 80
    assert read_wheel_csv("crabnet/data/element_properties/onehot.csv").shape[0] > 80
    with pytest.raises(DataError, match="mat2vec.csv"):
        read_wheel_csv("element_properties/nope.csv")


def test_wheel_sha_mismatch_removes_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    bad = tmp_path / "crabnet" / crabnet_wheel.WHEEL_NAME
    bad.parent.mkdir()
    bad.write_bytes(b"not the wheel")
    with pytest.raises(DataError, match="sha256.*removed"):
        crabnet_wheel.wheel_path()
    assert not bad.exists()


def fake_wheel(path, files):
    with zipfile.ZipFile(path, "w") as zf:
        for part, text in files.items():
            zf.writestr(f"crabnet/data/benchmark_data/aflow__Egap/{part}.csv", text)
    return path


GOOD = "formula,target\nFe2O3,1.0\nNaCl,2.0\nSiO2,3.5\n"


def test_empty_split_part(tmp_path):
    wheel = fake_wheel(tmp_path / "w.whl", {"train": GOOD, "val": "formula,target\n", "test": GOOD})
    with pytest.raises(DataError, match="split 'fixed' has an empty val part"):
        crabnet_wheel.load_crabnet("aflow__Egap", wheel=wheel)


def test_bad_member_row_named(tmp_path):
    wheel = fake_wheel(tmp_path / "w.whl", {"train": GOOD, "val": GOOD, "test": "formula,target\nNaCl,1\nXx2O,2\n"})
    with pytest.raises(DataError) as err:
        crabnet_wheel.load_crabnet("aflow__Egap", wheel=wheel)
    assert "crabnet/data/benchmark_data/aflow__Egap/test.csv, data row 2: unknown element 'Xx'" in str(err.value)
    ds = crabnet_wheel.load_crabnet("aflow__Egap", wheel=wheel, drop_invalid=True)
    assert ds.dropped == 1 and ds.split("fixed").sizes() == (3, 3, 1)
    assert "aflow__Egap:7" not in set(ds.frame["id"]) and "aflow__Egap:6" in set(ds.frame["id"])


# ---------------------------------------------------------------- matbench


@needs_shared
def test_matbench_steels_official_folds():
    ds = load_dataset("matbench_steels")
    assert len(ds) == 312 and ds.suite == "matbench" and ds.unit == "MPa"
    assert folds_of(ds) == official("matbench_steels")
    for s in ds.splits:
        parts = np.concatenate([s.train, s.val, s.test])
        assert np.array_equal(np.sort(parts), np.arange(len(ds)))
        assert len(s.val) == round(0.1 * (len(s.train) + len(s.val)))
    assert "default_rng(0)" in ds.notes["val_split"]


@needs_shared
@pytest.mark.parametrize("name", ["matbench_steels", "matbench_jdft2d", "matbench_expt_is_metal"])
def test_kfold_recomputation_equals_official(name):
    spec = CATALOG[name]
    rows = read_matbench_csv(MB / f"{name}.csv.gz", spec.target)
    ids = rows["mbid"].to_numpy()
    computed = [ids[t].tolist() for t in official_folds(ids, rows["target"], spec.task_type)]
    assert computed == official(name)


@needs_shared
def test_matbench_classification_targets():
    ds = load_dataset("matbench_expt_is_metal")
    assert ds.task_type == "classification" and set(np.unique(ds.targets)) == {0.0, 1.0}
    assert folds_of(ds) == official("matbench_expt_is_metal")


def write_json_gz(path, doc):
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))
    return path


def steels_doc(n=None):
    rows = read_matbench_csv(MB / "matbench_steels.csv.gz", "yield strength")[: n or None]
    return rows, {"index": rows["mbid"].tolist(), "columns": ["composition", "yield strength"],
                  "data": [[c, float(v)] for c, v in zip(rows["composition"], rows["target"])]}


@needs_shared
def test_json_layout_compositions(tmp_path):
    rows, doc = steels_doc(30)
    got = read_matbench_json(write_json_gz(tmp_path / "matbench_steels.json.gz", doc), "yield strength")
    assert got["mbid"].tolist() == rows["mbid"].tolist()
    assert got["composition"].tolist() == rows["composition"].tolist()
    assert np.allclose(got["target"].astype(float), rows["target"].astype(float))


@needs_shared
def test_json_layout_structures(tmp_path):
    from pymatgen.core import Composition

    src = DATA / "structures" / "matbench_phonons.json.gz"
    if not src.is_file():
        pytest.skip("structures/matbench_phonons.json.gz absent")
    doc = json.loads(gzip.decompress(src.read_bytes()))
    small = {"index": doc["index"][:30], "columns": doc["columns"], "data": doc["data"][:30]}
    got = read_matbench_json(write_json_gz(tmp_path / "p.json.gz", small), "last phdos peak")
    ref = read_matbench_csv(MB / "matbench_phonons.csv.gz", "last phdos peak")[:30]
    assert got["mbid"].tolist() == ref["mbid"].tolist()
    assert all(Composition(a) == Composition(b) for a, b in zip(got["composition"], ref["composition"]))


@needs_shared
def test_public_download_path(tmp_path, monkeypatch):
    """No local data: download matbench's json.gz, parse it, compute the folds = official ones."""
    _, doc = steels_doc()
    payload = gzip.compress(json.dumps(doc).encode())
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return io.BytesIO(payload)

    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(matbench.urllib.request, "urlopen", fake_urlopen)
    ds = load_dataset("matbench_steels")
    assert calls == ["https://ml.materialsproject.org/projects/matbench_steels.json.gz"]
    assert ds.notes["folds"].startswith("computed")
    assert folds_of(ds) == official("matbench_steels")
    monkeypatch.delenv("HARNESS_DATA_DIR")
    local = load_dataset("matbench_steels")
    pd.testing.assert_frame_equal(ds.frame, local.frame)
    assert [s.sizes() for s in ds.splits] == [s.sizes() for s in local.splits]
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path / "empty"))
    assert fetch(["matbench_steels"])["matbench_steels"] == tmp_path / "cache" / "matbench" / "matbench_steels.json.gz"
    assert len(calls) == 1  # cached after the first download


def test_download_offline_error(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(matbench.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="could not download https://ml.materialsproject.org.*HARNESS_DATA_DIR"):
        load_dataset("matbench_glass")
    assert not list((tmp_path / "cache" / "matbench").iterdir())  # no partial file left


def test_matbench_duplicate_mbid(tmp_path, monkeypatch):
    folder = tmp_path / "matbench_v0.1"
    folder.mkdir()
    lines = ["mbid,composition,yield strength"] + [f"mb-steels-{i:03d},Fe1C0.0{i},{1000 + i}" for i in range(1, 12)]
    lines.append("mb-steels-004,Fe1Ni0.1,999")
    (folder / "matbench_steels.csv.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path))
    dup = r"matbench_steels.csv.gz, data row 12: duplicate id 'mb-steels-004' \(first at data row 4\)"
    with pytest.raises(DataError, match=dup):
        load_dataset("matbench_steels")
    ds = load_dataset("matbench_steels", drop_invalid=True)
    assert ds.dropped == 1 and len(ds) == 11


# ---------------------------------------------------------------- custom CSV and validation


def write_csv(tmp_path, bad_line, header="formula,target", name="mine.csv", n_good=10):
    lines = [header] + [f"Fe{i + 1}O{i + 2},{i * 0.5}" for i in range(n_good)]
    lines.insert(4, bad_line)  # data row 4
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("bad_line, what", [
    ("Fe2O3abc,1.0", "unparsable formula 'Fe2O3abc'"),
    ("Xx2O,1.0", "unknown element 'Xx' in formula 'Xx2O'"),
    (",1.0", "missing formula"),
    ("Fe0,1.0", "formula 'Fe0' has no elements with a positive amount"),
    ("NaCl,nan", "target is NaN (value 'nan')"),
    ("NaCl,inf", "target is infinite (value 'inf')"),
    ("NaCl,", "missing target"),
    ("NaCl,abc", "non-numeric target 'abc'"),
])
def test_bad_rows_raise_with_file_and_row(tmp_path, bad_line, what):
    path = write_csv(tmp_path, bad_line)
    with pytest.raises(DataError) as err:
        load_custom(path, "target")
    msg = str(err.value)
    assert f"{path}, data row 4: {what}" in msg and "--drop-invalid" in msg


def test_duplicate_ids(tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("id,formula,target\n" + "".join(f"m{i},NaCl,{i}\n" for i in range(10)) + "m3,KCl,1\n")
    with pytest.raises(DataError, match=r"data row 11: duplicate id 'm3' \(first at data row 4\)"):
        load_custom(path, "target", id_col="id")


def test_missing_column_lists_present(tmp_path):
    path = write_csv(tmp_path, "NaCl,1.0", header="composition,target")
    listed = r"mine.csv: missing column\(s\) \['formula'\]; columns present: \['composition', 'target'\]"
    with pytest.raises(DataError, match=listed):
        load_custom(path, "target")
    with pytest.raises(DataError, match="missing column.*'band_gap'"):
        load_custom(path, "band_gap", formula_col="composition")


def test_gz_file_that_is_not_gzip_is_named(tmp_path):
    path = tmp_path / "mine.csv.gz"
    path.write_text("formula,target\nNaCl,1\n")  # plain text under a .gz name
    with pytest.raises(DataError, match=r"mine.csv.gz: the name ends in .gz but the file is not valid gzip"):
        load_custom(path, "target")
    gz = tmp_path / "ok.csv.gz"
    gz.write_bytes(gzip.compress(("formula,target\n" + "".join(f"Fe{i + 1}O,{i}\n" for i in range(30))).encode()))
    ds = load_custom(gz, "target")
    assert len(ds.frame) == 30 and ds.frame["target"].iloc[29] == 29.0


def test_custom_empty_split(tmp_path):
    path = tmp_path / "tiny.csv"
    path.write_text("formula,target\nNaCl,1\nKCl,2\n")
    with pytest.raises(DataError, match="empty val part.*at least 3"):
        load_custom(path, "target")


def test_drop_invalid_drops_exactly_bad_rows(tmp_path, caplog):
    lines = ["formula,target"] + [f"Fe{i + 1}O{i + 2},{i}" for i in range(20)]
    lines[3:3] = ["Xx2O,1", "NaCl,nan", "Fe2O3abc,2"]  # data rows 3, 4, 5
    path = tmp_path / "dirty.csv.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with caplog.at_level(logging.WARNING, logger="harness.data"):
        ds = load_custom(path, "target", drop_invalid=True)
    assert ds.dropped == 3 and len(ds) == 20 and ds.name == "dirty"
    assert "dropped 3 invalid row(s)" in caplog.text and "data row 3: unknown element 'Xx'" in caplog.text
    assert not {"dirty:3", "dirty:4", "dirty:5"} & set(ds.frame["id"])
    assert ds.targets.tolist() == [float(i) for i in range(20)]


def test_custom_random_split(tmp_path):
    path = write_csv(tmp_path, "NaCl,1.0", n_good=49)
    ds = load_custom(path, "target", seed=3)
    s = ds.split("random")
    assert (ds.suite, ds.name, ds.split_scheme) == ("custom", "mine", "random 80/10/10 (seed 3)")
    assert s.sizes() == (40, 5, 5)
    assert np.array_equal(np.sort(np.concatenate([s.train, s.val, s.test])), np.arange(50))
    again = load_custom(path, "target", seed=3).split("random")
    assert np.array_equal(s.test, again.test)
    assert not np.array_equal(s.test, load_custom(path, "target", seed=4).split("random").test)


# ---------------------------------------------------------------- table, counts, fetch


@needs_shared
def test_data_table(wheel):
    table = data_table()
    assert list(table.columns) == ["name", "suite", "inputs", "rows", "target", "unit", "split"]
    assert table.suite.value_counts().to_dict() == {"crabnet28": 28, "matbench": 13, "structures": 7, "jarvis": 10}
    inputs = dict(zip(table.name, table.inputs))
    assert (inputs["matbench_phonons"], inputs["matbench_log_gvrh"], inputs["matbench_steels"], inputs["castelli"]) == (
        "composition, structure", "composition, structure (downloaded)", "composition", "composition")
    rows = dict(zip(table.name, table.rows))
    assert rows["matbench_steels"] == 312 and rows["aflow__ael_bulk_modulus_vrh"] == 4896
    assert rows["castelli"] == len(load_dataset("castelli"))
    assert len(data_table("matbench")) == 13
    assert count_rows("matbench_mp_e_form") == 132752


@needs_shared
def test_fetch(wheel):
    got = fetch(["aflow__Egap", "matbench_steels"])
    assert got["aflow__Egap"] == wheel and got["matbench_steels"].is_file()
