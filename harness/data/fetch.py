"""Fetch-once, verify-always files in the cache: the crabnet wheel, the matminer sdist.

A source package is downloaded into a temporary folder beside its final place, checked
against its pinned sha256, and only then moved into place (atomic ``replace``: concurrent
fetchers never see a partial file). A cached file is re-hashed once per process (keyed by path,
size and mtime); a file with the wrong hash is deleted and reported, never used.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable

from harness.data.dataset import DataError

_verified: set[tuple[str, int, float]] = set()  # (path, size, mtime) already hashed this process


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_sha256(path: Path, expected: str, origin: str, advice: str = "") -> None:
    """Raise DataError (and delete ``path``) unless its sha256 is ``expected``."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime)
    if key in _verified:
        return
    digest = sha256_file(path)
    if digest != expected:
        path.unlink(missing_ok=True)
        raise DataError(
            f"{origin} {path.name} has sha256 {digest}, expected {expected}; the file was removed. "
            f"Run again to download it afresh; if this repeats, {advice or 'do not use those bytes.'}"
        )
    _verified.add(key)


def cached_file(
    dest_dir: Path, name: str, sha256: str, download: Callable[[Path], Path], fetch: bool = True, advice: str = ""
) -> Path | None:
    """``dest_dir/name``, verified; fetched once with ``download(dest_dir)`` if missing.

    ``download`` returns the path of the new file inside a temporary folder of ``dest_dir``
    (removed here after the move). With ``fetch=False`` a missing file gives None.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / name
    if not path.is_file():
        if not fetch:
            return None
        got = download(dest_dir)
        check_sha256(got, sha256, "downloaded", advice)
        got.replace(path)
        shutil.rmtree(got.parent, ignore_errors=True)
    check_sha256(path, sha256, "cached", advice)
    return path
