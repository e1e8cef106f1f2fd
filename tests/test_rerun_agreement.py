"""benchmarks/rerun_agreement.py on the committed pages: against themselves every cell is identical;
one test MAE moved by 10 % is the one differing cell, with its relative difference."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def _agreement(a: Path, b: Path) -> dict[str, list[str]]:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "rerun_agreement.py"), str(a), str(b),
                             "--no-write"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in result.stdout.splitlines()
            if line.startswith("| ")]
    return {row[0]: row[1:] for row in rows}


def test_the_same_pages_agree_and_a_moved_cell_is_found(tmp_path):
    published = ROOT / "leaderboards"
    measured = pd.read_csv(published / "matbench" / "results.csv")
    measured = measured[(measured["kind"] == "measured") & measured["mae"].notna()]
    same = _agreement(published, published)
    cells = same["all"][0]
    assert int(cells) >= len(measured) and same["all"][1] == cells and same["all"][2] == "0.0% (no cell differs)"

    moved = tmp_path / "moved"
    shutil.copytree(published, moved)
    path = moved / "matbench" / "results.csv"
    results = pd.read_csv(path)
    row = results.index[(results["model"] == "rf") & (results["dataset"] == "matbench_steels")
                        & (results["kind"] == "measured")][0]
    results.loc[row, "mae"] *= 1.10
    results.to_csv(path, index=False)
    other = _agreement(published, moved)
    assert other["all"][:2] == [cells, str(int(cells) - 1)]
    assert other["all"][2] == "0.0% (differing cells: 10.0%)" and other["all"][3] == "10.0%"
    assert other["RF"][1] == str(int(other["RF"][0]) - 1)  # RF's cells: all but the moved one identical
