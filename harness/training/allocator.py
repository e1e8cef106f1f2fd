"""Keep freed tensor memory in the process on CPU (glibc malloc), instead of unmapping it.

glibc's malloc serves every request above its mmap threshold (128 KiB, adapting up to 32 MiB)
with a fresh ``mmap`` and gives it back with ``munmap`` on free. A training step allocates and
frees the same large activations every step, so each step faults them in again page by page:
the ALIGNN runs on matbench_phonons spent ~21 % of their CPU time in the kernel for that. Two
``mallopt`` settings serve large blocks from the heap and keep what is freed for the next step
(the CPU tuning guides of Intel's extension for PyTorch and of DGL get the same effect from
tcmalloc/jemalloc through ``LD_PRELOAD``; those need a system package and a restart, this
needs neither). And once per epoch, ``release_freed_memory`` hands the free pages of a
fragmented heap back (variable-size graph batches under bf16 grew it ~1 GB per epoch).
Measured by ``benchmarks/cpu_allocator.py`` (``--resident`` for the second).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

M_TRIM_THRESHOLD = -1  # <malloc.h>: keep up to this many free bytes at the heap's top
M_MMAP_MAX = -4  # <malloc.h>: at most this many blocks served by mmap (0: none)
TRIM_THRESHOLD = 1 << 30


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (glibc >= 2.33): totals over every arena, in bytes."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (has ``mallopt`` and ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
        if hasattr(libc, "mallinfo2"):  # glibc >= 2.33; without it every call trims
            libc.mallinfo2.argtypes, libc.mallinfo2.restype = (), _MallInfo2
    except (OSError, AttributeError):  # musl and other C libraries have neither
        return None
    return libc


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Set the two ``mallopt`` options in this process (once); False where there is no glibc.

    Memory that a step frees stays in the process (up to 1 GiB at the heap's top) for the next
    step, so the resident size stays at its peak rather than falling between steps.
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def free_heap_bytes() -> int | None:
    """Bytes that malloc holds free in its arenas (``mallinfo2().fordblks``); None if unknown."""
    libc = _glibc()
    return int(libc.mallinfo2().fordblks) if libc is not None and hasattr(libc, "mallinfo2") else None


def release_freed_memory(keep: int = TRIM_THRESHOLD) -> bool:
    """Return the free pages inside the heap to the OS (``malloc_trim(0)``) when malloc holds more
    than ``keep`` bytes free; True when it trimmed, False otherwise and without glibc.

    The trainer calls it once per epoch on CPU. Batches of graphs differ in size, so a step's
    temporaries differ too, and the heap fragments: freed blocks too small for the next request
    stay resident while the heap grows. Under bf16 autocast (a cast copy of every operand) it
    grew without bound: Crysformer on 512 matbench_phonons structures, 1 thread, eager, resident
    size after each epoch 3.3 -> 8.1 GB in 6 epochs (compiled 3.2 -> 6.4 GB in 8; fp32 flat at
    1.5 GB), and a 100-epoch fit reached 11 GB by epoch 45. Trimmed after every epoch: 0.7 -> 1.1
    GB, flat from the fourth epoch (``cpu_allocator.py --resident``: 9.8 GB after 8 epochs
    untrimmed). A step still reuses the memory it freed within the epoch; only the first step of
    the next epoch faults its pages in again: 24.0 vs 21.8 CPU s per epoch of 8 steps there (with
    more steps per epoch the share should be smaller; not measured), the price of a bounded fit.
    Below ``keep`` free bytes (the 1 GiB that ``keep_freed_memory`` lets the heap's top hold
    anyway) nothing is trimmed, so a fit whose heap stays below that keeps its pages.
    """
    libc = _glibc()
    if libc is None:
        return False
    free = free_heap_bytes()
    if free is not None and free <= keep:
        return False
    libc.malloc_trim(0)
    return True
