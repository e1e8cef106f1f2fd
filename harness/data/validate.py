"""Row and split validation shared by every loader.

Why: a benchmark is only as honest as its data. A formula pymatgen cannot parse, a made-up
element or a NaN target would otherwise surface as a crash deep inside a featurizer, or as a
NaN loss hours into a sweep. Every loader hands its raw rows here together with the file (or zip
member) and the 1-based data row each came from, so an error says exactly where to look, what
is wrong and what to do. With ``drop_invalid`` the bad rows are dropped, counted and reported in
a warning: a row never silently vanishes.

Formulas are parsed once per unique string (the OQMD sets have ~340k rows), so validation
costs a few microseconds per distinct formula.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Element

from harness.data.dataset import DataError, Split

log = logging.getLogger("harness.data")

FIX_HINT = "Fix these rows, or pass --drop-invalid (drop_invalid=True) to drop such rows."
SHOWN = 5  # problems quoted in an error or warning
RAW_COLUMNS = ("formula", "target", "where", "row")


def formula_problem(formula: object) -> str | None:
    """What is wrong with one formula, or None when every element is real and amounts positive."""
    if not isinstance(formula, str) or not formula.strip():
        return f"missing formula (value {formula!r})"
    try:
        comp = Composition(formula)
    except Exception as exc:  # pymatgen raises ValueError, KeyError, ... on odd strings
        return f"unparsable formula {formula!r} ({exc})"
    if len(comp) == 0:
        return f"formula {formula!r} has no elements with a positive amount"
    for species in comp.elements:
        element = getattr(species, "element", species)  # Species -> Element
        if not isinstance(element, Element) or not 1 <= element.Z <= 118:
            symbol = getattr(species, "symbol", str(species))
            return f"unknown element {symbol!r} in formula {formula!r} (not one of the 118 elements)"
    return None


def require_columns(columns: Sequence[str], needed: Sequence[str], where: str, hint: str = "") -> None:
    """DataError naming the missing columns and listing those present."""
    missing = [c for c in needed if c not in columns]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {missing}; columns present: {list(columns)}."
            + (f" {hint}" if hint else "")
        )


def parse_targets(values: pd.Series) -> tuple[np.ndarray, list[str | None]]:
    """Targets as float64 (NaN where unusable) and, per row, what is wrong (None if fine)."""
    raw = values.to_numpy(dtype=object)
    try:
        out = raw.astype(np.float64)  # fast path: every value is a number or numeric string
        bad_type = np.zeros(len(raw), dtype=bool)
    except (TypeError, ValueError):
        out = np.empty(len(raw), dtype=np.float64)
        bad_type = np.zeros(len(raw), dtype=bool)
        for i, v in enumerate(raw):
            try:
                out[i] = float(v)
            except (TypeError, ValueError):
                out[i], bad_type[i] = np.nan, True
    problems: list[str | None] = [None] * len(raw)
    for i in np.flatnonzero(bad_type | ~np.isfinite(out)):
        v = raw[i]
        if v is None or (isinstance(v, str) and not v.strip()):
            problems[i] = "missing target (empty)"
        elif bad_type[i]:
            problems[i] = f"non-numeric target {v!r}"
        elif np.isnan(out[i]):
            problems[i] = f"target is NaN (value {v!r})"
        else:
            problems[i] = f"target is infinite (value {v!r})"
    return out, problems


def validate_rows(
    raw: pd.DataFrame,
    *,
    dataset: str,
    drop_invalid: bool,
    check_ids: bool = False,
    classes: tuple[float, ...] | None = None,
) -> tuple[pd.DataFrame, int]:
    """Check every row; return the valid rows (index kept, ``target`` as float64) and the drop count.

    ``raw`` has columns formula, target, where (file or member), row (1-based data row), and
    ``id`` when ``check_ids``; an optional ``problem`` column carries problems a loader found
    itself (e.g. an unreadable structure). ``classes`` restricts targets to those labels.
    Raises DataError listing the first problems unless ``drop_invalid``.
    """
    require_columns(list(raw.columns), RAW_COLUMNS, f"{dataset} (internal)")
    formulas = raw["formula"]
    by_formula = {f: formula_problem(f) for f in pd.unique(formulas)}
    problem = formulas.map(by_formula)
    values, target_problems = parse_targets(raw["target"])
    problem = problem.fillna(pd.Series(target_problems, index=raw.index, dtype=object))
    if classes is not None:
        off = ~np.isin(values, classes) & np.isfinite(values)
        labels = "/".join(f"{c:g}" for c in classes)
        off_msg = pd.Series(
            [f"target {v!r} is not a class label ({labels})" if o else None for v, o in zip(raw["target"], off)],
            index=raw.index, dtype=object,
        )
        problem = problem.fillna(off_msg)
    if check_ids:
        ids = raw["id"].astype(str)
        dup = ids.duplicated(keep="first").to_numpy()
        if dup.any():
            first = dict(zip(ids[::-1], raw["row"][::-1]))  # id -> first row
            dup_msg = pd.Series(
                [f"duplicate id {i!r} (first at data row {first[i]})" if d else None for i, d in zip(ids, dup)],
                index=raw.index, dtype=object,
            )
            problem = problem.fillna(dup_msg)
    if "problem" in raw.columns:
        problem = raw["problem"].where(raw["problem"].notna(), problem)

    bad = problem.notna().to_numpy()
    out = raw.drop(columns=[c for c in ("problem",) if c in raw.columns]).copy()
    out["target"] = values
    n_bad = int(bad.sum())
    if n_bad == 0:
        return out, 0
    shown = [f"  {w}, data row {r}: {p}" for w, r, p in
             zip(raw["where"][bad][:SHOWN], raw["row"][bad][:SHOWN], problem[bad][:SHOWN])]
    more = f"\n  … and {n_bad - SHOWN} more" if n_bad > SHOWN else ""
    if not drop_invalid:
        raise DataError(
            f"{dataset}: {n_bad} invalid row(s):\n" + "\n".join(shown) + more + f"\n{FIX_HINT}"
        )
    log.warning("%s: dropped %d invalid row(s) (--drop-invalid):\n%s%s",
                dataset, n_bad, "\n".join(shown), more)
    return out[~bad], n_bad


def check_splits(dataset: str, splits: Sequence[Split], hint: str = "") -> None:
    """DataError if any split part is empty (nothing to train, tune or score on)."""
    for s in splits:
        for part, idx in zip(("train", "val", "test"), (s.train, s.val, s.test)):
            if len(idx) == 0:
                raise DataError(
                    f"{dataset}: split {s.name!r} has an empty {part} part (0 rows). "
                    + (hint or "Add rows to that part, or check that --drop-invalid did not remove them all.")
                )
