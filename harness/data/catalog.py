"""The catalog: every named dataset, its suite, target, unit and split scheme.

Why a static table: splits and units are part of a dataset's definition (DESIGN.md,
"Datasets"), so they are written down once here, not improvised by whoever loads the data.
Names are exactly those of the published results (``reference_results.csv``) so measured and
published numbers line up. Loading lives in ``crabnet_wheel`` and ``matbench``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is, before loading it."""

    name: str
    suite: str
    kind: str  # input kind: "composition" or "structure"
    target: str  # column / property name
    unit: str
    split_scheme: str  # human text, e.g. "5-fold CV (Matbench official)"
    task_type: str = "regression"  # or "classification"
    source: str = ""


CRABNET_WHEEL = "PyPI crabnet==2.0.8 wheel"
FIXED = "fixed train/val/test"
CRABNET_CV = "5-fold CV (CrabNet files)"
MATBENCH_CV = "5-fold CV (Matbench official)"

# name: (property, unit); the name already says the source (AFLOW, MP, OQMD, ...).
# 18 sets with a fixed split, then 10 with CrabNet's 5-fold files.
_CRABNET_FIXED = {
    "aflow__ael_bulk_modulus_vrh": ("bulk modulus (AEL, VRH)", "GPa"),
    "aflow__ael_debye_temperature": ("Debye temperature (AEL)", "K"),
    "aflow__ael_shear_modulus_vrh": ("shear modulus (AEL, VRH)", "GPa"),
    "aflow__agl_thermal_conductivity_300K": ("thermal conductivity 300 K", "W/(m·K)"),
    "aflow__agl_thermal_expansion_300K": ("thermal expansion 300 K", "1/K"),
    "aflow__Egap": ("band gap", "eV"),
    "aflow__energy_atom": ("energy per atom", "eV/atom"),
    "CritExam__Ed": ("decomposition energy", "eV/atom"),
    "CritExam__Ef": ("formation energy", "eV/atom"),
    "mp_bulk_modulus": ("bulk modulus (VRH)", "GPa"),
    "mp_elastic_anisotropy": ("elastic anisotropy", "unitless"),
    "mp_e_hull": ("energy above hull", "eV/atom"),
    "mp_mu_b": ("total magnetization", "μB"),
    "mp_shear_modulus": ("shear modulus (VRH)", "GPa"),
    "OQMD_Bandgap": ("band gap", "eV"),
    "OQMD_Energy_per_atom": ("energy per atom", "eV/atom"),
    "OQMD_Formation_Enthalpy": ("formation enthalpy", "eV/atom"),
    "OQMD_Volume_per_atom": ("volume per atom", "Å³/atom"),
}
_CRABNET_CV = {
    # Same values as matbench_perovskites' e_form, which Matbench documents as the heat of
    # formation of the whole 5-atom perovskite cell.
    "castelli": ("heat of formation per cell", "eV/cell"),
    "dielectric": ("refractive index n", "unitless"),
    "elasticity_log10(G_VRH)": ("log10 G_VRH", "log10(GPa)"),
    "elasticity_log10(K_VRH)": ("log10 K_VRH", "log10(GPa)"),
    "expt_gap": ("band gap (experimental)", "eV"),
    "jdft2d": ("exfoliation energy", "meV/atom"),
    "mp_e_form": ("formation energy", "eV/atom"),
    "mp_gap": ("band gap (PBE)", "eV"),
    "phonons": ("last phonon DOS peak", "cm⁻¹"),
    "steels_yield": ("yield strength", "MPa"),
}

# task: (target column as in matbench, unit, task_type)
MATBENCH_TASKS = {
    "dielectric": ("n", "unitless", "regression"),
    "expt_gap": ("gap expt", "eV", "regression"),
    "expt_is_metal": ("is_metal", "0/1", "classification"),
    "glass": ("gfa", "0/1", "classification"),
    "jdft2d": ("exfoliation_en", "meV/atom", "regression"),
    "log_gvrh": ("log10(G_VRH)", "log10(GPa)", "regression"),
    "log_kvrh": ("log10(K_VRH)", "log10(GPa)", "regression"),
    "mp_e_form": ("e_form", "eV/atom", "regression"),
    "mp_gap": ("gap pbe", "eV", "regression"),
    "mp_is_metal": ("is_metal", "0/1", "classification"),
    "perovskites": ("e_form", "eV/cell", "regression"),
    "phonons": ("last phdos peak", "cm⁻¹", "regression"),
    "steels": ("yield strength", "MPa", "regression"),
}


