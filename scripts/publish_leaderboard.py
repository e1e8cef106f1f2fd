"""Publish a leaderboard job's pages into leaderboards/, each dataset only when it holds every published result.

    python scripts/publish_leaderboard.py [PAGES] [--apply]
    python scripts/publish_leaderboard.py --incomplete DATASET[,DATASET…] --models M1,M2,…

PAGES defaults to ~/.cache/harness/leaderboard-runs/pages (scripts/first_leaderboard.sh's). Per
dataset: the new pages replace the committed ones when no published (model) result would be lost
or shown over fewer folds/seeds; a dataset that would lose one is listed and left as it is. Each
suite page is then composed from its datasets' records (new and kept), and README.md from every
suite's index.json. Without --apply it only says what would happen. Exit 0: every dataset of
PAGES covered (and, with --apply, copied); 1: some dataset was left as it is (the covered ones
are still copied with --apply).

--incomplete: exit 0 when leaderboards/ holds a complete result of every model on each dataset
(every fold, no failed fit), else print what it lacks and exit 1 (first_leaderboard.sh skips the
stages of a dataset that is complete).
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
    parser.add_argument("--models", default="", help="with --incomplete: the models each dataset must have")
    args = parser.parse_args()
    published = args.published
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
        print(f"{suite}: {args.pages} holds every published result of {', '.join(datasets)}"
              + (f"; copied into {published}" if args.apply else ""))
    if args.apply and taken:
        print(f"suite pages and README.md composed again; review `git status {published.name}` and commit")
    return 1 if lacking else 0


if __name__ == "__main__":
    sys.exit(main())
