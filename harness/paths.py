"""Where things live: the repository, the shared data beside it, the download cache.

Nothing here is an absolute machine path. The shared folder beside a checkout
(``../shared``) is used when it exists; a user elsewhere points ``HARNESS_DATA_DIR`` at a
copy of the data or lets the loaders fetch public sources into ``HARNESS_CACHE``.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """``../shared`` beside the repository, if it is there."""
    candidate = Path(os.environ.get("HARNESS_SHARED_DIR", REPO_ROOT.parent / "shared"))
    return candidate if candidate.is_dir() else None


def data_dir() -> Path | None:
    """Folder holding ``matbench_v0.1/`` and ``structures/`` (HARNESS_DATA_DIR, else ../shared/data)."""
    env = os.environ.get("HARNESS_DATA_DIR")
    if env:
        return Path(env)
    shared = shared_dir()
    if shared is not None and (shared / "data").is_dir():
        return shared / "data"
    return None


def cache_dir() -> Path:
    """Download and feature cache (HARNESS_CACHE, default ~/.cache/harness); created on use."""
    path = Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness"))
    path.mkdir(parents=True, exist_ok=True)
    return path
