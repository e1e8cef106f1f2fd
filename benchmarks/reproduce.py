"""Reproduce published composition-model numbers with the papers' own recipes (issue 3).

    python benchmarks/reproduce.py run    [--models lgdcnn,rf,irnet17,plainnet17,elemnet]
                                          [--datasets aflow__ael_bulk_modulus_vrh,...] [--seed 0]
                                          [--threads 1] [--epochs N] [--precision fp32|bf16]
    python benchmarks/reproduce.py report   # re-render the RESULTS.md section from the records

What is compared, on the CrabNet paper's fixed train/val/test splits of
aflow__ael_bulk_modulus_vrh, aflow__ael_shear_modulus_vrh, mp_bulk_modulus, mp_shear_modulus:

- L-G-DCNN (CrabNet's recipe: RobustL1, Lamb + Lookahead, cyclic LR, SWA, 300 epochs) vs the
  L-G-DCNN preprint's 8.221 / 8.946 / 10.612 / 11.701 GPa;
- RF on the 145 Magpie attributes vs the CrabNet paper's RF column (11.907 / 10.094 / 14.358 /
  12.777); ours is scikit-learn's RandomForestRegressor with the registry defaults (100 trees);
- IRNet-17 vs PlainNet-17 vs ElemNet (Adam, lr 1e-4, batch 32, MAE; 100 epochs, best val epoch):
  the IRNet paper's claim is that the residual net beats the plain nets. ElemNet's number in the
  CrabNet paper is shown beside ours;
- ``--precision bf16`` (e.g. ``--models crabnet``): the same recipe in bf16 mixed precision, shown
  beside the fp32 fit of the same model, dataset and seed (test MAE and minutes: is the speed-up
  free?).

Each model trains once (``--seed``) on the split's training rows; the val rows choose the best
epoch (and SWA vs best epoch), as in the trainer everywhere else; the test MAE is the figure.
Target: within 5 % of each published number or better; every figure is reported either way.

Every finished fit is appended to a JSON-lines record (``benchmarks/records/reproduce.jsonl``, committed)
so that several ``run`` processes (one per core) and several sessions add up; each ``run`` then
re-renders the ``reproduce`` section of ``benchmarks/RESULTS.md`` from all records (the latest
record per model, dataset, seed and precision wins). CPU cost: L-G-DCNN ~40-60 min per dataset on 2 cores;
the FC nets ~5-10 min; RF seconds. Progress goes to stderr every 10 epochs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_record, hardware_legend, load_records, reference_rows, publish, write_section  # noqa: E402
from harness.provenance import hardware  # noqa: E402

SECTION = "reproduce"
DATASETS = ("aflow__ael_bulk_modulus_vrh", "aflow__ael_shear_modulus_vrh", "mp_bulk_modulus", "mp_shear_modulus")
MODELS = ("lgdcnn", "rf", "irnet17", "plainnet17", "elemnet")
# Our registry name -> the model column of ../shared/reference_results.csv that it is compared with.
PUBLISHED_AS = {"lgdcnn": "L-G-DCNN", "lgdcnn_v1": "L-G-DCNN-V1", "rf": "RF", "elemnet": "ElemNet",
                "crabnet": "CrabNet", "hotcrab": "HotCrab", "roost": "Roost"}
FALLBACK = {  # the same numbers, for a checkout without ../shared
    ("L-G-DCNN", "aflow__ael_bulk_modulus_vrh"): 8.221, ("L-G-DCNN", "aflow__ael_shear_modulus_vrh"): 8.946,
    ("L-G-DCNN", "mp_bulk_modulus"): 10.612, ("L-G-DCNN", "mp_shear_modulus"): 11.701,
    ("RF", "aflow__ael_bulk_modulus_vrh"): 11.907, ("RF", "aflow__ael_shear_modulus_vrh"): 10.094,
    ("RF", "mp_bulk_modulus"): 14.358, ("RF", "mp_shear_modulus"): 12.777,
}
TOLERANCE = 0.05
KEY = ("model", "dataset", "seed", "precision")  # of records: the latest per key is shown


def published() -> dict[tuple[str, str], float]:
    """(reference model name, dataset) -> published test MAE, from ../shared/reference_results.csv."""
    values = dict(FALLBACK)
    for row in reference_rows():
        if row["suite"] == "crabnet28" and row["metric"] == "mae_test" and row["dataset"] in DATASETS:
            values[(row["model"], row["dataset"])] = float(row["value"])
    return values


def fit_one(name: str, dataset_name: str, seed: int, epochs: int | None, precision: str = "fp32") -> dict:
    """Train ``name`` with its paper recipe on the dataset's fixed split; the record to append."""
    import numpy as np
    import torch

    from harness.data import load_dataset
    from harness.featurize import featurize
    from harness.models import get_model
    from harness.training import TrainConfig, Trainer, n_parameters, seed_everything

    spec = get_model(name)
    ds = load_dataset(dataset_name)
    split = ds.split(ds.splits[0].name)
    features = featurize(spec.input_kind, ds)  # cached on disk
    recipe = {**spec.train_defaults, "seed": seed}
    if epochs:
        recipe["epochs"] = epochs
    if spec.framework != "sklearn":
        recipe["precision"] = precision
    start = time.perf_counter()
    record = {"model": name, "dataset": dataset_name, "seed": seed, "split": split.name,
              "n_train": int(len(split.train)), "n_val": int(len(split.val)), "n_test": int(len(split.test)),
              "data_sha256": ds.sha256, "threads": torch.get_num_threads(), "hardware": hardware(),
              "date": time.strftime("%Y-%m-%d %H:%M"),
              "precision": recipe.get("precision", "fp32")}
    if spec.framework == "sklearn":
        from harness.training.sklearn_fit import final_sklearn

        out = final_sklearn(spec, spec.make_config(), features, ds.targets, split, seed)
        record.update(test_mae=out["metrics"]["test_mae"], val_mae=out["metrics"]["val_mae"],
                      epochs=None, best_epoch=None, parameters=None, recipe="scikit-learn defaults of the registry")
    else:
        config = TrainConfig.from_dict(recipe)
        seed_everything(seed)
        model = spec.build(spec.make_config(), features.info)
        trainer = Trainer(model, features, np.asarray(ds.targets), split, config)

        def progress(metrics: dict, _trainer) -> None:
            if metrics["epoch"] % 10 == 0 or metrics["epoch"] == 1:
                print(f"{name} {dataset_name} epoch {int(metrics['epoch'])}/{config.epochs}: train MAE "
                      f"{metrics['train_mae']:.2f}, val MAE {metrics['val_mae']:.2f} "
                      f"({metrics['epoch_seconds']:.1f} s/epoch)", file=sys.stderr, flush=True)

        fit = trainer.fit(progress)
        record.update(test_mae=trainer.evaluate(split.test)["mae"], val_mae=fit.best_val_mae,
                      epochs=fit.epochs_run, best_epoch=fit.best_epoch, used_swa=fit.used_swa,
                      parameters=n_parameters(model),
                      recipe={k: v for k, v in recipe.items() if k not in ("seed", "precision")})
    record["minutes"] = (time.perf_counter() - start) / 60
    return record


