"""Publish a leaderboard job's pages into leaderboards/, each suite only when it holds every published result.

    python scripts/publish_leaderboard.py [PAGES] [--apply]

PAGES defaults to ~/.cache/harness/leaderboard-runs/pages (scripts/first_leaderboard.sh's). Per
suite: the new pages replace the committed ones when no published (dataset, model) result would
be lost or shown over fewer folds/seeds; a suite that would lose one is listed and left as it is.
README.md is then composed from every suite's index.json. Without --apply it only says what would
happen. Exit 0: every suite of PAGES covered (and, with --apply, copied); 1: some suite was left
as it is (the covered ones are still copied with --apply).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.leaderboard.publishing import publish_suites  # noqa: E402


def main() -> int:
    cache = Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pages", nargs="?", type=Path, default=cache / "leaderboard-runs" / "pages")
    parser.add_argument("--apply", action="store_true", help="copy the covered suites' pages into leaderboards/")
    parser.add_argument("--all", action="store_true", help="list every lacking result (default: the first 10 per suite)")
    args = parser.parse_args()
    published = ROOT / "leaderboards"
    if not (args.pages / "README.md").is_file():
        print(f"no generated pages in {args.pages}", file=sys.stderr)
        return 1
    covered, lacking = publish_suites(published, args.pages, apply=args.apply)
    for suite, missing in lacking.items():
        print(f"{suite}: {args.pages} lacks {len(missing)} published result(s); leaderboards/{suite} left as it is:")
        shown = missing if args.all else missing[:10]
        print("\n".join(f"  {m}" for m in shown))
        if len(shown) < len(missing):
            print(f"  … and {len(missing) - len(shown)} more (--all lists them)")
    for suite in covered:
        print(f"{suite}: {args.pages} holds every published result" +
              (f"; copied into {published}" if args.apply else ""))
    if args.apply and covered:
        print(f"README.md composed again; review `git status {published.name}` and commit")
    return 1 if lacking else 0


if __name__ == "__main__":
    sys.exit(main())
