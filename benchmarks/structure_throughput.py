"""Training and inference throughput (structures/s) of every crystal-graph model, on CPU.

    python benchmarks/structure_throughput.py [--n 500] [--dataset mp_2018_subset:formation_energy_per_atom]
                                              [--models crysformer,alignn,cgcnn,schnet,lern] [--threads 0]
                                              [--precision fp32,bf16] [--compile off|on|both]

For each model, with its paper-default architecture and training recipe (optimizer, learning
rate, batch size from its registry entry): one training epoch over ``--n`` real structures
(seeded sample; forward, loss, backward, optimizer step, batches collated by the shared
featurizer's ``CrystalGraphs.batches``, i.e. what the trainer does, with its CPU allocator
setting), after one warm-up batch; then one inference pass (eval mode, no gradients, batch
256). Graphs are built once, before timing (``benchmarks/graph_build.py`` measures that). ``--compile on`` (or ``both``) runs ALIGNN and
Crysformer with ``compile=True`` (torch.compile of their layers; one warm-up batch of training and
one of inference compile before the timing starts). Prints a table and replaces its own section of
``benchmarks/RESULTS.md``.

The machine's load average is recorded: on a shared machine the numbers move with it.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import load_now, load_structures, machine, publish  # noqa: E402

SECTION = "structure_throughput"
MODELS = "crysformer,alignn,cgcnn,schnet,lern"
COMPILABLE = ("alignn", "crysformer")  # models whose config has compile=True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="structures (seeded sample)")
    ap.add_argument("--dataset", default="mp_2018_subset:formation_energy_per_atom")
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--precision", default="fp32",
                    help="fp32, bf16 or both (fp32,bf16): TrainConfig.precision; bf16 = training forward passes under "
                         "bfloat16 autocast, as the trainer runs them")
    ap.add_argument("--compile", choices=("off", "on", "both"), default="off",
                    help="ALIGNN and Crysformer with compile=True (on), without (off), or both rows")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--machine", default="", metavar="NAME",
                    help="record as another machine's section (structure_throughput_NAME) beside the main one, "
                         "e.g. --machine avx512-bf16 for a CPU without AMX")
    args = ap.parse_args()

    import torch

    from harness.featurize.graphs import GRAPH_KINDS, CrystalGraphs, GraphConfig
    from harness.models import get_model
    from harness.training.config import TrainConfig
    from harness.training.losses import compute_loss
    from harness.training.allocator import keep_freed_memory
    from harness.training.trainer import autocast, build_optimizer, n_parameters, seed_everything

    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the Trainer on CPU (benchmarks/cpu_allocator.py: ALIGNN steps 2.1x faster)
    header = machine(torch.get_num_threads())
    ds = load_structures(args.dataset, args.n)
    structures = ds.frame["structure"].tolist()
    ids = ds.frame["id"].astype(str).tolist()
    from harness.featurize.graphs import build_arrays

    config = GraphConfig(k=12, line_graph=True, site_env=True)  # every field the directed-graph models read
    tensors = build_arrays(structures, ids, config)
    features = CrystalGraphs(tensors, config)
    symmetric: dict[str, torch.Tensor] = {}  # ALIGNN's edges (each k-NN bond and its reverse), built if needed
    n = len(features)
    rows_idx = np.arange(n)
    y = np.random.default_rng(0).normal(size=n)  # targets do not change the cost
    n_atoms = int(features.tensors["n_atoms"].sum())
    n_edges = int(features.tensors["n_edges"].sum())

    rows = []
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    device = torch.device("cpu")
    compile_modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.compile]
    runs = [(m.strip(), p, c) for m in args.models.split(",") if m.strip() for p in precisions
            for c in (compile_modes if m.strip() in COMPILABLE else (False,))]
    for name, precision, compiled in runs:
        spec = get_model(name)
        # the batches its input kind gives in a sweep (GRAPH_KINDS): line graphs only for ALIGNN and
        # Crysformer, ALIGNN's on the symmetric edges
        kind_config = GRAPH_KINDS[spec.input_kind]
        if kind_config.symmetric:
            symmetric = symmetric or build_arrays(structures, ids, kind_config)
            features = CrystalGraphs(symmetric, kind_config)
        else:
            features = CrystalGraphs(tensors, replace(kind_config, site_env=True))
        seed_everything(0)
        model = spec.build(spec.make_config(**({"compile": True} if compiled else {})), features.info)
        recipe = TrainConfig.from_dict({**spec.train_defaults, "epochs": 1, "precision": precision})
        batch_size = recipe.batch_size or 64
        optimizer = build_optimizer(recipe, [p for p in model.parameters() if p.requires_grad])
        generator = torch.Generator().manual_seed(0)

        def step(batch) -> None:
            with autocast(recipe, device):  # as Trainer._train_epoch
                output = model(batch)
            loss = compute_loss(recipe.loss, output.float(), batch.y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        model.train()
        step(next(features.batches(rows_idx[:batch_size], y[:batch_size], batch_size)))  # warm-up
        start = time.perf_counter()
        for batch in features.batches(rows_idx, y, batch_size, shuffle=True, generator=generator):
            if len(batch) > 1:
                step(batch)
        train_s = time.perf_counter() - start

        model.eval()
        with torch.no_grad(), autocast(recipe, device):
            if compiled:  # eval mode and no_grad are other graphs: compile them before the clock starts
                model(next(features.batches(rows_idx[:256], y[:256], 256)))
            start = time.perf_counter()
            for batch in features.batches(rows_idx, y, 256):
                model(batch)
        infer_s = time.perf_counter() - start
        label = spec.label + (" (compiled)" if compiled else "")
        rows.append((label, precision, n_parameters(model), batch_size, train_s, n / train_s, infer_s,
                     n / infer_s))
        print(f"{label} {precision}: train {train_s:.1f} s ({n / train_s:.1f}/s), inference {infer_s:.1f} s ({n / infer_s:.1f}/s)",
              file=sys.stderr, flush=True)

    table = ["| model | precision | parameters | batch | train epoch (s) | train structures/s | inference (s) "
             "| inference structures/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {label} | {prec} | {params:,} | {bs} | {tt:.1f} | {tr:.1f} | {it:.1f} | {ir:.1f} |"
              for label, prec, params, bs, tt, tr, it, ir in rows]
    body = "\n".join([
        "## Structure models: training / inference throughput (`benchmarks/structure_throughput.py`"
        + (f" --machine {args.machine}" if args.machine else "") + ")", "",
        f"{n} {args.dataset} structures (seed 0), {n_atoms:,} atoms, {n_edges:,} edges (k = 12, ties kept"
        + (f"; ALIGNN's symmetric graphs {int(symmetric['n_edges'].sum()):,}" if symmetric else "") + "); "
        f"paper-default architectures and each model's recipe batch size and optimizer; one epoch after one "
        f"warm-up batch, batches collated by `CrystalGraphs.batches` (included; line graphs only for the models "
        f"that read them); inference batch 256, eval mode; precision bf16 = the trainer's mixed precision "
        f"(training forward passes under bfloat16 autocast, weights and loss in float32); its inference "
        f"columns are bf16-autocast inference, which the trainer does not use (it predicts in float32); "
        f"freed memory kept for reuse (`keep_freed_memory()`, as the trainer on CPU). "
        f"CPU: {header}, {load_now()} at the end", "", *table, ""])
    publish(f"{SECTION}_{args.machine}" if args.machine else SECTION, body, write=not args.no_write)


if __name__ == "__main__":
    main()
