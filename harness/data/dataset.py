"""The in-memory dataset every loader returns, and its splits."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd


class DataError(ValueError):
    """Bad input data. The message names the file, the row and what to do."""


def read_source(path: Path) -> tuple[bytes, bytes]:
    """``(stored, content)``: a data file's bytes as stored, and decompressed when it ends in .gz.

    Data versions (sha256) are taken of ``stored``, so they name the file a user can checksum.
    """
    try:
        stored = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if path.suffix != ".gz":
        return stored, stored
    try:
        return stored, gzip.decompress(stored)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: the name ends in .gz but the file is not valid gzip ({exc}); "
                        f"re-download it, or rename it if it is not compressed") from None


@dataclass(frozen=True)
class Split:
    """One train/val/test partition, as row positions into ``Dataset.frame``.

    ``name`` is ``"fixed"`` for a published train/val/test split, ``"fold0"`` … ``"fold4"``
    for cross-validation folds, ``"random"`` for a seeded split made by the harness.
    """

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> tuple[int, int, int]:
        return len(self.train), len(self.val), len(self.test)


@dataclass
class Dataset:
    """A validated dataset.

    ``frame`` has at least the columns ``id`` (unique str), ``formula`` (str) and ``target``
    (float, finite); structure datasets add ``structure`` (pymatgen Structure objects).
    ``sha256`` identifies the exact source bytes (and the subsample, if any).
    """

    name: str
    suite: str
    target: str
    unit: str
    frame: pd.DataFrame
    splits: list[Split]
    sha256: str
    source: str = ""
    split_scheme: str = ""
    task_type: str = "regression"
    dropped: int = 0  # rows dropped by --drop-invalid
    notes: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame)

    def split(self, name: str) -> Split:
        for s in self.splits:
            if s.name == name:
                return s
        raise KeyError(f"dataset {self.name!r} has no split {name!r}; it has {[s.name for s in self.splits]}")

    @property
    def cache_key(self) -> str:
        """Identifies these exact rows: source sha256 plus any subsample (and ``notes["cache_salt"]``:
        an input the features depend on that ``sha256`` does not cover, e.g. structures attached to
        a Matbench composition task)."""
        key = self.sha256 + (f"-{self.notes['cache_salt']}" if self.notes.get("cache_salt") else "")
        if "subsample" in self.notes:
            return f"{key}-sub{self.notes['subsample']}-seed{self.notes['subsample_seed']}"
        return key

    @property
    def targets(self) -> np.ndarray:
        return self.frame["target"].to_numpy(dtype=np.float64)

    def subsample(self, n_rows: int, seed: int = 0) -> "Dataset":
        """A seeded random subset of ``n_rows`` rows; every split is restricted to them.

        For quick runs and tests. ``sha256`` stays that of the source; ``cache_key`` and
        ``notes`` record the subsample, so cached features and MLflow tags never confuse a
        subsample with the full set.
        """
        if n_rows >= len(self.frame):
            return self
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(self.frame), size=n_rows, replace=False))
        new_pos = np.full(len(self.frame), -1, dtype=np.int64)
        new_pos[keep] = np.arange(len(keep))
        splits = []
        for s in self.splits:
            parts = [new_pos[idx][new_pos[idx] >= 0] for idx in (s.train, s.val, s.test)]
            for part_name, part in zip(("train", "val", "test"), parts):
                if len(part) == 0:
                    raise DataError(
                        f"dataset {self.name!r}: subsampling to {n_rows} rows left split "
                        f"{s.name!r} with an empty {part_name} part; use more rows"
                    )
            splits.append(Split(s.name, *parts))
        frame = self.frame.iloc[keep].reset_index(drop=True)
        return replace(
            self,
            frame=frame,
            splits=splits,
            notes={**self.notes, "subsample": n_rows, "subsample_seed": seed},
        )
