"""Crystal-structure datasets: the ``structures`` and ``jarvis`` suites, custom structure files,
and the structures of ``matbench_phonons``.

Every loader returns a :class:`Dataset` whose frame has ``id``, ``formula`` (from the
structure, so composition models run on the same rows), ``target`` and ``structure``
(pymatgen ``Structure``). Sources:

* ``data_dir()/structures/{mp_2018_subset,mp_elasticity}.csv.gz``: one CIF per row;
* the PyPI sdist ``matminer==0.4.1`` (fetched into the cache like the crabnet wheel, sha256
  pinned): ``flla_2015.csv`` (``structure`` = pymatgen dicts as Python literals, read with
  ``ast.literal_eval``: never ``eval``) and ``elastic_tensor.csv`` (its ``poscar`` column: the
  explicit P1 cell; the ``structure`` column there is a symmetrised CIF of the same crystal);
* JARVIS-DFT ``dft_3d`` through ``jarvis-tools`` (a list of dicts whose ``atoms`` hold
  ``lattice_mat``/``coords``/``elements``/``cartesian``), or a local JSON file of that layout;
* ``matbench_phonons``: matbench's json layout (``data_dir()/structures/matbench_phonons.json.gz``
  or the public ``matbench_phonons.json.gz``), attached to the composition dataset by mbid so that
  the official folds and the leaderboard row are shared.

Parsing is the slow part (CIF: ~2 ms per structure), so it runs in a process pool with a
progress bar and is cached as gzipped JSON (lattice, species, fractional coordinates per structure;
never pickle) under ``cache_dir()/structures/``, keyed by the source's sha256, the column and the format.

Validation, per structure, with the entry's file and id in the message (or dropped with a count
under ``drop_invalid``): it must parse, be ordered (no partial occupancies), have no two atoms
closer than ``MIN_DISTANCE`` (0.5 Å, periodic images included) and no atom without a neighbour
within ``cutoff`` (8 Å by default, the radius of the graph featurizers).
"""

from __future__ import annotations

import ast
import functools
import gzip
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from harness.data.catalog import CATALOG
from harness.data.custom import _stem, random_split
from harness.data.dataset import DataError, Dataset, Split, read_source
from harness.data.fetch import cached_file, sha256_file
from harness.data.validate import SHOWN, check_splits, require_columns, validate_rows
from harness.paths import cache_dir, data_dir

log = logging.getLogger("harness.data")

MIN_DISTANCE = 0.5  # Å: closer atoms are a broken structure (DFT relaxations never get there)
CUTOFF = 8.0  # Å: an atom with no neighbour this close would be isolated in a radius graph
SPLIT_SEED = 0
PARSE_FORMAT = 1  # bump when the parsed-structure cache layout or the checks change
FORMATS = ("auto", "cif", "poscar", "dict", "literal", "json", "jarvis")
PARALLEL_MIN = 2000  # fewer parse faster in-process than spawned workers import pymatgen + pandas

MATMINER_VERSION = "0.4.1"
SDIST_NAME = f"matminer-{MATMINER_VERSION}.tar.gz"
SDIST_SHA256 = "26d7e6c023e19bbd7ba5e87b9d4d299c92a523197a8490541fe524d5c5f39459"
SDIST_PREFIX = f"matminer-{MATMINER_VERSION}/matminer/datasets/"
PYPI_JSON = f"https://pypi.org/pypi/matminer/{MATMINER_VERSION}/json"
MATBENCH_STRUCTURE_URL = "https://ml.materialsproject.org/projects/{name}.json.gz"


@dataclass(frozen=True)
class Source:
    """Where a structure set's rows come from and which columns hold what."""

    where: str  # "data_dir" (file under data_dir()/structures) or "sdist" (member of the matminer sdist)
    file: str
    id_col: str
    structure_col: str
    fmt: str


SOURCES = {
    "mp_2018_subset": Source("data_dir", "mp_2018_subset.csv.gz", "material_id", "cif", "cif"),
    "mp_elasticity": Source("data_dir", "mp_elasticity.csv.gz", "material_id", "cif", "cif"),
    "flla_2015": Source("sdist", "flla_2015.csv", "material_id", "structure", "literal"),
    "elastic_tensor_2015": Source("sdist", "elastic_tensor.csv", "material_id", "poscar", "poscar"),
}


