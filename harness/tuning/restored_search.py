"""Tune's search generator, made to agree with the trial list it is restored beside.

Ray Tune snapshots a search as separate files: the trial list (``experiment_state-*.json``), the
search generator (``search_gen_state-*.json``: how many trials it has created, which are live
under the concurrency limit) and the searcher (``searcher-state-*.pkl``). It writes them to a
local staging directory and copies them to the experiment directory in a background thread, so
a driver killed during the copy (SIGKILL, a lost head node) leaves files from two moments. Seen
in CI: a resumed 5-trial search ran 6 trials; a generator one trial behind the trial list does
exactly that (tests/test_search_snapshots.py: 5 trials for 4). The other way round (a generator
ahead of the trial list) Tune runs too few trials, and a live trial the experiment no longer has
holds a concurrency slot for ever (with one slot, the resumed search did not finish in 400 s).

On restore, :class:`ReconciledSearchGenerator` takes the trial list as the truth (it is what
Tune resumes) and sets the generator's count, the live trials and the searcher's own trial map
to match it. In a snapshot whose files agree, nothing changes.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from pathlib import Path

from ray.tune.search import ConcurrencyLimiter, SearchGenerator

log = logging.getLogger(__name__)

_UNFINISHED = ("PENDING", "RUNNING", "PAUSED")


def snapshot_trials(directory: str | Path) -> dict[str, str] | None:
    """Trial id -> status in the newest experiment state in ``directory`` (the file Tune
    restores from, chosen as Tune does: the greatest name), or None if there is none.
    Plain JSON: each trial's state is a JSON string with ``trial_id`` and ``status``."""
    names = fnmatch.filter(os.listdir(directory), "experiment_state-*.json")
    if not names:
        return None
    path = Path(directory, max(names))
    try:
        trials = {}
        for trial_json, _metadata in json.loads(path.read_text())["trial_data"]:
            trial = json.loads(trial_json)
            trials[trial["trial_id"]] = trial["status"]
        return trials
    except (KeyError, TypeError, ValueError) as exc:  # a Ray whose format differs: restore as Tune does
        log.warning("cannot read the trial list in %s (%r); the searcher is restored as saved", path, exc)
        return None


class ReconciledSearchGenerator(SearchGenerator):
    """``SearchGenerator`` whose ``restore_from_dir`` also reconciles with the trial list."""

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        trials = snapshot_trials(dirpath)
        if trials is None:
            return
        if self._counter != len(trials):
            log.warning("search snapshot: generator had created %d trials, the trial list has %d; "
                        "following the trial list", self._counter, len(trials))
        self._counter = len(trials)
        searcher = self.searcher
        while searcher is not None:
            if isinstance(searcher, ConcurrencyLimiter):
                searcher.live_trials = {t for t, status in trials.items() if status in _UNFINISHED}
            if hasattr(searcher, "match_trials"):
                searcher.match_trials(set(trials))
            searcher = getattr(searcher, "searcher", None)
