"""The CPU allocator settings of the trainer (``harness/training/allocator.py``), in a fresh process each:
a process's malloc options are its own, and these tests must not change the test runner's."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc options")

FRAGMENTED_HEAP = textwrap.dedent("""
    import json
    import numpy as np
    from harness.training.allocator import keep_freed_memory, release_freed_memory

    def resident_mb():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

    assert keep_freed_memory()  # large blocks from the heap, as the trainer's steps get them
    blocks = [np.ones(1 << 17) for _ in range(3000)]  # 3,000 x 1 MiB, written (resident)
    del blocks[::2]  # every other block freed: holes a trim at the heap's top cannot reach
    before = resident_mb()
    kept = release_freed_memory(keep=4 << 30)  # less free than that: nothing trimmed
    unchanged = resident_mb()
    trimmed = release_freed_memory()  # 1.5 GiB free > the default 1 GiB kept
    print(json.dumps({"before": before, "unchanged": unchanged, "after": resident_mb(), "kept": kept,
                      "trimmed": trimmed}))
""")


def test_release_freed_memory_returns_the_holes_of_a_fragmented_heap():
    out = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # ~1,500 MiB of freed 1 MiB holes stay resident until trimmed; after it ~1,500 MiB live remain.
    assert r["kept"] is False and abs(r["unchanged"] - r["before"]) < 50, r
    assert r["trimmed"] is True and r["before"] - r["after"] > 1200, r
