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
