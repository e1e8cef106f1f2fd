"""Rich consoles for the CLI and the sweep driver."""

from __future__ import annotations

import os
import sys

from rich.console import Console

PIPE_WIDTH = 240


def make_console(stderr: bool = False) -> Console:
    """A console that does not truncate tables when its output is a file or a pipe.

    Rich assumes 80 columns when the stream is not a terminal, so ``harness status DIR > s.txt``,
    ``| less`` or a ``nohup`` log would cut model and dataset names to ``cra…``. There the width is
    240 (a table is only as wide as its content); a terminal's own width, or ``COLUMNS``, wins.
    """
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=PIPE_WIDTH if piped else None)


def progress(iterable, total: int, description: str, min_total: int = 0):
    """Iterate with a progress display: rich's bar on a terminal; in a log (a pipe, a file, nohup)
    one line per tenth done, e.g. ``Ward-2017 attributes of 1265 matbench_phonons: 380/1265 (30%,
    412 s)``, because a bar there shows nothing until the end of a featurization that may take
    hours. Nothing for fewer than ``min_total`` items."""
    import time

    if sys.stdout.isatty():
        from rich.progress import track

        yield from track(iterable, total=total, description=description, transient=True,
                         disable=total < min_total)
        return
    step = max(1, -(-total // 10))  # ceil: at most 10 lines
    quiet = total < min_total
    start, out = time.perf_counter(), make_console()
    for done, item in enumerate(iterable, start=1):
        yield item
        if not quiet and (done % step == 0 or done == total):
            out.print(f"{description}: {done}/{total} ({100 * done // total}%, {time.perf_counter() - start:.0f} s)",
                      highlight=False)
