"""Live progress of a search on the console: trials done / running / pruned / failed, best so far."""

from __future__ import annotations

import math

from ray import tune
from rich.console import Console

from harness.tuning.optuna_search import FINISHED_KEY


class ProgressPrinter(tune.Callback):
    def __init__(self, label: str, num_samples: int, metric: str, console: Console | None = None):
        self.label = label
        self.num_samples = num_samples
        self.metric = metric
        self._console = console
        self.completed = self.pruned = self.failed = 0
        self.running: set[str] = set()
        self.best = math.inf

    @property
    def console(self) -> Console:
        if self._console is None:
            self._console = Console(stderr=True)
        return self._console

    def __getstate__(self) -> dict:
        # Ray pickles callbacks with the experiment state; a Console holds a lock.
        return {**self.__dict__, "_console": None}

    def _line(self, event: str) -> None:
        best = "—" if math.isinf(self.best) else f"{self.best:.4g}"
        done = self.completed + self.pruned + self.failed
        self.console.print(
            f"[bold]{self.label}[/] {event:<28} "
            f"{done}/{self.num_samples} done · {len(self.running)} running · "
            f"{self.completed} completed · {self.pruned} pruned · {self.failed} failed · "
            f"best {self.metric} {best}",
            highlight=False,
            soft_wrap=True,
        )

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and not math.isnan(value):
            self.best = min(self.best, float(value))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        last = trial.last_result or {}
        if last.get(FINISHED_KEY):
            self.completed += 1
            event = f"trial {trial.trial_id} completed"
        else:
            self.pruned += 1
            event = f"trial {trial.trial_id} pruned@{last.get('epoch', '?')}"
        self._line(event)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed += 1
        self._line(f"trial {trial.trial_id} FAILED")
