"""Publish a leaderboard job's pages into leaderboards/, per dataset and per model, losing no published result.

    python scripts/publish_leaderboard.py [PAGES] [--apply]
    python scripts/publish_leaderboard.py --incomplete DATASET[,DATASET…] --models M1,M2,…
    python scripts/publish_leaderboard.py --to-run DATASET[,DATASET…] --models M1,… --planned M1,…

PAGES defaults to ~/.cache/harness/leaderboard-runs/pages (scripts/first_leaderboard.sh's). Per
dataset, where PAGES hold its run data (runs.json.gz): each model whose new result is over as many
folds/seeds as the published one (or that is new), with no final fit still running, is taken, the
published ones kept, and the dataset's page computed again over all of them. Published pages
without run data (written before it existed) keep nothing, so they are replaced only when the
taken models hold every result they show (none over fewer folds/seeds), else listed and left as
they are. Each suite page is then composed from its datasets' records (new, merged and
kept), and README.md from every suite's index.json. Without --apply it only says what would
happen. Exit 0: every dataset of PAGES covered (and, with --apply, copied); 1: some dataset was
left as it is (the covered ones are still copied with --apply).

--incomplete: exit 0 when leaderboards/ holds a complete result of every model on each dataset
(every fold, no failed fit), else print what it lacks and exit 1.

--to-run: print (comma-separated) which of a stage's --models must still run on its datasets for
leaderboards/ to be complete: the models a dataset with run data lacks; on pages without run
data (replaced only as a whole) all of them, unless the dataset shows every --planned model
(every stage's) complete. Empty: the stage can be skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))



def main() -> int:
    cache = Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pages", nargs="?", type=Path, default=cache / "leaderboard-runs" / "pages")
    parser.add_argument("--apply", action="store_true", help="copy the covered datasets' pages into leaderboards/")
    parser.add_argument("--all", action="store_true", help="list every lacking result (default: the first 10 per suite)")
    parser.add_argument("--published", type=Path, default=ROOT / "leaderboards", help="the committed pages (default leaderboards/)")
    parser.add_argument("--incomplete", metavar="DATASETS", help="check these datasets of the published pages (see above)")
    parser.add_argument("--models", default="", help="with --incomplete: the models each dataset must have; "
                        "with --to-run: the stage's models")
    parser.add_argument("--to-run", metavar="DATASETS", help="print the models a stage must run (see above)")
    parser.add_argument("--planned", default="", help="with --to-run: every stage's models on those datasets")
    args = parser.parse_args()
    published = args.published
    split = lambda text: [x for x in text.split(",") if x]  # noqa: E731
    if args.to_run:
        from harness.leaderboard.records import models_to_run

        print(",".join(models_to_run(published, split(args.to_run), split(args.models), split(args.planned))))
        return 0
    if args.incomplete:
        from harness.leaderboard.records import incomplete  # light: no plotting imports

        missing = [m for d in args.incomplete.split(",")
                   for m in incomplete(published, d, [m for m in args.models.split(",") if m])]
        for line in missing[:10] + ([f"… and {len(missing) - 10} more"] if len(missing) > 10 else []):
            print(line)
        return 1 if missing else 0
    if not (args.pages / "README.md").is_file():
        print(f"no generated pages in {args.pages}", file=sys.stderr)
        return 1
    from harness.leaderboard.publishing import publish_suites

    taken, lacking = publish_suites(published, args.pages, apply=args.apply)
    for suite, missing in lacking.items():
        print(f"{suite}: {args.pages} lacks {len(missing)} published result(s); those datasets left as they are:")
        shown = missing if args.all else missing[:10]
        print("\n".join(f"  {m}" for m in shown))
        if len(shown) < len(missing):
            print(f"  … and {len(missing) - len(shown)} more (--all lists them)")
    for suite, datasets in taken.items():
        print(f"{suite}: from {args.pages}: {'; '.join(datasets)}" + (f"; copied into {published}" if args.apply else ""))
    if args.apply and taken:
        print(f"suite pages and README.md composed again; review `git status {published.name}` and commit")
    return 1 if lacking else 0


if __name__ == "__main__":
    sys.exit(main())