# Structure datasets (suite "structures"): "<source>:<property>": (target column, unit, source).
# Loading lives in ``structures``; split: seeded random 80/10/10 (seed 0), recorded in notes.
RANDOM_80_10_10 = "random 80/10/10 (seed 0)"
_MP2018 = "data_dir()/structures/mp_2018_subset.csv.gz (MP CIFs, CGCNN/MEGNet data)"
_MPEL = "data_dir()/structures/mp_elasticity.csv.gz (MP CIFs, MEGNet data_elasticity)"
_MM041 = "PyPI matminer==0.4.1 sdist: matminer/datasets/"
STRUCTURE_SETS = {
    "mp_2018_subset:formation_energy_per_atom": ("formation_energy_per_atom", "eV/atom", _MP2018),
    "mp_2018_subset:band_gap": ("band_gap", "eV", _MP2018),
    "mp_elasticity:K_VRH": ("K_VRH", "GPa", _MPEL),
    "mp_elasticity:G_VRH": ("G_VRH", "GPa", _MPEL),
    "flla_2015:formation_energy_per_atom": ("formation_energy_per_atom", "eV/atom", _MM041 + "flla_2015.csv"),
    "elastic_tensor_2015:K_VRH": ("K_VRH", "GPa", _MM041 + "elastic_tensor.csv"),
    "elastic_tensor_2015:G_VRH": ("G_VRH", "GPa", _MM041 + "elastic_tensor.csv"),
}
# JARVIS-DFT dft_3d through jarvis-tools (needs internet): suite "jarvis", kept out of "structures"
# so that an offline `--datasets structures` never tries a 94k-structure download.
_JARVIS = "jarvis-tools: jarvis.db.figshare.data('dft_3d')"
JARVIS_PROPERTIES = {
    "formation_energy_peratom": "eV/atom", "optb88vdw_bandgap": "eV", "mbj_bandgap": "eV",
    "optb88vdw_total_energy": "eV/atom", "ehull": "eV/atom", "bulk_modulus_kv": "GPa",
    "shear_modulus_gv": "GPa", "magmom_oszicar": "μB", "slme": "%", "spillage": "unitless",
}
# Catalog datasets of other suites whose frames also carry a ``structure`` column.
WITH_STRUCTURES = ("matbench_phonons",)
# Matbench tasks whose inputs are crystal structures (Matbench v0.1). Their structures are read
# from matbench's public json (downloaded into the cache on first use) when a sweep has a
# structure model; offline, only matbench_phonons' are in the data folder (WITH_STRUCTURES).
MATBENCH_STRUCTURE_TASKS = tuple(f"matbench_{t}" for t in (
    "dielectric", "jdft2d", "log_gvrh", "log_kvrh", "mp_e_form", "mp_gap", "mp_is_metal", "perovskites", "phonons"))


def _build() -> dict[str, DatasetSpec]:
    specs = [
        DatasetSpec(n, "crabnet28", "composition", t, u, FIXED,
                    source=f"{CRABNET_WHEEL}: crabnet/data/benchmark_data/{n}/{{train,val,test}}.csv")
        for n, (t, u) in _CRABNET_FIXED.items()
    ] + [
        DatasetSpec(n, "crabnet28", "composition", t, u, CRABNET_CV,
                    source=f"{CRABNET_WHEEL}: crabnet/data/matbench_cv/{n}/{{train,val,test}}{{0..4}}.csv")
        for n, (t, u) in _CRABNET_CV.items()
    ] + [
        DatasetSpec(f"matbench_{task}", "matbench", "composition", col, unit, MATBENCH_CV, task_type,
                    source=f"Matbench v0.1 matbench_{task} (data_dir()/matbench_v0.1 or "
                           f"https://ml.materialsproject.org/projects/matbench_{task}.json.gz)")
        for task, (col, unit, task_type) in MATBENCH_TASKS.items()
    ] + [
        DatasetSpec(n, "structures", "structure", t, u, RANDOM_80_10_10, source=src)
        for n, (t, u, src) in STRUCTURE_SETS.items()
    ] + [
        DatasetSpec(f"jarvis_dft_3d:{p}", "jarvis", "structure", p, u, RANDOM_80_10_10, source=_JARVIS)
        for p, u in JARVIS_PROPERTIES.items()
    ]
    return {s.name: s for s in specs}


CATALOG: dict[str, DatasetSpec] = _build()
SUITES: dict[str, list[str]] = {
    suite: [s.name for s in CATALOG.values() if s.suite == suite]
    for suite in ("crabnet28", "matbench", "structures", "jarvis")
}
SUITES["structures"] += list(WITH_STRUCTURES)  # listed in both suites; its spec.suite stays "matbench"


def list_specs(suite: str | None = None) -> list[DatasetSpec]:
    """All specs, or those of one suite (KeyError for an unknown suite)."""
    if suite is None:
        return list(CATALOG.values())
    if suite not in SUITES:
        raise KeyError(f"unknown suite {suite!r}; known suites: {', '.join(SUITES)}")
    return [CATALOG[n] for n in SUITES[suite]]


def get_spec(name: str) -> DatasetSpec:
    """The spec of one dataset (case-insensitive); KeyError listing the known names otherwise."""
    names = resolve_datasets(name)
    if len(names) != 1:
        raise KeyError(f"{name!r} names {len(names)} datasets; name exactly one")
    return CATALOG[names[0]]


def resolve_datasets(text: str) -> list[str]:
    """``"a,b"``, a suite name or ``"all"`` -> dataset names, in order, without repeats.

    Names match exactly, else case-insensitively. Unknown names raise KeyError listing the
    known suites and datasets.
    """
    lower = {n.lower(): n for n in CATALOG}
    names: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if token == "all":
            found = list(CATALOG)
        elif token in SUITES:
            found = SUITES[token]
        elif token in CATALOG or token.lower() in lower:
            found = [CATALOG[token].name if token in CATALOG else lower[token.lower()]]
        elif any(n.lower().startswith(token.lower() + ":") for n in CATALOG):  # "mp_2018_subset" -> its targets
            found = [n for n in CATALOG if n.lower().startswith(token.lower() + ":")]
        else:
            close = difflib.get_close_matches(token.lower(), [*lower, *SUITES], n=3)
            hint = f" (did you mean {' or '.join(repr(lower.get(c, c)) for c in close)}?)" if close else ""
            raise KeyError(
                f"unknown dataset {token!r}{hint}. Known suites: {', '.join(SUITES)}, all. "
                f"Known datasets: {', '.join(CATALOG)}"
            )
        names += [n for n in found if n not in names]
    if not names:
        raise KeyError(f"no dataset named in {text!r}; known suites: {', '.join(SUITES)}, all")
    return names
