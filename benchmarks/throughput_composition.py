"""Training and inference throughput (samples/s) of every composition model, plus featurization rates.

    python benchmarks/throughput_composition.py [--dataset aflow__ael_bulk_modulus_vrh] [--n-train 512]
                                                [--epochs 2] [--models all] [--device auto] [--threads 0]
                                                [--precision fp32,bf16]

Every model registered at run time whose input is a composition (element tokens, element
fractions or Magpie attributes) is measured with its paper-default architecture and training
recipe (optimizer, learning rate, batch size and loss from its registry entry), on ``--n-train``
real training rows of the dataset:

- torch models: the shared ``Trainer`` runs ``--epochs`` epochs; the fastest epoch after the
  first (warm-up) counts, its time including the scoring of 32 val rows as every epoch does.
  Inference: eval-mode, no-gradient passes over ``--n-infer`` rows in batches of 256.
- scikit-learn models: ``fit`` on the same rows; inference: ``predict`` on ``--n-infer`` rows.
- ``--precision``: the torch models once per precision (``bf16`` = the trainer's mixed precision,
  forward passes under bfloat16 autocast, in training and inference alike).

Every timing but the training epochs (already several) is the best of ``--repeats`` runs: on a
shared machine the minimum is the figure least disturbed by other jobs.

Featurization of the whole dataset is timed once per input kind; Magpie both cold (cache
disabled: matminer runs) and from its on-disk cache. Runs on CUDA when available
(``--device auto``). Prints a table and replaces this script's section of ``benchmarks/RESULTS.md``
(one section per device type; other sections are kept). The machine's load average is
recorded: on a shared machine the numbers move with it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine, publish  # noqa: E402

COMPOSITION_KINDS = ("composition_tokens", "element_fractions", "magpie")
INFER_BATCH = 256


def timed(fn, repeats: int = 1):
    """(result of the last call, fastest of ``repeats`` calls in seconds)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def featurize_all(dataset, repeats: int) -> tuple[dict, list[tuple[str, float, str]]]:
    """Features per input kind, and (what, seconds, note) featurization timings on the whole dataset."""
    from harness.featurize import FEATURIZERS
    from harness.featurize.magpie import MagpieFeatures, _n_jobs

    features, rows = {}, []
    for kind in ("composition_tokens", "element_fractions"):
        features[kind], seconds = timed(lambda: FEATURIZERS[kind](dataset), repeats)
        rows.append((kind, seconds, ""))
    jobs = _n_jobs(dataset.frame["formula"].nunique())
    _, seconds = timed(lambda: MagpieFeatures.from_dataset(dataset, cache=False), repeats)
    rows.append(("magpie, cold (matminer)", seconds, f"{jobs} process(es)"))
    MagpieFeatures.from_dataset(dataset)  # make sure the cache file exists
    features["magpie"], seconds = timed(lambda: MagpieFeatures.from_dataset(dataset), repeats)
    rows.append(("magpie, cached (.npz)", seconds, ""))
    return features, rows


