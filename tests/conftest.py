"""Settings shared by every test module."""

import os

# pytest-xdist sets COLUMNS=80 / LINES=24 in its workers, and the CLI's rich tables honour COLUMNS
# (harness/console.py), so a `harness status` run by a test would wrap model names that the test
# parses. Tests read the CLI as a pipe does: without them.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)
