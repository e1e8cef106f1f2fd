"""How a sweep stops early and keeps its state: the Ctrl+C event every running search polls, and
the exceptions that end the sweep with the ``--resume`` hint."""

from __future__ import annotations

import threading


class SweepInterrupted(RuntimeError):
    """Ctrl+C (SIGINT) stopped a search: its state is saved and ``--resume`` continues it."""

    exit_code = 130  # the shell's code for SIGINT


class SweepOutOfMemory(SweepInterrupted):
    """Ray's memory monitor kept killing a search's trial workers: the sweep stops, state saved."""

    exit_code = 1


# Set by a Ctrl+C while searches run in threads (--concurrent-searches): the event each of their
# Tune loops polls, and what their final fits check. Tune wires its own event to SIGINT only in
# the main thread, so without this a Ctrl+C left the running searches going to their end.
STOP = threading.Event()