def render(records: list[dict]) -> str:
    """The RESULTS.md section: one row per (model, dataset) fit, and the IRNet-vs-plain verdict."""
    from harness.models import get_model

    reference = published()
    order = {m: i for i, m in enumerate(MODELS)}
    machines, legend = hardware_legend(records)
    records = sorted(records, key=lambda r: (order.get(r["model"], 99), r["model"], DATASETS.index(r["dataset"])
                                             if r["dataset"] in DATASETS else 99, r["seed"], precision_of(r) != "fp32"))
    rows = ["| model | dataset | seed | train/val/test | epochs (best) | test MAE (GPa) | published | ours / published "
            "| within 5 % or better | minutes (threads, machine) |",
            "|---|---|---:|---|---:|---:|---:|---:|---|---:|"]
    for r in records:
        pub = reference.get((PUBLISHED_AS.get(r["model"], ""), r["dataset"]))
        ratio = r["test_mae"] / pub if pub else None
        verdict = "–" if ratio is None else ("yes" if ratio <= 1 + TOLERANCE else "**no**")
        epochs = "–" if r["epochs"] is None else f"{r['epochs']} ({r['best_epoch']}{', SWA' if r.get('used_swa') else ''})"
        label = get_model(r["model"]).label + (" [bf16]" if precision_of(r) == "bf16" else "")
        rows.append(
            f"| {label} | {r['dataset']} | {r['seed']} | {r['n_train']}/{r['n_val']}/{r['n_test']} | {epochs} "
            f"| **{r['test_mae']:.3f}** | {'–' if pub is None else f'{pub:.3f}'} | "
            f"{'–' if ratio is None else f'{ratio:.3f}'} | {verdict} | {r['minutes']:.1f} ({r['threads']}, {machines.get(r.get('hardware'), '?')}) |")
    lines = ["## Reproducing published composition results (`benchmarks/reproduce.py`)", "",
             "Paper recipes on the CrabNet paper's fixed splits, one seed per fit. "
             "Published: L-G-DCNN preprint (Fig. 4) for L-G-DCNN; CrabNet paper Table 2 for CrabNet, RF and ElemNet. "
             "[bf16]: the same recipe in bf16 mixed precision (`--precision bf16`); the rest fp32. "
             "The RF is scikit-learn's with 100 trees on 145 Magpie attributes; the FC nets train 100 epochs "
             "(Adam 1e-4, batch 32, MAE) and keep the best val epoch. "
             + legend, "", *rows, ""]
    lines += irnet_verdict(records)
    lines += precision_comparison(records)
    return "\n".join(lines)


