"""How far do two runs of the same leaderboard budget agree? Cell by cell, per model.

    python benchmarks/rerun_agreement.py [A] [B] [--no-write]

A defaults to the committed ``leaderboards/``, B to the pages of ``scripts/first_leaderboard.sh``
(``$HARNESS_CACHE/leaderboard-runs/pages``). Both are read from their ``<suite>/results.csv``
exports (every number of the tables). Compared: the measured (suite, dataset, model) cells that
both hold over the same number of seeds/folds and from sweeps of the same budget (max epochs and
trials per search). Per model: how many cells are identical (to 9 significant digits: the linear
models and SVR refitted on another CPU differed in the 15th), the median and largest relative
difference of the test MAE, and how many differences are within the two cells' seed/fold
standard deviations added together; per suite, in how many datasets the best model is the same.

Why it matters: a leaderboard ranks models whose MAEs are often a few per cent apart; this says
how much of such a gap a second run on another machine moves on its own. Replaces its own section
of RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._results import publish  # noqa: E402
from harness.leaderboard.publishing import KEY, measured_results  # noqa: E402

BUDGET = ["max_epochs", "num_samples", "subsample"]
SAME = 1e-9  # relative: Linear/Ridge/ElasticNet/SVR on an EPYC and a Xeon differed in the 15th digit


def measured(pages: Path) -> pd.DataFrame:
    rows = measured_results(pages)
    if rows.empty:
        raise SystemExit(f"{pages}: no measured result in <suite>/results.csv (pages of `harness leaderboard --out`)")
    return rows.fillna({"mae_std": 0.0, "subsample": "all rows"})


def compare(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """One row per cell both measured with the same budget and number of seeds/folds."""
    both = a.merge(b, on=KEY, suffixes=("_a", "_b"))
    same = (both["n_a"] == both["n_b"])
    for col in BUDGET:
        same &= both[f"{col}_a"].astype(str) == both[f"{col}_b"].astype(str)
    both = both[same].copy()
    diff = (both["mae_b"] - both["mae_a"]).abs()
    both["rel_diff"] = diff / both["mae_a"].abs()
    both["identical"] = both["rel_diff"] <= SAME
    both["within_std"] = diff <= both["mae_std_a"] + both["mae_std_b"] + SAME * both["mae_a"].abs()
    return both


def best_model_kept(both: pd.DataFrame) -> pd.DataFrame:
    """Per suite: datasets compared (≥ 2 models in both runs), those whose best model is the same,
    and where it changed, A's best and B's best."""
    rows = []
    for suite, group in both.groupby("suite"):
        kept, total, changed = 0, 0, []
        for dataset, d in group.groupby("dataset"):
            if len(d) < 2:
                continue
            total += 1
            best_a, best_b = d.loc[d["mae_a"].idxmin(), "label_a"], d.loc[d["mae_b"].idxmin(), "label_a"]
            kept += best_a == best_b
            if best_a != best_b:
                changed.append(f"{dataset}: {best_a} → {best_b}")
        rows.append({"suite": suite, "datasets": total, "same best model": kept, "changed": "; ".join(changed)})
    return pd.DataFrame(rows)


def render(a_dir: Path, b_dir: Path, both: pd.DataFrame) -> str:
    per_model = both.groupby("label_a").agg(
        cells=("mae_a", "size"), identical=("identical", "sum"),
        median_rel=("rel_diff", "median"), max_rel=("rel_diff", "max"), within=("within_std", "sum"),
    ).reset_index().sort_values(["identical", "label_a"], ascending=[False, True])
    lines = [
        "## Two runs of one leaderboard budget (`benchmarks/rerun_agreement.py`)",
        "",
        f"A = `{a_dir}` ({', '.join(sorted(set(both['hardware_a'])))}), "
        f"B = `{b_dir}` ({', '.join(sorted(set(both['hardware_b'])))}); cells measured in both with the "
        "same max epochs, trials per search, subsample and number of seeds/folds: "
        f"{len(both)}. *identical*: the same test MAE to 9 significant digits; *relative difference*: |B − A| / A of "
        "the test MAE (mean over seeds or folds); *within std*: |B − A| ≤ std A + std B (over seeds or folds).",
        "",
        "| model | cells | identical | median relative difference | largest | within std |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for _, r in per_model.iterrows():
        lines.append(f"| {r['label_a']} | {r['cells']} | {r['identical']} | {r['median_rel']:.1%} | "
                     f"{r['max_rel']:.1%} | {r['within']} of {r['cells']} |")
    rel = both.loc[~both["identical"], "rel_diff"]
    lines += [
        f"| all | {len(both)} | {int(both['identical'].sum())} | "
        f"{both['rel_diff'].median():.1%} ({f'differing cells: {rel.median():.1%}' if len(rel) else 'no cell differs'}) | "
        f"{both['rel_diff'].max():.1%} | {int(both['within_std'].sum())} of {len(both)} |",
        "",
        "| suite | datasets compared | same best model | best model changed (A → B) |",
        "|---|---:|---:|---|",
    ]
    for _, r in best_model_kept(both).iterrows():
        lines.append(f"| {r['suite']} | {r['datasets']} | {r['same best model']} | {r['changed'] or '—'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    cache = Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", nargs="?", type=Path, default=ROOT / "leaderboards")
    ap.add_argument("b", nargs="?", type=Path, default=cache / "leaderboard-runs" / "pages")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = ap.parse_args()
    both = compare(measured(args.a), measured(args.b))
    if both.empty:
        print("no cell measured in both with the same budget and seeds/folds", file=sys.stderr)
        return 1
    a_name = args.a.relative_to(ROOT) if args.a.is_relative_to(ROOT) else args.a
    b_name = "leaderboard-runs/pages" if args.b == cache / "leaderboard-runs" / "pages" else args.b
    publish("rerun_agreement", render(a_name, b_name, both), write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
