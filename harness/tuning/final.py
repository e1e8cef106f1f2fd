"""The final fits of a search's chosen configuration: K seeds retrained on the split's training
rows, scored on its test rows, each logged to its own ``stage=final`` run (what leaderboards read)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from harness.console import make_console
from harness.data.dataset import Dataset, Split
from harness.tuning import tracking
from harness.tuning.interrupts import STOP, SweepInterrupted
from harness.tuning.plan import SearchOutcome, SweepOptions
from harness.tuning.state import save_state
from harness.tuning.trial import TrialContext
from harness.tuning.worker import final_task

# Logs and CI are not terminals: rich would wrap at 80 columns there.
console = make_console(stderr=True)


def final_evaluation(
    opts: SweepOptions, client, experiment_id: str, workdir: Path, search_name: str,
    state: dict[str, Any], tags: dict[str, str], dataset: Dataset, split: Split,
    context: TrialContext, outcome: SearchOutcome, label: str,
) -> None:
    """K final fits of the chosen configuration; each logged to its own ``stage=final`` run.

    Run ids are saved before the fits start, so a resumed sweep fills the same runs; fits
    whose run already finished with a test MAE are not repeated.
    """
    import ray
    from mlflow.entities import Param

    params = state["best_params"]
    seeds = [opts.seed + k for k in range(opts.final_seeds)]
    final_runs: dict[str, str] = state.setdefault("final_runs", {})
    for seed in seeds:
        if str(seed) not in final_runs:
            run = client.create_run(experiment_id, tags={
                **tags, "stage": "final", "seed": str(seed), "mlflow.parentRunId": state["parent_run_id"],
                "mlflow.runName": f"{label}/final-seed{seed}",
            })
            client.log_batch(run.info.run_id, params=[
                Param(k, v) for k, v in tracking.flatten("", {**params, "final_seed": seed}).items()
            ])
            final_runs[str(seed)] = run.info.run_id
    save_state(workdir, search_name, state)
    todo = []
    for seed in seeds:
        run = client.get_run(final_runs[str(seed)])
        if run.info.status == "FINISHED" and "test_mae" in run.data.metrics:
            outcome.test_mae.append(run.data.metrics["test_mae"])
        else:
            todo.append(seed)
    if not todo:
        return
    console.print(f"{label}: final fits with seeds {todo} on {len(split.train)} training rows")
    task = ray.remote(num_cpus=opts.cpus_per_trial, num_gpus=opts.gpus_per_trial,
                      max_retries=opts.max_failures)(final_task)
    # At most this search's share of the slots at once (see fair_share; all at once on a cluster,
    # where waiting fits make the autoscaler add nodes); the rest queue here.
    at_once = opts.max_concurrent_trials or len(todo)
    refs = {seed: task.remote(context, params, seed) for seed in todo[:at_once]}
    queued = todo[at_once:]
    for seed in todo:
        run_id = final_runs[str(seed)]
        failure = None
        try:
            out = _get_unless_stopped(refs[seed], list(refs.values()), label, workdir)
        except SweepInterrupted:
            raise
        except Exception as exc:  # one failed fit must not lose the others
            failure = exc
        if queued:  # its slot is free: start the next fit
            following = queued.pop(0)
            refs[following] = task.remote(context, params, following)
        if failure is not None:
            client.log_batch(run_id, tags=[_tag("error", str(failure)[-5000:])])
            client.set_terminated(run_id, "FAILED")
            console.print(f"[red]{label}: final fit seed {seed} failed: {failure}[/]")
            continue
        client.set_tag(run_id, "hardware", out.get("hardware", ""))
        metrics = {**out["metrics"], "fit_seconds": out["seconds"]}
        tracking.log_metrics(client, run_id, {k: float(v) for k, v in metrics.items()}, step=0)
        for row in out.get("history", []):
            step = int(row.get("epoch", 0))
            tracking.log_metrics(client, run_id, {f"epoch_{k}": float(v) for k, v in row.items()
                                                  if k != "epoch" and _finite(v)}, step=step)
        frame = dataset.frame.iloc[split.test][["id", "formula", "target"]].copy()
        frame["prediction"] = np.asarray(out["test_pred"], dtype=float)
        client.log_text(run_id, frame.to_csv(index=False), "predictions_test.csv")
        if out.get("train_pred") is not None:  # for the leaderboards' train/test residual plots
            train = dataset.frame.iloc[split.train][["id", "formula", "target"]].copy()
            train["prediction"] = np.asarray(out["train_pred"], dtype=float)
            client.log_text(run_id, train.to_csv(index=False), "predictions_train.csv")
        client.set_terminated(run_id, "FINISHED")
        outcome.test_mae.append(float(metrics["test_mae"]))
        console.print(f"{label}: final fit seed {seed}: test MAE {float(metrics['test_mae']):.4g} "
                      f"({out['seconds']:.0f} s)", highlight=False)


def _get_unless_stopped(ref, all_refs, label: str, workdir: Path):
    """``ray.get(ref)``, unless a Ctrl+C stops the sweep first (a search in a thread gets no
    KeyboardInterrupt): then cancel this search's final fits; --resume redoes the unfinished ones."""
    import ray

    while not ray.wait([ref], timeout=1.0)[0]:
        if STOP.is_set():
            for other in all_refs:
                ray.cancel(other)
            raise SweepInterrupted(f"{label}: interrupted during its final fits; finished ones are kept. "
                                   f"Continue with: harness sweep --resume {workdir}")
    return ray.get(ref)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _tag(key: str, value: str):
    from mlflow.entities import RunTag

    return RunTag(key, value)
