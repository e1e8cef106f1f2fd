"""Crystal-graph building rate (structures/s), cold and cached, on real mp_2018_subset structures.

    python benchmarks/graph_build.py [--n 1000] [--skip-parse]

Measures, each in a fresh temporary cache (HARNESS_CACHE) so "cold" really is cold:

1. parsing all 36,737 CIFs of mp_2018_subset (process pool) and reading them back from the
   parsed-structure cache (skipped with --skip-parse: then only the --n structures are parsed);
2. for ``--n`` structures (seeded sample): ``crystal_graph`` and ``crystal_graph_lern`` features
   cold (neighbour lists + site environments) and cached (``torch.load``), and the rate at which
   training batches of 64 come out (line graph derived per graph, ``Batch.from_data_list``).

Prints a table and replaces its own section of ``benchmarks/RESULTS.md`` (other sections kept).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402  (shared RESULTS.md section writer)

SECTION = "graph_build"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="structures for the graph benchmark")
    ap.add_argument("--skip-parse", action="store_true", help="do not time parsing all 36,737 CIFs")
    args = ap.parse_args()

    os.environ["HARNESS_CACHE"] = tempfile.mkdtemp(prefix="graph-bench-")
    import torch

    from harness.data import load_dataset
    from harness.data import structures as st
    from harness.featurize.graphs import CrystalGraphs, GraphConfig

    load_at_start = os.getloadavg()[0]  # this machine may be shared: say how busy it was
    torch.set_num_threads(1)  # batching is per-graph numpy; keep the number comparable across machines
    rows = []
    cpus = len(os.sched_getaffinity(0))
    name = "mp_2018_subset:formation_energy_per_atom"
    if args.skip_parse:
        import gzip
        import io

        import pandas as pd

        from harness.paths import data_dir

        df = pd.read_csv(io.BytesIO(gzip.decompress((data_dir() / "structures/mp_2018_subset.csv.gz").read_bytes())))
        pick = np.sort(np.random.default_rng(0).choice(len(df), size=args.n, replace=False))
        parsed, t = timed(lambda: st.parse_many(df["cif"].iloc[pick].tolist(), "cif", label="CIFs")[0])
        rows.append((f"parse {args.n} CIFs (+ checks), {st._workers(args.n)} process(es)", t, args.n / t))
        from harness.data.dataset import Dataset, Split

        frame = pd.DataFrame({"id": df["material_id"].iloc[pick].tolist(), "formula": "", "target": 0.0,
                              "structure": parsed.structures})
        idx = np.arange(args.n)
        ds = Dataset("mp_2018_subset-sample", "structures", "t", "", frame, [Split("fixed", idx, idx, idx)],
                     sha256=f"bench-{args.n}")
    else:
        full, t = timed(lambda: load_dataset(name))
        rows.append((f"parse all {len(full):,} CIFs (+ checks, cold), {st._workers(len(full))} processes",
                     t, len(full) / t))
        full2, t = timed(lambda: load_dataset(name))
        rows.append((f"load {len(full2):,} parsed structures from the JSON cache", t, len(full2) / t))
        ds = full.subsample(args.n, seed=0)

    atoms = sum(len(s) for s in ds.frame["structure"])
    for config in (GraphConfig(), GraphConfig(site_env=True, line_graph=False)):
        feats, t = timed(lambda: CrystalGraphs.from_dataset(ds, config))
        rows.append((f"{config.kind}: build {len(ds)} graphs (cold)", t, len(ds) / t))
        _, t = timed(lambda: CrystalGraphs.from_dataset(ds, config))
        rows.append((f"{config.kind}: load {len(ds)} graphs (cached)", t, len(ds) / t))
        y = np.zeros(len(ds))
        _, t = timed(lambda: sum(1 for _ in feats.batches(np.arange(len(ds)), y, 64, shuffle=True,
                                                           generator=torch.Generator().manual_seed(0))))
        what = "+ line graph" if config.line_graph else "+ site_env"
        rows.append((f"{config.kind}: batches of 64 ({what}, Batch.from_data_list)", t, len(ds) / t))
    edges = int(feats.tensors["n_edges"].sum())

    header = (f"{len(ds)} mp_2018_subset structures (seed 0), {atoms:,} atoms, {edges:,} edges (k = 12, ties "
              f"kept); {platform.processor() or platform.machine()}, {cpus} CPU(s) available, "
              f"load average {load_at_start:.1f} at start / {os.getloadavg()[0]:.1f} at end; "
              f"python {platform.python_version()}, torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
    table = ["| step | seconds | structures/s |", "|---|---:|---:|"]
    table += [f"| {what} | {t:.2f} | {rate:,.0f} |" for what, t, rate in rows]
    body = "\n".join(["## Crystal-graph building (`benchmarks/graph_build.py`)", "", header, "", *table, ""])
    print(body)
    write_section(SECTION, body)


if __name__ == "__main__":
    main()
