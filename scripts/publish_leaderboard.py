"""Publish a leaderboard job's pages into leaderboards/ only when they hold every published result.

    python scripts/publish_leaderboard.py [PAGES] [--apply]

PAGES defaults to ~/.cache/harness/leaderboard-runs/pages (scripts/first_leaderboard.sh's). Without
--apply it only says what the new pages lack. Exit 0: covered (and, with --apply, copied);
1: something would be lost (listed), nothing copied.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.leaderboard.coverage import missing_results  # noqa: E402


def main() -> int:
    cache = Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pages", nargs="?", type=Path, default=cache / "leaderboard-runs" / "pages")
    parser.add_argument("--apply", action="store_true", help="copy the pages into leaderboards/ when covered")
    args = parser.parse_args()
    published = ROOT / "leaderboards"
    if not (args.pages / "README.md").is_file():
        print(f"no generated pages in {args.pages}", file=sys.stderr)
        return 1
    missing = missing_results(published, args.pages)
    if missing:
        print(f"{args.pages} lacks {len(missing)} published result(s); leaderboards/ left as it is:")
        print("\n".join(f"  {m}" for m in missing))
        return 1
    print(f"{args.pages} holds every published result")
    if args.apply:
        # generated files only (never edited by hand): the new pages replace them, the rest stays
        shutil.copytree(args.pages, published, dirs_exist_ok=True)
        print(f"copied into {published}; review `git status leaderboards` and commit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