def torch_throughput(spec, features, targets, split, infer_rows, epochs: int, device, repeats: int,
                     precision: str = "fp32") -> dict:
    import torch

    from harness.training import TrainConfig, Trainer, n_parameters
    from harness.training.trainer import autocast

    torch.manual_seed(0)
    model = spec.build(spec.make_config(), features.info)
    config = TrainConfig.from_dict({**spec.train_defaults, "epochs": epochs, "seed": 0, "precision": precision})
    trainer = Trainer(model, features, targets, split, config, device=device)
    history = trainer.fit().history
    epoch_seconds = min(h["epoch_seconds"] for h in history[1:]) if len(history) > 1 else history[0]["epoch_seconds"]

    model = trainer.model.eval()

    def infer(rows: np.ndarray) -> None:
        with torch.no_grad(), autocast(config, device):  # as Trainer.predict
            for batch in features.batches(rows, np.zeros(len(rows)), INFER_BATCH):
                model(batch.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()

    infer(infer_rows[:INFER_BATCH])  # warm-up: one batch
    _, seconds = timed(lambda: infer(infer_rows), repeats)
    return {"params": f"{n_parameters(model):,}", "batch": trainer.batch_size,
            "train": len(split.train) / epoch_seconds, "infer": len(infer_rows) / seconds}


def sklearn_throughput(spec, features, targets, split, infer_rows, repeats: int) -> dict:
    estimator = spec.build(spec.make_config(), features.info)
    x_train, y_train = features.matrix(split.train), targets[split.train]
    _, fit_seconds = timed(lambda: estimator.fit(x_train, y_train), repeats)
    x_infer = features.matrix(infer_rows)
    _, predict_seconds = timed(lambda: estimator.predict(x_infer), repeats)
    return {"params": "n/a", "batch": "all", "train": len(split.train) / fit_seconds,
            "infer": len(infer_rows) / predict_seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="aflow__ael_bulk_modulus_vrh")
    ap.add_argument("--n-train", type=int, default=512, help="training rows (the first of the train split)")
    ap.add_argument("--n-infer", type=int, default=1024, help="rows predicted for the inference rate")
    ap.add_argument("--epochs", type=int, default=3, help="torch epochs; the first is warm-up")
    ap.add_argument("--repeats", type=int, default=2, help="best of N for inference, fits, featurization")
    ap.add_argument("--models", default="all", help="comma-separated names, or 'all' composition models")
    ap.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--precision", default="fp32",
                    help="fp32, bf16 or both (fp32,bf16): TrainConfig.precision of the torch models")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()

    import torch

    from harness.data import Split, load_dataset
    from harness.models import all_models, get_model, resolve_models
    from harness.provenance import git_commit, hardware

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    header = machine(torch.get_num_threads())
    names = ([n for n, s in all_models().items() if s.input_kind in COMPOSITION_KINDS] if args.models == "all"
             else resolve_models(args.models))

    dataset = load_dataset(args.dataset)
    fixed = dataset.splits[0]
    split = Split("bench", fixed.train[: args.n_train], fixed.val[:32], fixed.test[:32])
    infer_rows = np.concatenate([fixed.train, fixed.val, fixed.test])[: args.n_infer]
    features, feat_rows = featurize_all(dataset, args.repeats)
    targets = dataset.targets

    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    results = []
    for name in names:
        spec = get_model(name)
        for precision in (precisions if spec.framework != "sklearn" else ["n/a"]):
            print(f"{name} {precision} ...", file=sys.stderr, flush=True)
            try:
                if spec.framework == "sklearn":
                    row = sklearn_throughput(spec, features[spec.input_kind], targets, split, infer_rows,
                                             args.repeats)
                else:
                    row = torch_throughput(spec, features[spec.input_kind], targets, split, infer_rows,
                                           args.epochs, device, args.repeats, precision)
            except Exception as error:  # one broken model must not lose the others' figures
                row = {"params": "", "batch": "", "train": float("nan"), "infer": float("nan"),
                       "error": f"{type(error).__name__}: {error}"[:120]}
            results.append((name, spec, {**row, "precision": precision}))

    n_rows = len(dataset)
    lines = [
        f"## Composition models: throughput (`benchmarks/throughput_composition.py`, {device.type})",
        "",
        f"{args.dataset}: {len(split.train)} training rows, {args.epochs} epoch(s) (fastest after the first "
        f"counts; torch epochs include scoring 32 val rows), inference on {len(infer_rows)} rows in batches "
        f"of {INFER_BATCH} (torch); other timings best of {args.repeats}. Paper-default architectures and "
        f"recipes; precision bf16 = the trainer's mixed precision (bfloat16 autocast in training; the "
        f"inference column under autocast too, though the trainer predicts in float32). {hardware()}; device "
        f"{device}; {header}; commit {git_commit()}.",
        "",
        "| model | input | framework | precision | parameters | train batch | train samples/s | inference samples/s |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for name, spec, row in results:
        train = f"{row['train']:,.0f}" if np.isfinite(row["train"]) else f"failed: {row.get('error', '')}"
        infer = f"{row['infer']:,.0f}" if np.isfinite(row["infer"]) else ""
        lines.append(f"| {spec.label} (`{name}`) | {spec.input_kind} | {spec.framework} | {row['precision']} "
                     f"| {row['params']} "
                     f"| {row['batch']} | {train} | {infer} |")
    lines += ["", f"Featurization of all {n_rows:,} rows ({dataset.frame['formula'].nunique():,} unique formulas):", "",
              "| featurizer | seconds | rows/s | note |", "|---|---:|---:|---|"]
    for what, seconds, note in feat_rows:
        lines.append(f"| {what} | {seconds:.3f} | {n_rows / seconds:,.0f} | {note} |")
    body = "\n".join(lines) + "\n"
    publish(f"throughput_composition_{device.type}", body, write=not args.no_write)


if __name__ == "__main__":
    main()