# ----------------------------------------------------------------------------- parsing one entry


def detect_format(value: object) -> str:
    """cif, poscar, dict, jarvis, json or literal, from the value itself."""
    if isinstance(value, dict):
        return "jarvis" if "lattice_mat" in value else "dict"
    text = str(value).lstrip()
    if text.startswith("{"):
        try:
            json.loads(text)
            return "json"
        except ValueError:
            return "literal"
    if "_cell_length_a" in text or text.startswith("data_") or "\ndata_" in text:
        return "cif"
    return "poscar"


def jarvis_to_structure(atoms: dict):
    """A jarvis ``atoms`` dict -> pymatgen Structure (what ``Atoms.pymatgen_converter`` does,
    without its habit of printing and returning None on errors)."""
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(atoms["lattice_mat"]), atoms["elements"], atoms["coords"],
                     coords_are_cartesian=bool(atoms.get("cartesian", False)))


def parse_structure(value: object, fmt: str = "auto"):
    """One structure from a CIF / POSCAR string, a pymatgen or jarvis dict, or their text forms."""
    from pymatgen.core import Structure
    from pymatgen.io.cif import CifParser

    if fmt == "auto":
        fmt = detect_format(value)
    if fmt == "cif":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns about rounded occupancies etc.
            # primitive=False: keep the cell as given (the data set's own cell)
            return CifParser.from_str(str(value)).parse_structures(primitive=False)[0]
    if fmt == "poscar":
        return Structure.from_str(str(value), fmt="poscar")
    if fmt in ("json", "literal"):
        value = json.loads(value) if fmt == "json" else ast.literal_eval(str(value))  # never eval
        if not isinstance(value, dict):
            raise ValueError(f"expected a dict, got {type(value).__name__}")
        fmt = "jarvis" if "lattice_mat" in value else "dict"
    if fmt == "jarvis":
        return jarvis_to_structure(value)
    if fmt == "dict":
        return Structure.from_dict(value)
    raise ValueError(f"unknown structure format {fmt!r}; known: {', '.join(FORMATS)}")


def _nearest_neighbour_distances(structure) -> np.ndarray:
    """Per site, the distance to its nearest other atom or periodic image (inf beyond 16 Å)."""
    nn = np.full(len(structure), np.inf)
    centre, _, _, dist = structure.get_neighbor_list(4.0)  # most atoms have a neighbour within 4 Å
    np.minimum.at(nn, centre, dist)
    for r in (8.0, 16.0):  # grow the search only for the others
        missing = np.flatnonzero(~np.isfinite(nn))
        if len(missing) == 0:
            break
        centre, point, _, dist = structure.get_neighbor_list(
            r, sites=[structure[i] for i in missing], exclude_self=False)
        # centre indexes `missing`, point the structure: drop each site's zero-distance self pair
        # ourselves (pymatgen's exclude_self compares the two index spaces directly)
        keep = ~((point == missing[centre]) & (dist < 1e-8))
        centre, dist = centre[keep], dist[keep]
        if len(centre):
            found = np.full(len(missing), np.inf)
            np.minimum.at(found, centre, dist)
            nn[missing] = found
    return nn


def to_record(structure) -> dict:
    """What graphs need of a structure, as JSON: lattice, species, fractional coordinates.

    Rebuilding from this is ~10x faster than ``Structure.from_dict`` (which decodes every site
    property through monty); site properties (magmom, forces) and charge are not kept.
    """
    return {"lattice": structure.lattice.matrix.tolist(), "species": [str(sp) for sp in structure.species],
            "coords": structure.frac_coords.tolist()}


def from_record(record: dict):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice(record["lattice"]), record["species"], record["coords"])


def _parse_entry(args: tuple[object, str]) -> tuple[dict | None, str | None, float | None, float | None]:
    """Worker: (record or None, parse problem, smallest interatomic distance, largest NN distance)."""
    value, fmt = args
    try:
        s = parse_structure(value, fmt)
        if len(s) == 0:
            raise ValueError("no atoms")
    except Exception as exc:  # parsers raise many types on bad input
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return None, f"structure does not parse ({type(exc).__name__}: {message})", None, None
    if not s.is_ordered:
        return s.as_dict(), "disordered structure (partial occupancies); graph featurizers need ordered sites", None, None
    nn = _nearest_neighbour_distances(s)
    max_nn = float(nn.max())
    return to_record(s), None, float(nn.min()), (max_nn if math.isfinite(max_nn) else None)


