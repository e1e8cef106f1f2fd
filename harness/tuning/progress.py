"""Live progress of a search on the console: trials done / running / pruned / failed, best so far."""

from __future__ import annotations

import math

from ray import tune
from rich.console import Console

from harness.console import make_console
from harness.tuning.optuna_search import ERROR_KEY, FINISHED_KEY


def trial_state(trial) -> str:
    """completed / pruned / failed / running / pending, from a Tune trial."""
    last = trial.last_result or {}
    if trial.status == "ERROR" or ERROR_KEY in last:
        return "failed"
    if trial.status == "TERMINATED":
        return "completed" if last.get(FINISHED_KEY) else "pruned"
    return "running" if trial.status == "RUNNING" else "pending"


class ProgressPrinter(tune.Callback):
    """One line per finished trial. Counts are recomputed from Tune's trial list each time,
    so they stay right after a resumed sweep."""

    def __init__(self, label: str, num_samples: int, metric: str, console: Console | None = None):
        self.label = label
        self.num_samples = num_samples
        self.metric = metric
        self._console = console

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = make_console(stderr=True)
        return self._console

    def __getstate__(self) -> dict:
        # Ray pickles callbacks with the experiment state; a Console holds a lock.
        return {**self.__dict__, "_console": None}

    def _line(self, trials, trial, kind: str, detail: str = "") -> None:
        # The callback runs before Tune updates this trial's status: use the event's kind.
        states = [kind if t is trial else trial_state(t) for t in trials]
        event = f"{kind} {detail}".strip()
        best = min(
            (t.last_result.get(self.metric, math.inf) for t in trials
             if t.last_result and isinstance(t.last_result.get(self.metric), (int, float))
             and not math.isnan(t.last_result.get(self.metric))),
            default=math.inf,
        )
        done = sum(s in ("completed", "pruned", "failed") for s in states)
        best_text = "—" if math.isinf(best) else f"{best:.4g}"
        self.console.print(
            f"[bold]{self.label}[/] trial {trial.trial_id} {event:<22} "
            f"{done}/{self.num_samples} done · {states.count('running')} running · "
            f"{states.count('completed')} completed · {states.count('pruned')} pruned · "
            f"{states.count('failed')} failed · best {self.metric.removeprefix('best_')} {best_text}",
            highlight=False,
            soft_wrap=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if ERROR_KEY in last:
            self._line(trials, trial, "failed", f"({str(last[ERROR_KEY])[:50]})")
        elif last.get(FINISHED_KEY):
            self._line(trials, trial, "completed")
        else:
            self._line(trials, trial, "pruned", f"@ epoch {last.get('epoch', '?')}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, trial, "failed")
