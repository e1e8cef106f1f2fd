"""What the full job costs: every composition architecture on the 28 crabnet28 sets, every
structure architecture on the structure sets, with a search and K final seeds each.

Inputs are measured, not assumed: training samples/s per model from the throughput
benchmarks (the tables in benchmarks/RESULTS.md), dataset sizes from the loaders, and the
per-trial scheduling overhead from benchmarks/scheduler_at_scale.py. The budget (trials,
epochs, ASHA, seeds) is the command-line arguments. Writes docs/scaling_table.md, which
docs/scaling.md explains.

    python benchmarks/scaling_estimate.py --trials 32 --epochs 300 --seeds 3
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "RESULTS.md"


def measured_rates() -> dict[str, float]:
    """Registry name -> training samples/s (CPU, 1 thread) from the RESULTS.md tables."""
    rates = {}
    for line in RESULTS.read_text().splitlines():
        m = re.match(r"\|[^|]*\(`([a-z0-9_]+)`\)[^|]*\|(.*)\|\s*$", line)
        if not m:
            continue
        cells = [c.strip().replace(",", "") for c in m.group(2).split("|")]
        numbers = [float(c) for c in cells if re.fullmatch(r"[0-9.]+", c)]
        if len(numbers) >= 2 and m.group(1) not in rates:
            rates[m.group(1)] = numbers[-2]  # "train samples/s" precedes "inference samples/s"
    # structure models: "| ALIGNN | parameters | batch | epoch s | train structures/s | …"
    section = re.search(r"<!-- structure_throughput:start -->(.*?)<!-- structure_throughput:end -->",
                        RESULTS.read_text(), re.S)
    for line in (section.group(1).splitlines() if section else []):
        cells = [c.strip().replace(",", "") for c in line.strip("|").split("|")]
        if len(cells) == 7 and re.fullmatch(r"[0-9.]+", cells[4]):
            rates.setdefault(cells[0].lower().replace("-", ""), float(cells[4]))
    return rates


def scheduler_overhead() -> float | None:
    m = re.search(r"scheduling overhead per trial \(s·slot\) \| ([0-9.]+)", RESULTS.read_text())
    return float(m.group(1)) if m else None


def asha_epochs_per_trial(max_epochs: int, grace: int, rf: int) -> float:
    """Expected epochs of one trial under ASHA when a trial's rank is random: a fraction
    1/rf of the trials at each rung goes on to the next."""
    rungs, t = [], grace
    while t < max_epochs:
        rungs.append(t)
        t *= rf
    expected, reach = 0.0, 1.0
    for r in rungs:
        expected += reach * (1 - 1 / rf) * r
        reach /= rf
    return expected + reach * max_epochs


def train_rows() -> dict[str, tuple[str, int, int]]:
    """dataset -> (kind, training rows per split, number of splits)."""
    from harness.data import SUITES, get_spec, load_dataset

    out = {}
    for name in SUITES["crabnet28"] + SUITES.get("structures", []):
        spec = get_spec(name)
        if spec.task_type != "regression":
            continue
        try:
            dataset = load_dataset(name)
        except Exception as exc:  # a source not on this machine
            print(f"skip {name}: {exc}", file=sys.stderr)
            continue
        out[name] = (spec.kind, int(len(dataset.splits[0].train)), len(dataset.splits))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=32)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--grace", type=int, default=1)
    p.add_argument("--rf", type=int, default=2)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()

    from harness.models import get_model, model_groups

    rates = measured_rates()
    overhead = scheduler_overhead() or 3.0
    per_trial = asha_epochs_per_trial(args.epochs, args.grace, args.rf)
    sizes = train_rows()
    rows, totals = [], {}
    for group, kind in (("all-composition", "composition"), ("all-structure", "structure")):
        for model in model_groups().get(group, []):
            if model not in rates:
                rows.append((model, "not measured", "", "", ""))
                continue
            samples = 0.0
            searches = 0
            for name, (dkind, n_train, n_splits) in sizes.items():
                if dkind != kind and not (kind == "structure" and name == "matbench_phonons"):
                    continue
                searches += n_splits
                if get_model(model).framework == "sklearn":  # one fit per trial, no epochs
                    epochs = args.trials + args.seeds
                else:
                    epochs = args.trials * per_trial + args.seeds * args.epochs
                samples += n_splits * epochs * n_train
            core_h = samples / rates[model] / 3600 + searches * args.trials * overhead / 3600
            totals[model] = (core_h, searches)
            rows.append((model, f"{rates[model]:,.0f}", str(searches), f"{samples / 1e9:.2f}", f"{core_h:,.0f}"))
    total = sum(v[0] for v in totals.values())
    searches = sum(v[1] for v in totals.values())
    longest = max((v[0] / max(v[1], 1) for v in totals.values()), default=0)
    lines = [
        f"Budget: {args.trials} trials per search, ≤ {args.epochs} epochs, ASHA grace {args.grace} "
        f"reduction {args.rf} (expected {per_trial:.1f} epochs per trial), {args.seeds} final seeds of "
        f"{args.epochs} epochs. Scheduling overhead {overhead:.2f} s·slot per trial.",
        "",
        "| model | train samples/s (1 CPU thread, measured) | searches | samples seen (10⁹) | CPU core-hours |",
        "|---|---:|---:|---:|---:|",
        *[f"| {' | '.join(r)} |" for r in rows],
        "",
        f"Total: {total:,.0f} CPU core-hours over {searches} searches "
        f"(mean {total / max(searches, 1):.1f} core-hours per search; the costliest model averages "
        f"{longest:.1f} core-hours per search).",
        "",
        "| trial slots N | wall time if the work spreads evenly (h) |",
        "|---:|---:|",
        *[f"| {n} | {max(total / n, longest):,.1f} |" for n in (1, 8, 64, 512)],
    ]
    out = REPO / "docs" / "scaling_table.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