def structure_problem(parse_problem: str | None, min_dist: float | None, max_nn: float | None,
                      cutoff: float = CUTOFF, min_distance: float = MIN_DISTANCE) -> str | None:
    """What is wrong with one parsed entry under the given thresholds, or None."""
    if parse_problem:
        return parse_problem
    if min_dist is not None and min_dist < min_distance:
        return (f"overlapping atoms: two atoms {min_dist:.3f} Å apart (periodic images included; "
                f"minimum {min_distance} Å)")
    if max_nn is None or max_nn > cutoff:
        far = "none within 16 Å" if max_nn is None else f"nearest at {max_nn:.2f} Å"
        return f"isolated atom: an atom has no neighbour within the {cutoff} Å cutoff ({far})"
    return None


# ----------------------------------------------------------------------------- parsing many, cached


@dataclass
class Parsed:
    """Parsed structures of one source column, aligned with its rows."""

    structures: list  # Structure or None
    problems: list[str | None]
    min_dist: list[float | None]
    max_nn: list[float | None]

    def problems_at(self, cutoff: float = CUTOFF) -> list[str | None]:
        return [structure_problem(p, a, b, cutoff) for p, a, b in zip(self.problems, self.min_dist, self.max_nn)]


def _workers(n: int) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))  # respects taskset / Ray's CPU pinning
    except AttributeError:
        cpus = os.cpu_count() or 1
    return 1 if n < PARALLEL_MIN else max(1, min(cpus, n // (PARALLEL_MIN // 2)))


def _progress(iterable, total: int, description: str):
    from harness.console import progress

    return progress(iterable, total, description, min_total=500)


def parse_many(values: list, fmt: str, *, label: str = "structures") -> tuple[Parsed, list]:
    """Parse (in a process pool when there are many) with a progress bar; no caching.
    Returns the parsed structures and their JSON records."""
    jobs = [(v, fmt) for v in values]
    n_proc = _workers(len(jobs))
    if n_proc == 1:
        results = list(_progress(map(_parse_entry, jobs), len(jobs), f"parsing {label}"))
    else:
        # spawn, not fork: the caller may hold threads (Ray, torch) that fork would copy mid-lock
        with get_context("spawn").Pool(n_proc) as pool:
            results = list(_progress(pool.imap(_parse_entry, jobs, chunksize=32), len(jobs),
                                     f"parsing {len(jobs)} {label} ({n_proc} processes)"))
    records, problems, mins, maxs = (list(x) for x in zip(*results)) if results else ([], [], [], [])
    return Parsed([_structure(r) for r in records], problems, mins, maxs), records


def _structure(record: dict | None):
    """A record, or the full as_dict of a disordered structure (kept only to report it)."""
    from pymatgen.core import Structure

    if record is None:
        return None
    return Structure.from_dict(record) if "sites" in record else from_record(record)


def parse_cached(values: list, fmt: str, *, source_sha256: str, column: str, label: str) -> Parsed:
    """``parse_many`` behind an on-disk cache keyed by the source bytes, column and format."""
    key = f"{source_sha256[:24]}-{column}-{fmt}-v{PARSE_FORMAT}"
    safe = re.sub(r"[^\w.-]+", "_", f"{label}-{key}")  # labels and columns come from user files
    path = cache_dir() / "structures" / f"{safe}.json.gz"
    if path.is_file():
        try:
            doc = json.loads(gzip.decompress(path.read_bytes()))
            if doc.get("source_sha256") == source_sha256 and len(doc["structures"]) == len(values):
                return Parsed([_structure(r) for r in doc["structures"]], doc["problems"], doc["min_dist"],
                              doc["max_nn"])
        except (OSError, ValueError, KeyError, EOFError) as exc:
            log.warning("structure cache %s unreadable (%s); parsing again", path, exc)
    parsed, records = parse_many(values, fmt, label=label)
    doc = {"format": PARSE_FORMAT, "source_sha256": source_sha256, "column": column, "fmt": fmt,
           "structures": records,
           "problems": parsed.problems, "min_dist": parsed.min_dist, "max_nn": parsed.max_nn}
    _write_atomic(path, gzip.compress(json.dumps(doc).encode(), compresslevel=3))
    return parsed


def _write_atomic(path: Path, data: bytes) -> None:
    """Concurrent loaders of one dataset never see a half-written cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(partial, 0o644)
    os.replace(partial, path)


# ----------------------------------------------------------------------------- the matminer sdist


def _download_sdist(dest_dir: Path) -> Path:
    """pip first (it honours the user's index configuration), else PyPI's JSON API."""
    tmp = Path(tempfile.mkdtemp(prefix="download-", dir=dest_dir))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
           f"matminer=={MATMINER_VERSION}", "-d", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    got = tmp / SDIST_NAME
    if proc.returncode == 0 and got.is_file():
        return got
    # pip download of an sdist also prepares its metadata (a build step); fetch the file directly.
    try:
        with urllib.request.urlopen(PYPI_JSON, timeout=60) as resp:
            urls = [u for u in json.load(resp)["urls"] if u["packagetype"] == "sdist"]
        with urllib.request.urlopen(urls[0]["url"], timeout=300) as resp, open(got, "wb") as out:
            shutil.copyfileobj(resp, out)
        return got
    except (OSError, ValueError, KeyError, IndexError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise DataError(
            f"could not download matminer=={MATMINER_VERSION} (its sdist holds flla_2015 and "
            f"elastic_tensor_2015): `{' '.join(cmd)}` said\n{tail}\nand {PYPI_JSON} failed ({exc}). "
            f"Check the network / package index, or put {SDIST_NAME} into {dest_dir} yourself."
        ) from None


def sdist_path(download: bool = True) -> Path | None:
    """The verified sdist in ``cache_dir()/matminer``, fetched once; None if absent and not downloading."""
    return cached_file(cache_dir() / "matminer", SDIST_NAME, SDIST_SHA256, _download_sdist, fetch=download)


def read_sdist_member(name: str, sdist: Path | None = None) -> bytes:
    """Bytes of ``matminer/datasets/<name>`` inside the sdist."""
    with tarfile.open(sdist or sdist_path(), "r:gz") as tf:
        try:
            return tf.extractfile(SDIST_PREFIX + name).read()
        except KeyError:
            raise DataError(f"{SDIST_PREFIX + name} is not in {SDIST_NAME}") from None


def _read_matminer_csv(data: bytes) -> pd.DataFrame:
    """matminer 0.4's dataset CSVs start with a ``# ref:`` line."""
    skip = 1 if data.startswith(b"#") else 0
    return pd.read_csv(io.BytesIO(data), skiprows=skip, dtype=str, keep_default_na=False)


# ----------------------------------------------------------------------------- assembling datasets


def _source_bytes(src: Source) -> tuple[bytes, str]:
    """Raw bytes (decompressed) of a catalog source and where they came from."""
    if src.where == "sdist":
        sdist = sdist_path()
        return read_sdist_member(src.file, sdist), f"{sdist.name}:{SDIST_PREFIX}{src.file}"
    base = data_dir()
    path = base / "structures" / src.file if base else None
    if path is None or not path.is_file():
        raise DataError(f"{src.file} not found: point HARNESS_DATA_DIR at a folder holding structures/{src.file} "
                        f"(as ../shared/data does); see ../shared/data/README.md for its public origin")
    return read_source(path)[1], str(path)


def _assemble(name: str, *, ids, targets, parsed: Parsed, where: str, sha: str, drop_invalid: bool,
              cutoff: float, suite: str, target: str, unit: str, source: str, split_scheme: str,
              notes: dict, check_ids: bool = True, seed: int = SPLIT_SEED) -> Dataset:
    """Validate rows + structures, split 80/10/10 (seeded) and build the Dataset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen: "no Pauling electronegativity for He" when ordering a formula
        formulas = [s.composition.formula.replace(" ", "") if s is not None else None for s in parsed.structures]
    raw = pd.DataFrame({
        "id": [str(i) for i in ids],
        "formula": formulas,
        "target": list(targets), "where": where, "row": np.arange(1, len(ids) + 1),
        # the id goes into the message: validate_rows names file and data row, users search by id
        "problem": [f"id {i!r}: {p}" if p else None for i, p in zip(ids, parsed.problems_at(cutoff))],
        "structure": parsed.structures,
    })
    rows, dropped = validate_rows(raw, dataset=name, drop_invalid=drop_invalid, check_ids=check_ids)
    frame = rows[["id", "formula", "target", "structure"]].reset_index(drop=True)
    split = random_split(len(frame), seed)
    check_splits(name, [split], hint=f"{len(frame)} usable structure(s); a random 80/10/10 split needs at least 3.")
    if dropped:
        sha = hashlib.sha256(f"{sha}:drop_invalid:{cutoff}".encode()).hexdigest()
    notes = {**notes, "split": f"numpy default_rng({seed}).permutation, 80/10/10", "split_seed": seed,
             "checks": f"parses, ordered, no atoms < {MIN_DISTANCE} Å apart, "
                       f"every atom has a neighbour within {cutoff} Å"}
    return Dataset(name=name, suite=suite, target=target, unit=unit, frame=frame, splits=[split], sha256=sha,
                   source=source, split_scheme=split_scheme, dropped=dropped, notes=notes)


def load_structure_dataset(name: str, *, drop_invalid: bool = False, cutoff: float = CUTOFF,
                           source: str | Path | None = None) -> Dataset:
    """Load one dataset of the ``structures`` or ``jarvis`` suite.

    ``source`` (jarvis only): a local JSON(.gz) file in jarvis's list-of-dicts layout instead of
    downloading ``dft_3d`` with jarvis-tools.
    """
    spec = CATALOG[name]
    group, prop = name.split(":", 1)
    if group == "jarvis_dft_3d":
        return load_jarvis(prop, path=source, drop_invalid=drop_invalid, cutoff=cutoff)
    src = SOURCES[group]
    data, where = _source_bytes(src)
    sha = hashlib.sha256(data).hexdigest()
    df = (pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False) if src.where == "data_dir"
          else _read_matminer_csv(data))
    require_columns(list(df.columns), (src.id_col, src.structure_col, spec.target), where)
    parsed = parse_cached(df[src.structure_col].tolist(), src.fmt, source_sha256=sha,
                          column=src.structure_col, label=group)
    return _assemble(name, ids=df[src.id_col], targets=df[spec.target], parsed=parsed, where=Path(where).name,
                     sha=sha, drop_invalid=drop_invalid, cutoff=cutoff, suite=spec.suite, target=spec.target,
                     unit=spec.unit, source=f"{where} ({spec.source})", split_scheme=spec.split_scheme,
                     notes={"source_file": where, "structure_column": src.structure_col, "format": src.fmt})


def count_rows(name: str) -> int | None:
    """Rows of the local source (unvalidated) without downloading; None if not local."""
    group = name.split(":", 1)[0]
    if group == "jarvis_dft_3d":
        return None  # would mean loading 94k entries; jarvis-tools downloads on first load
    src = SOURCES[group]
    if src.where == "sdist":
        path = sdist_path(download=False)
    else:
        path = data_dir() / "structures" / src.file if data_dir() else None
    if path is None or not path.is_file():
        return None
    return _count(str(path), path.stat().st_mtime, src.file)


@functools.lru_cache(maxsize=16)
def _count(path: str, mtime: float, member: str) -> int:
    if path.endswith(".tar.gz"):
        return len(_read_matminer_csv(read_sdist_member(member, Path(path))))
    return len(pd.read_csv(path, usecols=[0]))  # CIFs span lines: let the CSV parser count rows


# ----------------------------------------------------------------------------- JARVIS-DFT


def _jarvis_entries(path: str | Path | None) -> tuple[list[dict], str, str]:
    """(entries, sha256, where): a local JSON file, or dft_3d through jarvis-tools into the cache."""
    if path is not None:
        path = Path(path)
        _, data = read_source(path)
        try:
            entries = json.loads(data)
        except ValueError as exc:
            raise DataError(f"{path}: not readable as JSON ({exc})") from None
        return entries, hashlib.sha256(data).hexdigest(), str(path)
    try:
        from jarvis.db.figshare import data as jarvis_data, get_db_info
    except ImportError:
        raise DataError("jarvis_dft_3d needs jarvis-tools: pip install jarvis-tools") from None
    store = cache_dir() / "jarvis"
    store.mkdir(parents=True, exist_ok=True)
    try:
        entries = jarvis_data("dft_3d", store_dir=str(store))
    except Exception as exc:  # requests / zipfile errors when offline
        raise DataError(f"could not fetch JARVIS dft_3d with jarvis-tools ({type(exc).__name__}: {exc}); "
                        f"it needs internet access, or pass a local JSON file of the same layout") from None
    zipped = store / (get_db_info()["dft_3d"][1] + ".zip")
    return entries, sha256_file(zipped), str(zipped)


def load_jarvis(prop: str, *, path: str | Path | None = None, drop_invalid: bool = False,
                cutoff: float = CUTOFF) -> Dataset:
    """``jarvis_dft_3d:<prop>``. Entries whose property is missing ("na") are not rows of this
    dataset (JARVIS computed each property for a different subset); their count is in notes."""
    name = f"jarvis_dft_3d:{prop}"
    spec = CATALOG.get(name)
    entries, sha, where = _jarvis_entries(path)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DataError(f"{where}: expected a JSON list of objects (jarvis layout)")
    have = [e for e in entries if prop in e and e[prop] not in ("na", None, "")]
    if entries and not any(prop in e for e in entries):
        raise DataError(f"{where}: no entry has property {prop!r}; keys of the first: {sorted(entries[0])}")
    for k, e in enumerate(have):
        if "atoms" not in e:
            raise DataError(f"{where}: entry {e.get('jid', k)!r} has no 'atoms'")
    parsed = parse_cached([e["atoms"] for e in have], "jarvis", source_sha256=sha, column=f"atoms[{prop}]",
                          label="jarvis_dft_3d")
    return _assemble(name, ids=[e.get("jid", f"jarvis:{k}") for k, e in enumerate(have)],
                     targets=[e[prop] for e in have], parsed=parsed, where=Path(where).name, sha=sha,
                     drop_invalid=drop_invalid, cutoff=cutoff, suite="jarvis", target=prop,
                     unit=spec.unit if spec else "", source=where,
                     split_scheme=spec.split_scheme if spec else f"random 80/10/10 (seed {SPLIT_SEED})",
                     notes={"source_file": where, "missing_target": len(entries) - len(have)})


# ----------------------------------------------------------------------------- custom files


def load_custom_structures(path: str | Path, target: str, structure_col: str = "structure", fmt: str = "auto",
                           id_col: str | None = None, *, drop_invalid: bool = False, cutoff: float = CUTOFF,
                           seed: int = SPLIT_SEED) -> Dataset:
    """A user's CSV or JSON(.gz) with a structure column (CIF, POSCAR or pymatgen dict; ``fmt``
    "auto" detects per entry) and a numeric target column. JSON: a list of records, or pandas'
    "columns"/"split" orient. Split: seeded random 80/10/10 (``seed``), recorded."""
    path = Path(path)
    data, text = read_source(path)
    if fmt not in FORMATS:
        raise DataError(f"unknown structure format {fmt!r}; known: {', '.join(FORMATS)}")
    is_json = path.name.removesuffix(".gz").endswith(".json")
    try:
        if is_json:
            doc = json.loads(text)
            df = pd.DataFrame(doc) if isinstance(doc, list) else pd.read_json(io.BytesIO(text), dtype=False)
        else:
            df = pd.read_csv(io.BytesIO(text), dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable {'JSON' if is_json else 'CSV'} ({exc})") from None
    require_columns(list(df.columns), [structure_col, target] + ([id_col] if id_col else []), str(path),
                    hint="Name them with --structure-column / --target / --id-column (harness sweep).")
    name = _stem(path)
    sha = hashlib.sha256(data).hexdigest()
    parsed = parse_cached(df[structure_col].tolist(), fmt, source_sha256=sha, column=structure_col, label=name)
    ids = df[id_col].astype(str) if id_col else [f"{name}:{r}" for r in range(1, len(df) + 1)]
    return _assemble(name, ids=ids, targets=df[target], parsed=parsed, where=str(path), sha=sha,
                     drop_invalid=drop_invalid, cutoff=cutoff, suite="custom", target=target, unit="",
                     source=str(path), split_scheme=f"random 80/10/10 (seed {seed})",
                     notes={"structure_col": structure_col, "format": fmt, "id_col": id_col},
                     check_ids=id_col is not None, seed=seed)


# ----------------------------------------------------------------------------- matbench_phonons


def matbench_structure_path(name: str, composition_source: str | None = None) -> Path:
    """matbench's json (with structures) for ``name``: shared copy, the loader's own json, the cache,
    else a download of the public file into the cache."""
    from harness.data.matbench import _download

    candidates = []
    if data_dir() is not None:
        candidates.append(data_dir() / "structures" / f"{name}.json.gz")
    if composition_source and composition_source.endswith(".json.gz"):
        candidates.append(Path(composition_source))
    cached = cache_dir() / "matbench" / f"{name}.json.gz"
    candidates.append(cached)
    for path in candidates:
        if path.is_file():
            return path
    try:
        return _download(MATBENCH_STRUCTURE_URL.format(name=name), cached)
    except DataError as exc:
        raise DataError(f"{name}: the structure models need its structures, which come from matbench's json: "
                        f"{exc}".replace(f"matbench_v0.1/{name}.csv.gz", f"structures/{name}.json.gz")) from None


def attach_matbench_structures(ds: Dataset, *, drop_invalid: bool = False, cutoff: float = CUTOFF,
                               path: Path | None = None) -> Dataset:
    """Add the ``structure`` column to a loaded matbench dataset, matched on mbid.

    The frame, folds and name stay those of the composition dataset; rows whose structure is
    missing or invalid raise (or are dropped from the frame and every fold under ``drop_invalid``).
    ``sha256`` then covers both sources; ``notes["structures_sha256"]`` is the structure file's alone.
    """
    path = path or matbench_structure_path(ds.name, ds.notes.get("source_file"))
    raw, content = read_source(path)
    try:
        doc = json.loads(content)
        col = doc["columns"].index("structure")
        index, values = [str(i) for i in doc["index"]], [row[col] for row in doc["data"]]
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise DataError(f"{path}: expected matbench's json layout with a 'structure' column ({exc})") from None
    json_sha = hashlib.sha256(raw).hexdigest()
    parsed = parse_cached(values, "dict", source_sha256=json_sha, column="structure", label=ds.name)
    problems = parsed.problems_at(cutoff)
    pos = {mbid: k for k, mbid in enumerate(index)}
    structures, bad = [], []
    for row, mbid in enumerate(ds.frame["id"].astype(str)):
        k = pos.get(mbid)
        problem = f"no structure for this id in {path.name}" if k is None else problems[k]
        structures.append(None if k is None else parsed.structures[k])
        if problem:
            bad.append((row, mbid, k, problem))
    frame = ds.frame.copy()
    frame["structure"] = structures
    sha = hashlib.sha256(f"{ds.sha256}+structures:{json_sha}".encode()).hexdigest()
    notes = {**ds.notes, "structure_file": str(path), "structures_sha256": json_sha}
    if bad:
        shown = "\n".join(f"  {path.name}, entry {k + 1 if k is not None else '-'} (id {m!r}): {p}"
                          for _, m, k, p in bad[:SHOWN])
        more = f"\n  … and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        if not drop_invalid:
            raise DataError(f"{ds.name}: {len(bad)} invalid structure(s):\n{shown}{more}\n"
                            f"Fix these entries, or pass --drop-invalid (drop_invalid=True) to drop them.")
        log.warning("%s: dropped %d row(s) with invalid structures (--drop-invalid):\n%s%s",
                    ds.name, len(bad), shown, more)
        keep = np.ones(len(frame), dtype=bool)
        keep[[b[0] for b in bad]] = False
        frame, splits = _restrict(frame, ds.splits, keep)
        sha = hashlib.sha256(f"{sha}:drop_invalid:{cutoff}".encode()).hexdigest()
        check_splits(ds.name, splits)
        return replace(ds, frame=frame, splits=splits, sha256=sha, dropped=ds.dropped + len(bad), notes=notes)
    return replace(ds, frame=frame, sha256=sha, notes=notes)


def _restrict(frame: pd.DataFrame, splits: list[Split], keep: np.ndarray) -> tuple[pd.DataFrame, list[Split]]:
    """Keep rows ``keep``; renumber every split's positions."""
    new_pos = np.full(len(frame), -1, dtype=np.int64)
    new_pos[keep] = np.arange(int(keep.sum()))
    out = [Split(s.name, *(new_pos[i][new_pos[i] >= 0] for i in (s.train, s.val, s.test))) for s in splits]
    return frame[keep].reset_index(drop=True), out
