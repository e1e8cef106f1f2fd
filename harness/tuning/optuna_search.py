"""Optuna as Ray Tune's searcher, told the truth about early-stopped trials.

Ray's stock ``OptunaSearch`` reports per-epoch values but, when ASHA stops a trial, tells
Optuna that the trial COMPLETED with its early value, so TPE mixes 1-epoch and full-length
scores as if they were comparable. Here a trial counts as COMPLETE only if its last result
carries ``trial_finished`` (the trainable sets it on the epoch it ends by itself: max epochs
or its own early stopping); anything else that ends without an error was stopped by the
scheduler and is told to Optuna as PRUNED, keeping its intermediate values.
"""

from __future__ import annotations

import math
from typing import Optional

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from harness.tuning.trial import ERROR_KEY, FINISHED_KEY  # noqa: F401  (re-exported)

SAMPLERS = ("tpe", "random", "cmaes")
RAY_TRIAL_ATTR = "ray_trial_id"  # Optuna user attribute: the Ray trial an Optuna trial is


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        # CMA-ES handles the continuous/int dimensions; categorical ones are sampled
        # independently by its fallback sampler (Optuna's documented behaviour).
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


class TruthfulOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that marks scheduler-stopped trials PRUNED and NaN results FAIL."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._reported_steps: dict[str, set[int]] = {}

    def suggest(self, trial_id: str) -> Optional[dict]:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and RAY_TRIAL_ATTR not in ot_trial.user_attrs:
            # Optuna's storage then says which Ray trial each Optuna trial is, for a searcher
            # restored from a snapshot older than the trials (see ``match_trials``).
            ot_trial.set_user_attr(RAY_TRIAL_ATTR, trial_id)
        return config

    def match_trials(self, trial_ids: set[str]) -> None:
        """Make this searcher agree with the restored experiment's trials ``trial_ids``.

        Ray saves the trial list and the searcher in separate files; a driver killed while they
        are copied to storage can leave a searcher older or newer than the trial list. A trial
        the searcher never saw is found in Optuna's storage (by its Ray trial id) so that its
        result still reaches Optuna; an Optuna trial whose Ray trial the experiment no longer
        has will never be told, and is told FAIL (Ray runs another trial in its place).
        """
        for frozen in self._ot_study.get_trials(deepcopy=False):
            trial_id = frozen.user_attrs.get(RAY_TRIAL_ATTR)
            if trial_id in trial_ids and trial_id not in self._ot_trials:
                self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, frozen._trial_id)
        for trial_id in sorted(set(self._ot_trials) - trial_ids):
            if not self._already_told(trial_id):
                self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.FAIL)
                self._completed_trials.add(trial_id)

    def _already_told(self, trial_id: str) -> bool:
        """True if Optuna already holds this trial's end. A resumed sweep restores this
        searcher from Ray's last snapshot, which may predate the tell; Optuna's storage is
        the record, so a replayed trial changes nothing there."""
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return True
        ot_trial = self._ot_trials[trial_id]
        state = ot_trial.storage.get_trial(ot_trial._trial_id).state
        if state.is_finished():
            self._completed_trials.add(trial_id)
            return True
        return False

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value = result.get(self.metric)
        if ERROR_KEY in result or not isinstance(value, (int, float)) or math.isnan(value):
            return
        if self._already_told(trial_id):
            return
        step = int(result["training_iteration"])
        if step in self._steps_reported(trial_id):  # replayed by a resumed trial: Optuna has it
            return
        super().on_trial_result(trial_id, result)
        self._reported_steps[trial_id].add(step)

    def _steps_reported(self, trial_id: str) -> set[int]:
        """Steps Optuna holds for this trial; read from its storage the first time this process
        sees the trial, since a resumed sweep's searcher may not know what was reported before."""
        if trial_id not in self._reported_steps:
            ot_trial = self._ot_trials[trial_id]
            stored = ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values
            self._reported_steps[trial_id] = {int(s) for s in stored}
        return self._reported_steps[trial_id]

    def on_trial_complete(
        self, trial_id: str, result: Optional[dict] = None, error: bool = False
    ) -> None:
        if self._already_told(trial_id):
            return
        ot_trial = self._ot_trials[trial_id]
        value = (result or {}).get(self.metric)
        step = (result or {}).get("training_iteration")
        # Ray hands the result that ends a trial (max_t reached, or stopped at a rung) only
        # to on_trial_complete, never to on_trial_result: record it as the last epoch's value.
        if isinstance(value, (int, float)) and not math.isnan(value) and step is not None:
            if int(step) not in self._steps_reported(trial_id):
                ot_trial.report(float(value), int(step))
        failed = error or ERROR_KEY in (result or {})
        if failed or value is None or (isinstance(value, float) and math.isnan(value)):
            state, value = TrialState.FAIL, None
        elif not (result or {}).get(FINISHED_KEY):
            state, value = TrialState.PRUNED, None
        else:
            state = TrialState.COMPLETE
        self._ot_study.tell(ot_trial, value, state=state)
        self._completed_trials.add(trial_id)
