"""Shared by the benchmark scripts: machine description, RESULTS.md sections, structure samples."""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine(threads: int) -> str:
    """One line: CPU, cores, threads used, load average (this machine may be shared), versions."""
    import torch

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    load = "/".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    from harness.provenance import cpu_model

    # whether the CPU has bf16 instructions: what precision=bf16 runs on
    bf16 = "bf16 instructions" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no bf16 instructions"
    return (f"{cpu_model()} ({platform.machine()}, {bf16}), {cpus} CPU(s), {threads} torch thread(s), "
            f"load average {load} at start; python {platform.python_version()}, torch {torch.__version__}; "
            f"{time.strftime('%Y-%m-%d %H:%M')}")


def load_now() -> str:
    """The 1/5/15-minute load averages now (to put beside the ones at the start)."""
    return "/".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def hardware_legend(records: list[dict]) -> tuple[dict[str, str], str]:
    """A letter per machine that produced ``records`` (their ``hardware`` field), and the legend.

    Long benchmarks add up records from several machines and sessions; a minutes column is only
    comparable between rows of the same machine, so each row names its own (as a letter: the CPU
    strings are long). Records from before the field existed show ``?``.
    """
    names = sorted({r["hardware"] for r in records if r.get("hardware")})
    letters = {name: chr(ord("A") + i) for i, name in enumerate(names)}
    legend = "; ".join(f"{letter} = {name}" for name, letter in letters.items())
    if any(not r.get("hardware") for r in records):
        legend = (legend + "; " if legend else "") + "? = not recorded (records written before 2026-12-03)"
    return letters, f"Machines: {legend}." if legend else ""


def publish(section: str, body: str, write: bool = True) -> None:
    """Print a benchmark's section, and (``write``) replace it in RESULTS.md."""
    print(body)
    if write:
        write_section(section, body)


def write_section(section: str, body: str) -> None:
    """Replace ``<!-- section:start -->…<!-- section:end -->`` in RESULTS.md (other sections kept)."""
    import fcntl

    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    # Benchmarks often run side by side (one per core): lock the read-modify-write.
    with open(RESULTS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = RESULTS.read_text() if RESULTS.is_file() else "# Benchmark results\n"
        text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
        RESULTS.write_text(text)
    print(f"updated {RESULTS} ({section})", file=sys.stderr)


def reference_rows() -> list[dict[str, str]]:
    """The rows of ../shared/reference_results.csv (published numbers), or [] without ../shared."""
    import csv

    from harness.paths import shared_dir

    root = shared_dir()
    path = None if root is None else root / "reference_results.csv"
    if path is None or not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_structures(dataset: str, n: int, seed: int = 0):
    """A seeded sample of ``n`` rows of a structure dataset of the catalog (all rows if fewer)."""
    from harness.data import load_dataset

    # the first load on a machine parses every structure of the dataset (mp_2018_subset: 36,737 CIFs,
    # 832 s on 2 cores shared with two training runs) and caches them; the progress bar does not
    # show when stderr is not a terminal, so say it here
    print(f"loading {dataset} (the first load parses and caches every structure)", file=sys.stderr, flush=True)
    ds = load_dataset(dataset)
    return ds.subsample(n, seed=seed) if n < len(ds) else ds


RECORDS = Path(__file__).resolve().parent / "records"


def records_path(benchmark: str) -> Path:
    """``benchmarks/records/<benchmark>.jsonl``: the finished fits of a long benchmark (committed).

    Long benchmarks append one JSON line per finished fit, so that several processes (one per
    core) and several sessions add up; their RESULTS.md section is rendered from all records.
    The records live in the repository beside RESULTS.md, not in the cache: a section rendered
    from a cache that a new machine does not have would silently lose every earlier row (hours
    of CPU each). Unfinished fits' checkpoints are bulky and belong in ``work_dir``.
    """
    return RECORDS / f"{benchmark}.jsonl"


def work_dir(benchmark: str) -> Path:
    """``$HARNESS_CACHE/benchmarks/<benchmark>/``: checkpoints of unfinished fits (not committed)."""
    from harness.paths import cache_dir

    return cache_dir() / "benchmarks" / benchmark


def append_record(benchmark: str, record: dict) -> None:
    import json

    path = records_path(benchmark)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:  # one short line per write: parallel runs append safely
        f.write(json.dumps(record) + "\n")


def load_records(benchmark: str, key: tuple[str, ...]) -> list[dict]:
    """The records of ``benchmark``; of those with equal ``key`` fields the latest wins."""
    import json

    path = records_path(benchmark)
    if not path.is_file():
        return []
    latest: dict[tuple, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            latest[tuple(record.get(k, "") for k in key)] = record  # a field added later: ""
    return list(latest.values())