def precision_of(record: dict) -> str:
    return record.get("precision") or "fp32"  # records from before --precision are fp32


def precision_comparison(records: list[dict]) -> list[str]:
    """Fits run in both precisions (same model, dataset, seed, epochs): test MAE and time side by side."""
    from harness.models import get_model

    torch_fits = [r for r in records if r["epochs"] is not None]
    by = {(r["model"], r["dataset"], r["seed"], (r.get("recipe") or {}).get("epochs"), precision_of(r)): r
          for r in torch_fits}
    rows = []
    for (model, dataset, seed, epochs, precision), bf16 in sorted(by.items(), key=str):
        fp32 = by.get((model, dataset, seed, epochs, "fp32"))
        if precision != "bf16" or fp32 is None:
            continue
        rows.append(f"| {get_model(model).label} | {dataset} | {seed} | {epochs} | {fp32['test_mae']:.3f} | "
                    f"{bf16['test_mae']:.3f} | {bf16['test_mae'] / fp32['test_mae']:.3f} | "
                    f"{fp32['minutes']:.1f} / {bf16['minutes']:.1f} ({fp32['minutes'] / bf16['minutes']:.2f}×) |")
    if not rows:
        return []
    return ["bf16 mixed precision vs fp32 (same recipe, seed and epochs; minutes as measured, on a machine that may "
            "have run other work beside them):", "",
            "| model | dataset | seed | epochs | test MAE fp32 | test MAE bf16 | bf16 / fp32 | minutes fp32 / bf16 (speed-up) |",
            "|---|---|---:|---:|---:|---:|---:|---:|", *rows, ""]


def irnet_verdict(records: list[dict]) -> list[str]:
    """Per dataset: does IRNet-17 beat PlainNet-17 and ElemNet (the IRNet paper's claim)?"""
    by = {(r["model"], r["dataset"]): r["test_mae"] for r in records if r["seed"] == 0}
    out = []
    for dataset in DATASETS:
        trio = {m: by.get((m, dataset)) for m in ("irnet17", "plainnet17", "elemnet")}
        if None in trio.values():
            continue
        best = min(trio, key=trio.get)
        out.append(f"- {dataset}: IRNet-17 {trio['irnet17']:.3f}, PlainNet-17 {trio['plainnet17']:.3f}, "
                   f"ElemNet {trio['elemnet']:.3f} GPa → {'residual net wins' if best == 'irnet17' else best + ' wins'}")
    return (["IRNet-17 vs PlainNet-17 vs ElemNet (seed 0):", "", *out, ""] if out else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("run", "report"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs (not the paper's)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                    help="torch models: fp32, or bf16 mixed precision (compare with an fp32 fit of the same seed)")
    ap.add_argument("--no-write", action="store_true",
                    help="print only: append no record, leave RESULTS.md alone (a trial run)")
    args = ap.parse_args()

    if args.action == "run":
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
            for name in [m.strip() for m in args.models.split(",") if m.strip()]:
                record = fit_one(name, dataset, args.seed, args.epochs, args.precision)
                print(f"{name} {dataset}: test MAE {record['test_mae']:.3f} ({record['minutes']:.1f} min)",
                      file=sys.stderr, flush=True)
                if not args.no_write:  # keep the records and RESULTS.md current after every fit
                    append_record(SECTION, record)
                    write_section(SECTION, render(load_records(SECTION, KEY)))
    body = render(load_records(SECTION, KEY))
    publish(SECTION, body, write=not args.no_write)


if __name__ == "__main__":
    main()
