"""Keep freed tensor memory in the process on CPU (glibc malloc), instead of unmapping it.

glibc's malloc serves every request above its mmap threshold (128 KiB, adapting up to 32 MiB)
with a fresh ``mmap`` and gives it back with ``munmap`` on free. A training step allocates and
frees the same large activations every step, so each step faults them in again page by page:
the ALIGNN runs on matbench_phonons spent ~21 % of their CPU time in the kernel for that. Two
``mallopt`` settings serve large blocks from the heap and keep what is freed for the next step
(the CPU tuning guides of Intel's extension for PyTorch and of DGL get the same effect from
tcmalloc/jemalloc through ``LD_PRELOAD``; those need a system package and a restart, this
needs neither).
Measured by ``benchmarks/cpu_allocator.py``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD = -1  # <malloc.h>: keep up to this many free bytes at the heap's top
M_MMAP_MAX = -4  # <malloc.h>: at most this many blocks served by mmap (0: none)
TRIM_THRESHOLD = 1 << 30


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Set the two ``mallopt`` options in this process (once); False where there is no glibc.

    Memory that a step frees stays in the process (up to 1 GiB at the heap's top) for the next
    step, so the resident size stays at its peak rather than falling between steps.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
