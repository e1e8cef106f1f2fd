"""Epoch time of our ALIGNN vs the reference ``alignn`` package (PyPI), same structures and recipe.

    python benchmarks/alignn_vs_reference.py [--n 1000] [--dataset matbench_phonons] [--repeats 2]
        [--threads 1] [--reference-python /tmp/alignn_ref_venv/bin/python]

Both sides train the reference's default ALIGNN configuration (4 ALIGNN + 4 GCN layers, hidden
256, embedding 64, 80/40 RBF bins, CGCNN atom features; 4,026,753 parameters on both sides) with
the same recipe (AdamW, lr 1e-3, weight decay 1e-5, batch 64, MSE) on the SAME graphs (the shared
featurizer's 12-nearest-neighbour graphs and their line graphs) and the same batch order, one
epoch after one warm-up batch; epochs alternate ours / ours compiled / theirs ``--repeats`` times
and the fastest of each is reported (the machine may be shared), with the median. "Ours
compiled" is the same model with ``compile=True`` (each graph convolution through
``torch.compile``; the compilation time is reported, not counted in the epoch).

Which reference model: ``alignn`` >= 2026 ships the classic ``ALIGNN`` class only for DGL, and
DGL's wheels load only with torch <= 2.2 (see DESIGN.md), so on torch 2.13 the runnable reference
is the package's own DGL-free port, ``alignn.models.alignn_atomwise_pure.ALIGNNAtomWisePure``
("a line-for-line reimplementation ... with all DGL ops replaced by index/scatter primitives"),
configured as ALIGNN: ``calculate_gradient=False`` (no forces), no penalty / ZBL terms,
``energy_mult_natoms=False``, ``lg_on_fly=False`` (angle cosines given, as ours). Its EGGC uses
LayerNorm where the DGL ALIGNN (and ours) use BatchNorm: same parameter count, same layout. If a
DGL-enabled ``alignn`` is importable by the reference interpreter, the classic DGL ``ALIGNN`` is
timed too. The reference runs in its own interpreter (``--reference-python``; install it apart
from the harness, e.g. ``python -m venv /tmp/alignn_ref_venv && /tmp/alignn_ref_venv/bin/pip
install torch==2.13.0 alignn``); when it cannot be found or imported the script says so, times
ours alone, and records why.

Timing per epoch: "collate" = building the batches (ours: ``CrystalGraphs.batches``, which
derives each line graph on the fly and runs ``Batch.from_data_list``; theirs:
``batch_torch_graph_pairs`` of line graphs built beforehand, as their datasets store them),
"steps" = forward + MSE + backward + AdamW step. Replaces its own section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import load_now, load_structures, machine, publish  # noqa: E402

SECTION = "alignn_vs_reference"
# The reference package lives in its own venv (it pins its own torch); HARNESS_ALIGNN_PYTHON
# overrides where, default <tmpdir>/alignn_ref_venv.
DEFAULT_REFERENCE_PYTHON = os.environ.get(
    "HARNESS_ALIGNN_PYTHON", str(Path(tempfile.gettempdir()) / "alignn_ref_venv" / "bin" / "python")
)
RECIPE = {"batch_size": 64, "lr": 1e-3, "weight_decay": 1e-5}

# Runs inside the reference interpreter: alignn + torch only (no harness, no torch_geometric).
REFERENCE_RUNNER = textwrap.dedent('''
    import json, statistics, sys, time
    import torch
    workload = torch.load(sys.argv[1], weights_only=True)
    opts = json.loads(sys.argv[2])
    torch.set_num_threads(opts["threads"])
    import alignn
    from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig
    from alignn.torch_graph_builder import TorchGraph, batch_torch_graph_pairs

    pairs = []
    for g in workload["graphs"]:
        parent = TorchGraph(num_nodes=int(g["atom_features"].shape[0]), src=g["src"], dst=g["dst"],
                            ndata={"atom_features": g["atom_features"]}, edata={"r": g["r"]})
        line = TorchGraph(num_nodes=int(g["src"].shape[0]), src=g["lg_src"], dst=g["lg_dst"], edata={"h": g["cos"]})
        pairs.append((parent, line))
    y = workload["y"]
    batches = workload["batches"]

    def build(kind):
        torch.manual_seed(0)
        if kind == "pure":
            cfg = ALIGNNAtomWisePureConfig(
                name="alignn_atomwise_pure", alignn_layers=4, gcn_layers=4, atom_input_features=92,
                edge_input_features=80, triplet_input_features=40, embedding_features=64, hidden_features=256,
                output_features=1, calculate_gradient=False, lg_on_fly=False, use_penalty=False,
                energy_mult_natoms=False, use_zbl=False)
            model = ALIGNNAtomWisePure(cfg)
            return model, lambda b: model((b[0], b[1], None))["out"]
        import dgl
        from alignn.models.alignn import ALIGNN, ALIGNNConfig
        model = ALIGNN(ALIGNNConfig(name="alignn"))
        def forward(b):
            g, lg = b
            return model((g.to_dgl(), lg.to_dgl(), None))
        return model, forward

    def epoch(model, forward, optimizer, ids_list):
        collate = steps = 0.0
        for ids in ids_list:
            t0 = time.perf_counter()
            g, lg = batch_torch_graph_pairs([pairs[i] for i in ids])
            target = y[ids]
            t1 = time.perf_counter()
            out = forward((g, lg)).reshape(-1)
            loss = torch.nn.functional.mse_loss(out, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            t2 = time.perf_counter()
            collate += t1 - t0
            steps += t2 - t1
        return collate, steps

    kinds = ["pure"]
    try:
        import dgl  # noqa: F401
        kinds.append("dgl")
        dgl_note = "dgl " + dgl.__version__
    except Exception as exc:  # DGL missing or not loadable with this torch
        dgl_note = (f"classic DGL `ALIGNN` not timed ({type(exc).__name__}: {exc}): DGL's wheels load only with "
                    f"torch <= 2.2, and this reference interpreter has torch {torch.__version__}")
    state = {}
    for kind in kinds:
        model, forward = build(kind)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=opts["lr"], weight_decay=opts["weight_decay"])
        epoch(model, forward, optimizer, batches[:1])  # warm-up
        state[kind] = (model, forward, optimizer, sum(p.numel() for p in model.parameters()))
    print(json.dumps({"ready": True, "kinds": kinds, "dgl": dgl_note, "torch": torch.__version__,
                      "params": {k: v[3] for k, v in state.items()}}), flush=True)
    # one epoch per call: the driver alternates ours / theirs
    for line in sys.stdin:
        kind = line.strip()
        model, forward, optimizer, n_params = state[kind]
        collate, steps = epoch(model, forward, optimizer, batches)
        print(json.dumps({"kind": kind, "collate": collate, "steps": steps}), flush=True)
''')


def reference_version(python: str) -> str | None:
    try:
        out = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('alignn'))"],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="structures (seeded sample)")
    ap.add_argument("--dataset", default="matbench_phonons")
    ap.add_argument("--repeats", type=int, default=2, help="epochs per side, alternating")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides")
    ap.add_argument("--reference-python", default=os.environ.get("ALIGNN_REFERENCE_PYTHON", DEFAULT_REFERENCE_PYTHON))
    ap.add_argument("--no-compiled", dest="compiled", action="store_false",
                    help="skip timing ours with compile=True")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()

    import torch

    from harness.featurize.graphs import CrystalGraphs, GraphConfig, build_arrays
    from harness.models import get_model
    from harness.models.blocks_graph import cgcnn_atom_features
    from harness.training.trainer import n_parameters

    torch.set_num_threads(args.threads)
    header = machine(args.threads)
    ds = load_structures(args.dataset, args.n)
    config = GraphConfig(k=12, line_graph=True)
    features = CrystalGraphs(build_arrays(ds.frame["structure"].tolist(), ds.frame["id"].astype(str).tolist(), config),
                             config)
    n = len(features)
    y = torch.as_tensor(np.random.default_rng(0).normal(size=n), dtype=torch.float32)  # cost does not depend on y
    order = np.random.default_rng(1).permutation(n)
    batches = [order[i: i + RECIPE["batch_size"]] for i in range(0, n, RECIPE["batch_size"])]
    batches = [b for b in batches if len(b) > 1]

    # ours: eager, and with compile=True (torch.compile of each graph convolution)
    spec = get_model("alignn")

    def make_epoch(compiled: bool):
        torch.manual_seed(0)
        model = spec.build(spec.make_config(compile=compiled), features.info)
        optimizer = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
        model.train()

        def epoch(batch_list) -> tuple[float, float]:
            collate = steps = 0.0
            for ids in batch_list:
                t0 = time.perf_counter()
                batch = next(features.batches(ids, y[ids].numpy(), len(ids)))
                t1 = time.perf_counter()
                loss = torch.nn.functional.mse_loss(model(batch), batch.y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                t2 = time.perf_counter()
                collate += t1 - t0
                steps += t2 - t1
            return collate, steps

        return model, epoch

    ours, our_epoch = make_epoch(False)
    our_epoch(batches[:1])  # warm-up
    variants = {"ours": our_epoch}
    compile_seconds = None
    if args.compiled:
        _, compiled_epoch = make_epoch(True)
        start = time.perf_counter()
        compiled_epoch(batches[:1])  # warm-up = compilation
        compiled_epoch(batches[-1:])  # a second shape (dynamic shapes: no recompilation expected)
        compile_seconds = time.perf_counter() - start
        variants["ours_compiled"] = compiled_epoch

    # theirs: workload file + runner in the reference interpreter
    table = cgcnn_atom_features()
    graphs, n_triplets = [], 0
    for i in range(n):
        g = features.graph(i)
        n_triplets += g.lg_edge_index.shape[1]
        graphs.append({"atom_features": table[g.z], "src": g.edge_index[0], "dst": g.edge_index[1], "r": g.edge_vec,
                       "lg_src": g.lg_edge_index[0], "lg_dst": g.lg_edge_index[1], "cos": torch.cos(g.angle)})
    n_atoms, n_edges = int(features.tensors["n_atoms"].sum()), int(features.tensors["n_edges"].sum())
    workdir = Path(tempfile.mkdtemp(prefix="alignn-bench-"))
    torch.save({"graphs": graphs, "y": y, "batches": [torch.as_tensor(b) for b in batches]}, workdir / "workload.pt")
    (workdir / "runner.py").write_text(REFERENCE_RUNNER)

    version = reference_version(args.reference_python) if Path(args.reference_python).exists() else None
    reference = None
    problem = ""
    if version is None:
        problem = (f"reference alignn NOT timed: no interpreter with the `alignn` package at {args.reference_python!r} "
                   f"(pass --reference-python or set ALIGNN_REFERENCE_PYTHON; install it in its own venv: "
                   f"python -m venv /tmp/alignn_ref_venv && /tmp/alignn_ref_venv/bin/pip install torch==2.13.0 alignn)")
        print(problem, file=sys.stderr)
    else:
        opts = json.dumps({"threads": args.threads, **RECIPE})
        command = [args.reference_python, str(workdir / "runner.py"), str(workdir / "workload.pt"), opts]
        reference = subprocess.Popen(command,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    meta: dict = {"kinds": [], "params": {}, "dgl": ""}
    if reference is not None:
        line = reference.stdout.readline()  # after the reference's model build and warm-up
        if line:
            meta = json.loads(line)
        else:
            problem = "reference runner failed: " + reference.stderr.read()[-2000:]
            print(problem, file=sys.stderr)
            reference = None

    results: dict[str, list[tuple[float, float]]] = {}
    for repeat in range(args.repeats):
        for kind, run_epoch in variants.items():
            results.setdefault(kind, []).append(run_epoch(batches))
            print(f"{kind}, epoch {repeat + 1}: collate {results[kind][-1][0]:.1f} s, "
                  f"steps {results[kind][-1][1]:.1f} s", file=sys.stderr, flush=True)
        for kind in meta["kinds"] if reference is not None else []:
            reference.stdin.write(kind + "\n")
            reference.stdin.flush()
            line = reference.stdout.readline()
            if not line:
                problem = "reference runner failed: " + reference.stderr.read()[-2000:]
                print(problem, file=sys.stderr)
                reference = None
                break
            out = json.loads(line)
            results.setdefault(kind, []).append((out["collate"], out["steps"]))
            print(f"reference {kind}, epoch {repeat + 1}: collate {out['collate']:.1f} s, steps {out['steps']:.1f} s",
                  file=sys.stderr, flush=True)
    if reference is not None:
        reference.stdin.close()
        reference.wait(timeout=60)

    params = meta.get("params", {})
    labels = {"ours": f"ours (`harness.models.alignn`, BatchNorm), {n_parameters(ours):,} parameters",
              "ours_compiled": f"ours, `compile=True` (torch.compile per convolution; compiling took "
                               f"{compile_seconds or 0:.0f} s, not counted)",
              "pure": f"alignn {version} `ALIGNNAtomWisePure` (DGL-free, LayerNorm), "
                      f"{params.get('pure', 0):,} parameters",
              "dgl": f"alignn {version} classic `ALIGNN` (DGL), {params.get('dgl', 0):,} parameters"}
    rows = ["| implementation | epoch (s), best | epoch (s), median | collate (s) | forward+backward+step (s) "
            "| structures/s |",
            "|---|---:|---:|---:|---:|---:|"]
    best = {}
    for kind, runs in results.items():
        totals = [c + s for c, s in runs]
        k = int(np.argmin(totals))
        best[kind] = totals[k]
        rows.append(f"| {labels[kind]} | {totals[k]:.1f} | {statistics.median(totals):.1f} | {runs[k][0]:.1f} | "
                    f"{runs[k][1]:.1f} | {n / totals[k]:.1f} |")
    verdict = ""
    if "pure" in best:
        names = {"ours": "ours", "ours_compiled": "ours with compile=True"}
        parts = [f"{names[k]} **{best[k] / best['pure']:.2f}**" for k in names if k in best]
        verdict = "Epoch time relative to the reference (best epochs; target <= 1): " + ", ".join(parts) + "."
    notes = [meta.get("dgl", "")]
    body = "\n".join([
        "## ALIGNN vs the reference `alignn` package (`benchmarks/alignn_vs_reference.py`)", "",
        f"{n} {args.dataset} structures (seed 0): {n_atoms:,} atoms, {n_edges:,} edges, {n_triplets:,} angle pairs "
        f"(k = 12, the same graphs and batch order on both sides); default ALIGNN, AdamW lr 1e-3, weight decay 1e-5, "
        f"batch 64, MSE; one epoch after a warm-up batch, {args.repeats} epoch(s) per side, alternating. "
        f"CPU: {header}, {load_now()} at the end", "", *rows, "", verdict, *(f"- {x}" for x in notes if x),
        *([f"- {problem}"] if problem else []), ""])
    publish(SECTION, body, write=not args.no_write)


if __name__ == "__main__":
    main()
