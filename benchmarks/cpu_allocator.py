"""Training steps on CPU under glibc malloc's defaults vs with freed memory kept in the heap.

    python benchmarks/cpu_allocator.py [--models alignn,cgcnn] [--steps 40] [--no-write]
    python benchmarks/cpu_allocator.py --resident [--models crysformer] [--epochs 8] [--rows 512]

Why: the 40-epoch ALIGNN runs on matbench_phonons spent ~21 % of their CPU time in the kernel
(2026-12-04: 866 s system vs 3,198 s user after 30 epochs, ~60,000 minor page faults a second).
glibc serves every allocation above its mmap threshold (128 KiB, adapting up to 32 MiB) with a
fresh ``mmap`` and returns it with ``munmap`` when the tensor is freed, so each training step
faults its large activations in page by page again. ``mallopt(M_MMAP_MAX, 0)`` +
``M_TRIM_THRESHOLD`` (what ``harness.training.allocator.keep_freed_memory`` sets) serve them from
the heap and keep freed memory for the next step.

Each setting runs in its own process (an allocator is chosen before the first allocation):
``default`` (glibc as is), ``tunables`` (the same settings through ``GLIBC_TUNABLES``, from
process start), ``harness`` (``keep_freed_memory()`` called at start, as the trainer does). A
process builds the model's default architecture, warms up 5 steps, then times ``--steps``
training steps (batch 32, 1 torch thread, fp32, eager) on matbench_phonons with the graphs of
its sweeps, and reports wall, user and system seconds and minor page faults from ``getrusage``.

``--resident``: a second question, resident memory over a long fit. The trainer itself (its
``fit``) trains ``--epochs`` epochs of a model (default Crysformer, bf16, 1 thread) on the first
``--rows`` training rows of fold 0, one process per setting: ``default`` (glibc as is, nothing
trimmed), ``keep`` (the trainer's ``mallopt`` settings, nothing trimmed: the trainer until
2026-12-04), ``keep+trim`` (the trainer now: also ``malloc_trim`` after every epoch), and reports
per epoch the resident size and the process's CPU seconds (user + system: robust to a shared
machine's load, unlike wall time). Its own section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import load_now, machine, publish  # noqa: E402

SECTION = "cpu_allocator"
SETTINGS = ("default", "tunables", "harness")
RESIDENT_SECTION = "cpu_allocator_resident"
RESIDENT_SETTINGS = ("default", "keep", "keep+trim")
TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824"


def child(name: str, steps: int, setting: str) -> dict:
    """Time ``steps`` training steps of ``name`` in this process; the figures as a dict."""
    import numpy as np
    import torch

    if setting == "harness":
        from harness.training.allocator import keep_freed_memory

        assert keep_freed_memory(), "mallopt refused"
    from harness.data import load_dataset
    from harness.featurize import featurize
    from harness.models import get_model
    from harness.training import TrainConfig
    from harness.training.losses import compute_loss
    from harness.training.trainer import build_optimizer, seed_everything

    torch.set_num_threads(1)
    ds = load_dataset("matbench_phonons")
    spec = get_model(name)
    features = featurize(spec.input_kind, ds)
    seed_everything(0)
    model = spec.build(spec.make_config(), features.info)
    recipe = TrainConfig.from_dict({**spec.train_defaults, "batch_size": 32})
    optimizer = build_optimizer(recipe, [p for p in model.parameters() if p.requires_grad])
    rows = ds.split("fold0").train
    y = ds.targets[rows]
    batches = list(features.batches(rows[: 32 * (steps + 5)], y[: 32 * (steps + 5)], 32))
    model.train()

    def step(batch) -> None:
        loss = compute_loss(recipe.loss, model(batch).float(), batch.y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for batch in batches[:5]:
        step(batch)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for batch in batches[5:]:
        step(batch)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"model": name, "setting": setting, "steps": len(batches) - 5, "wall_s": wall,
            "user_s": after.ru_utime - before.ru_utime, "system_s": after.ru_stime - before.ru_stime,
            "minor_faults": after.ru_minflt - before.ru_minflt, "max_rss_mb": after.ru_maxrss / 1024,
            "rows": int(np.sum([len(b) for b in batches[5:]]))}


def resident_child(name: str, setting: str, epochs: int, rows: int, precision: str) -> dict:
    """Fit ``name`` for ``epochs`` with the trainer under ``setting``; resident MB and CPU s per epoch."""
    import numpy as np

    from harness.data import load_dataset
    from harness.data.dataset import Split
    from harness.featurize import featurize
    from harness.models import get_model
    from harness.training import TrainConfig, Trainer
    from harness.training import trainer as trainer_module

    # The settings switch the trainer's two calls off (the trainer makes them on every CPU fit).
    if setting == "default":
        trainer_module.keep_freed_memory = lambda: False
    if setting != "keep+trim":
        trainer_module.release_freed_memory = lambda: False

    def resident_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    ds = load_dataset("matbench_phonons")
    spec = get_model(name)
    features = featurize(spec.input_kind, ds)
    fold = ds.split("fold0")
    split = Split("fold0", fold.train[:rows], fold.val, fold.test)
    config = TrainConfig.from_dict({**spec.train_defaults, "epochs": epochs, "precision": precision,
                                    "num_threads": 1})
    model = spec.build(spec.make_config(), features.info)
    trace: list[dict] = []
    last = [cpu_s()]

    def on_epoch(metrics: dict, _trainer) -> None:
        now = cpu_s()
        trace.append({"epoch": int(metrics["epoch"]), "resident_mb": resident_mb(), "cpu_s": now - last[0],
                      "wall_s": metrics["epoch_seconds"]})
        last[0] = now
        print(f"{setting} epoch {trace[-1]['epoch']}: {trace[-1]['resident_mb']:,.0f} MB, "
              f"{trace[-1]['cpu_s']:.1f} CPU s", file=sys.stderr, flush=True)

    Trainer(model, features, np.asarray(ds.targets), split, config).fit(on_epoch)
    return {"model": name, "setting": setting, "precision": precision, "rows": rows, "trace": trace}


def resident(args: argparse.Namespace) -> None:
    header = machine(1)
    results = []
    for setting in RESIDENT_SETTINGS:
        out = subprocess.run([sys.executable, __file__, "--resident-child", setting, "--models", args.models,
                              "--epochs", str(args.epochs), "--rows", str(args.rows), "--precision", args.precision],
                             env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, text=True,
                             check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    epochs = [t["epoch"] for t in results[0]["trace"]]
    table = ["| setting | " + " | ".join(f"epoch {e}" for e in epochs) + " | CPU s per epoch (after the first) |",
             "|---|" + "---:|" * (len(epochs) + 1)]
    for r in results:
        later = [t["cpu_s"] for t in r["trace"][1:]] or [r["trace"][0]["cpu_s"]]
        table.append(f"| {r['setting']} | " + " | ".join(f"{t['resident_mb']:,.0f}" for t in r["trace"])
                     + f" | {sum(later) / len(later):.1f} |")
    body = "\n".join([
        "## CPU allocator: resident memory over a fit (`benchmarks/cpu_allocator.py --resident`)", "",
        f"{results[0]['model']}, {args.precision}, 1 thread, the trainer's `fit` on the first {args.rows} training rows "
        f"of matbench_phonons fold 0 (val rows scored every epoch); resident size (MB) after each epoch, one process "
        f"per setting: `default` glibc as is; `keep` the trainer's mallopt settings without trimming (the trainer "
        f"until 2026-12-04); `keep+trim` the trainer now (`malloc_trim` after an epoch that leaves over 1 GiB free in malloc). CPU: {header}, "
        f"{load_now()} at the end", "", *table, ""])
    publish(RESIDENT_SECTION, body, write=not args.no_write)


def run(name: str, steps: int, setting: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if setting == "tunables":
        env["GLIBC_TUNABLES"] = TUNABLES
    out = subprocess.run([sys.executable, __file__, "--child", setting, "--models", name, "--steps", str(steps)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="alignn,cgcnn")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2, help="rounds of all settings, interleaved")
    ap.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--resident", action="store_true", help="resident memory over a fit instead (see above)")
    ap.add_argument("--epochs", type=int, default=8, help="--resident: epochs per fit")
    ap.add_argument("--rows", type=int, default=512, help="--resident: training rows")
    ap.add_argument("--precision", default="bf16", help="--resident: fp32 or bf16")
    ap.add_argument("--resident-child", choices=RESIDENT_SETTINGS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.resident_child:
        print(json.dumps(resident_child(args.models, args.resident_child, args.epochs, args.rows, args.precision)))
        return
    if args.resident:
        if args.models == ap.get_default("models"):
            args.models = "crysformer"
        resident(args)
        return
    if args.child:
        print(json.dumps(child(args.models, args.steps, args.child)))
        return
    header = machine(1)
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for _ in range(args.repeats):
            for setting in SETTINGS:  # interleaved: a drift in the machine's load hits every setting
                r = run(name, args.steps, setting)
                results.append(r)
                print(f"{name} {setting}: {r['wall_s']:.1f} s wall, user {r['user_s']:.1f}, system {r['system_s']:.1f}, "
                      f"{r['minor_faults']:,} page faults", file=sys.stderr, flush=True)
    table = ["| model | allocator | steps | wall (s) | per step (s) | user (s) | system (s) | minor page faults |"
             " max RSS (MB) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in dict.fromkeys(r["model"] for r in results):
        for setting in SETTINGS:
            rs = [r for r in results if r["model"] == name and r["setting"] == setting]
            mean = lambda key: sum(r[key] for r in rs) / len(rs)  # noqa: E731
            table.append(f"| {name} | {setting} | {rs[0]['steps']} | {mean('wall_s'):.1f} | "
                         f"{mean('wall_s') / rs[0]['steps']:.3f} | {mean('user_s'):.1f} | {mean('system_s'):.1f} | "
                         f"{mean('minor_faults'):,.0f} | {max(r['max_rss_mb'] for r in rs):,.0f} |")
    body = "\n".join([
        "## CPU allocator: glibc defaults vs freed memory kept (`benchmarks/cpu_allocator.py`)", "",
        f"Training steps (batch 32, fp32, eager, 1 thread) on matbench_phonons fold 0 with each model's sweep "
        f"graphs, after 5 warm-up steps; means of {args.repeats} interleaved rounds, one process each. "
        f"`default`: glibc malloc as is; `tunables`: `GLIBC_TUNABLES={TUNABLES}`; `harness`: "
        f"`harness.training.allocator.keep_freed_memory()` (mallopt, what the trainer calls on CPU). "
        f"CPU: {header}, {load_now()} at the end", "", *table, ""])
    publish(SECTION, body, write=not args.no_write)


if __name__ == "__main__":
    main()
