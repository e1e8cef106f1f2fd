"""Markdown pages and CSV exports from :class:`~harness.leaderboard.tables.SuiteTables`.

Nothing here reads the clock or the host: a page is a function of the store, so the same
store gives the same bytes.
"""

from __future__ import annotations

import datetime
import io
import math
import re

import pandas as pd

from harness.leaderboard.store import OK
from harness.leaderboard.tables import (
    PROTOCOLS,
    PairResult,
    SuiteTables,
    finite,
    n_folds_of,
    params_of,
)

NOT_RUN = "not run"
PLOTS = (
    ("parity", "Parity (test)", "Predicted vs true test targets, the prediction of each sample averaged over the model's final fits (seeds)."),
    ("residuals", "Residual distribution", ""),
    ("learning_curves", "Learning curves", "Train (solid) and validation (dashed) MAE per epoch of every final fit."),
    ("trial_curves", "Search trials", "Validation MAE per epoch of every trial of the search; trials stopped early by ASHA end early (×), the others run to the epoch budget."),
    ("pareto", "MAE vs cost", "Headline test MAE (± its std) against the compute reserved for the search and the final fits (CPU-hours + GPU-hours, log scale); the dashed line is the Pareto front. Ranked models only (on cross-validated sets, one with fewer folds than the others is left out)."),
)


# ----------------------------------------------------------------------------- formatting
def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def esc(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def fmt_mae(value: float, spread: float, n: int) -> str:
    if n > 1 and finite(spread):
        return f"{value:.4g} ± {spread:.2g}"
    return f"{value:.4g}"


def fmt_num(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if finite(value) else "n/a"


def fmt_int(value: float) -> str:
    return f"{int(round(value)):,}" if finite(value) else "n/a"


def fmt_params(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return fmt_int(values[0])
    return f"{fmt_int(values[0])}–{fmt_int(values[-1])}"


def fmt_rank(rank: float) -> str:
    if not finite(rank):
        return "—"
    return f"{rank:.0f}" if rank == int(rank) else f"{rank:.1f}"


def fmt_trials(counts: dict[str, int]) -> str:
    if not counts:
        return "no trial runs"
    main = " / ".join(str(counts.get(k, 0)) for k in ("completed", "pruned", "failed"))
    other = {k: v for k, v in counts.items() if k not in ("completed", "pruned", "failed")}
    if other:
        main += " (+ " + ", ".join(f"{v} {k}" for k, v in sorted(other.items())) + ")"
    return main


def cell_text(res: PairResult | None) -> str:
    """The main-table cell: the headline number, or what happened instead (never a bare 0)."""
    if res is None:
        return NOT_RUN
    if res.n_fits == 0:
        return res.no_final_reason
    problems = res.problems()
    if not res.has_value:
        return problems or "no test_mae"
    text = fmt_mae(res.value, res.spread, res.n_units)
    return f"{text} ({problems})" if problems else text


def table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["---"] * len(header)
    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(c if c.startswith("**") or c.startswith("[") or c.startswith("!") else esc(c)
                              for c in row) + " |" for row in rows]
    return out


def date_of(ms: float | None) -> str:
    if not finite(ms):
        return "unknown"
    return datetime.datetime.fromtimestamp(float(ms) / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ----------------------------------------------------------------------------- suite page
def _published_cell(t: SuiteTables, dataset: str, label: str) -> str:
    hit = t.published[(t.published["dataset"] == dataset) & (t.published["model"] == label)]
    return "—" if hit.empty else f"{float(hit.iloc[0]['value']):.4g}"


def _main_table(t: SuiteTables) -> list[str]:
    models, labels, published = t.models, t.labels, t.published_labels
    refs, notes = protocol_footnotes(t)
    header = (["dataset", "unit", "over"] + [labels[m] for m in models] + [f"{p} (published)" for p in published]
              + ["best two: paired test", "differs from the published protocol"])
    rows = []
    for dataset in t.datasets:
        results = [t.get(dataset, m) for m in models]
        valued = [r.value for r in results if r is not None and r.has_value and finite(r.rank)]
        best = min(valued) if valued else None
        overs = sorted({r.over for r in results if r is not None and r.over})
        cells = []
        for r in results:
            text = esc(cell_text(r))
            cells.append(f"**{text}**" if r is not None and r.has_value and r.value == best else text)
        pub = [_published_cell(t, dataset, p) for p in published]
        rows.append([dataset, t.info[dataset]["unit"] or "—", "; ".join(overs) or "—"] + cells + pub
                    + [t.significance[dataset].text, ", ".join(f"[{n}]" for n in refs[dataset]) or "—"])
    align = ["---"] * 3 + ["---:"] * (len(models) + len(published)) + ["---", "---"]
    lines = table(header, rows, align)
    if notes:
        lines += ["", "Where our protocol differs from the published one (the last column's numbers):", ""]
        lines += [f"{n}. {note}" for n, note in enumerate(notes, start=1)]
    return lines


def protocol_footnotes(t: SuiteTables) -> tuple[dict[str, list[int]], list[str]]:
    """Each dataset's protocol notes as numbers into one list of distinct notes (first use first).

    The same notes repeat on most rows of a suite (the epoch budget, the source of a published
    number); written out in every row they made the table several screens wide.
    """
    notes: list[str] = []
    refs: dict[str, list[int]] = {}
    for dataset in t.datasets:
        for note in t.notes[dataset]:
            if note not in notes:
                notes.append(note)
        refs[dataset] = [notes.index(note) + 1 for note in t.notes[dataset]]
    return refs, notes


def _rank_table(t: SuiteTables) -> list[str]:
    labels = t.labels
    rows = [[d] + [fmt_rank(t.get(d, m).rank) if t.get(d, m) else "—" for m in t.models] for d in t.datasets]
    avg = []
    for m in t.models:
        mean, n = t.average_rank[m]
        avg.append(f"**{mean:.2f}** ({n} dataset{'s' if n != 1 else ''})" if finite(mean) else "—")
    rows.append(["**average rank**"] + avg)
    return table(["dataset"] + [labels[m] for m in t.models], rows, ["---"] + ["---:"] * len(t.models))


def _mad_table(t: SuiteTables) -> list[str]:
    rows = []
    for d in t.datasets:
        row = [d, fmt_num(t.mad[d], 4), str(t.n_test[d]) if t.n_test[d] else "n/a"]
        for m in t.models:
            r = t.get(d, m)
            row.append("—" if r is None or not r.has_value else fmt_num(r.mad_mae, 3))
        rows.append(row)
    return table(["dataset", "MAD of test targets", "test samples"] + [t.labels[m] for m in t.models], rows,
                 ["---", "---:", "---:"] + ["---:"] * len(t.models))


def _cv_rows(t: SuiteTables) -> list[list[str]]:
    rows = []
    for d in t.datasets:
        for m in t.models:
            r = t.get(d, m)
            if r is None or not any(s.startswith("fold") for s in r.splits):
                continue
            folds = ", ".join(f"{s}: {v:.4g}" for s, v in r.fold_mae.items()) or "—"
            pooled = (fmt_mae(r.pooled, r.pooled_std, r.pooled_seeds) if finite(r.pooled)
                      else (r.pooled_note or cell_text(r)))
            per_fold = fmt_mae(r.mean_folds, r.std_folds, len(r.fold_mae)) if finite(r.mean_folds) else cell_text(r)
            k = n_folds_of(t.info[d]["split_scheme"]) or len(r.splits)
            rows.append([d, r.label, f"{len(r.ok_splits)} of {k}", pooled, per_fold, folds])
    return rows


def _cost_cells(r: PairResult) -> list[str]:
    return [fmt_params(r.params), fmt_trials(r.trials), fmt_int(r.search_epochs), fmt_int(r.final_epochs),
            fmt_num(r.search_cpu_h), fmt_num(r.search_gpu_h), fmt_num(r.final_cpu_h), fmt_num(r.final_gpu_h)]


COST_HEADER = ["parameters", "trials (completed / pruned / failed)", "epochs (search)", "epochs (final)",
               "search CPU-h", "search GPU-h", "final CPU-h", "final GPU-h"]


def model_totals(t: SuiteTables, model: str) -> dict:
    rs = [r for (d, m), r in t.results.items() if m == model]
    total = lambda attr: (float(sum(getattr(r, attr) for r in rs if finite(getattr(r, attr))))  # noqa: E731
                          if any(finite(getattr(r, attr)) for r in rs) else math.nan)
    trials: dict[str, int] = {}
    for r in rs:
        for k, v in r.trials.items():
            trials[k] = trials.get(k, 0) + v
    params = sorted({p for r in rs for p in r.params})
    return {"datasets": len(rs), "params": params if len(params) <= 1 else [params[0], params[-1]],
            "trials": trials, "search_epochs": total("search_epochs"), "final_epochs": total("final_epochs"),
            "search_cpu_h": total("search_cpu_h"), "search_gpu_h": total("search_gpu_h"),
            "final_cpu_h": total("final_cpu_h"), "final_gpu_h": total("final_gpu_h")}


def _grouped_cost_notes(t: SuiteTables) -> list[str]:
    """The searches' cost notes, one line per kind of note: "4 trial(s) without …" said of 40
    searches is one line with the total and the searches it concerns, not 40 lines."""
    kinds: dict[str, list[tuple[str, str, int]]] = {}
    for (dataset, model), result in sorted(t.results.items()):
        for note in result.cost_notes:
            count, _, rest = note.partition(" ")
            key, n = (rest, int(count)) if count.isdigit() else (note, 0)
            kinds.setdefault(key, []).append((dataset, t.labels[model], n))
    lines = []
    for text, where in kinds.items():
        if len(where) == 1:
            dataset, label, n = where[0]
            lines.append(f"- {dataset} / {label}: {f'{n} ' if n else ''}{text}")
            continue
        by_dataset: dict[str, list[str]] = {}
        for dataset, label, _ in where:
            by_dataset.setdefault(dataset, []).append(label)
        total = sum(n for _, _, n in where)
        searches = "; ".join(f"{d}: {', '.join(labels)}" for d, labels in by_dataset.items())
        lines.append(f"- {f'{total} ' if total else ''}{text}, in {len(where)} searches ({searches})")
    return lines


def _model_cost_table(t: SuiteTables) -> list[str]:
    rows = []
    for m in t.models:
        tot = model_totals(t, m)
        mean, n = t.average_rank[m]
        rows.append([t.labels[m], str(tot["datasets"]), fmt_num(mean, 3) if finite(mean) else "—",
                     fmt_params(tot["params"]), fmt_trials(tot["trials"]), fmt_int(tot["search_epochs"]),
                     fmt_int(tot["final_epochs"]), fmt_num(tot["search_cpu_h"]), fmt_num(tot["search_gpu_h"]),
                     fmt_num(tot["final_cpu_h"]), fmt_num(tot["final_gpu_h"])])
    return table(["model", "datasets", "average rank"] + COST_HEADER, rows, ["---"] + ["---:"] * (len(COST_HEADER) + 2))


def _budget_table(t: SuiteTables) -> list[str]:
    header = (["dataset", "model", "trials (completed / pruned / failed)", "max epochs", "samples", "final fits",
               "subsample", "parameters", "epochs (search)", "epochs (final)", "search CPU-h", "search GPU-h",
               "final CPU-h", "final GPU-h", "hardware", "sweep"])
    rows = []
    for d in t.datasets:
        for m in t.models:
            r = t.get(d, m)
            if r is None:
                continue
            cost = _cost_cells(r)
            fits = f"{r.n_ok} of {r.n_fits}" + (f" ({r.problems()})" if r.problems() else "")
            rows.append([d, r.label, cost[1], r.max_epochs or "n/a", r.num_samples or "n/a", fits,
                         r.subsample or "all rows", cost[0]] + cost[2:] + ["; ".join(r.hardware) or "n/a", r.sweep_id])
    return table(header, rows, ["---", "---"] + ["---:"] * 12 + ["---", "---"])


def _summary_line(t: SuiteTables) -> str:
    f = t.fits
    sweeps = sorted({r.sweep_id for r in t.results.values()})
    n_ok = int((f["state"] == OK).sum()) if not f.empty else 0
    return (f"Generated from MLflow only: {len(f)} final fits ({n_ok} with a test MAE) of "
            f"{len(t.models)} model{'s' if len(t.models) != 1 else ''} on {len(t.datasets)} "
            f"dataset{'s' if len(t.datasets) != 1 else ''}; sweep{'s' if len(sweeps) != 1 else ''} "
            f"{', '.join(f'`{s}`' for s in sweeps)}; last run ended {date_of(last_end(t))}.")


def last_end(t: SuiteTables) -> float:
    times = [x for x in t.ends.values() if finite(x)]
    return max(times) if times else math.nan


def commits_of(t: SuiteTables) -> list[str]:
    return sorted({c for r in t.results.values() for c in r.git_commits})


def param_text(value) -> str:
    """A hyperparameter as a person reads it: floats to 4 significant digits (lr=0.00036, not
    0.00036000911929116066); the exact values are in MLflow and in fits.csv."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def short_commit(commit: str) -> str:
    """12 hex digits (and ``-dirty``) for the index, where five full hashes made the row wrap
    over several screens; the suite page keeps the full ones."""
    dirty = "-dirty" if commit.endswith("-dirty") else ""
    return commit.removesuffix("-dirty")[:12] + dirty


def render_suite(t: SuiteTables, not_run: list[str], exports: list[tuple[str, str]],
                 submissions: dict[str, tuple[str | None, list[str], dict[str, str]]] | None = None) -> str:
    suite = t.data.suite
    lines = [f"# Leaderboard: `{suite}`", "",
             PROTOCOLS.get(suite, "Test MAE of the final fits."), "",
             "All protocols: [README](README.md). " + _summary_line(t)
             + f" Code: commit {', '.join(f'`{c}`' for c in commits_of(t)) or 'unknown'}.", "",
             "## Test MAE", "",
             "Lower is better. **Bold**: the best measured number of the row. *over*: what the mean ± "
             "std is taken over (seeds of the final fits; folds; or, where pooled, seeds of the MAE over "
             "all folds' test predictions). Columns marked *(published)* are numbers reported in papers "
             "and on the Matbench leaderboard (see Sources), not measured here; their protocol and budget "
             "differ from ours (last column). *best two*: a paired Wilcoxon signed-rank test between the "
             "two best measured models on the per-sample absolute test errors (averaged over seeds) of the "
             "test samples both predicted. A failed or incomplete fit is counted in the cell, never "
             "shown as 0. On cross-validated sets, a model with results on fewer folds than another "
             "says which folds in its cell and is not ranked (its MAE is over other test sets).", ""]
    lines += _main_table(t)
    if not_run:
        lines += ["", f"Datasets of `{suite}` with no run in this store ({len(not_run)}): "
                  + ", ".join(f"`{d}`" for d in not_run) + "."]
    lines += ["", "## Rank", "", "Rank of each measured model per dataset by the headline MAE (1 = best; ties share "
              "the mean rank); the average is over the datasets where the model has a number. — : no "
              "number, or (cross-validation) fewer folds than the others.", ""]
    lines += _rank_table(t)
    lines += ["", "## MAD:MAE", "", "Mean absolute deviation of the test targets about their mean, divided by the "
              "headline MAE: 1 is no better than predicting the mean, higher is better.", ""]
    lines += _mad_table(t)
    cv = _cv_rows(t)
    if cv:
        lines += ["", "## Cross-validation: pooled and per fold", "",
                  "*pooled*: MAE over the concatenated test predictions of all folds (one seed), mean ± std "
                  "over seeds. *per fold*: each fold's test MAE (mean over its seeds), mean ± std over folds.", ""]
        lines += table(["dataset", "model", "folds with a result", "pooled MAE", "mean ± std over folds", "per-fold MAE"],
                       cv, ["---", "---", "---:", "---:", "---:", "---"])
    lines += ["", "## Cost per model", "",
              "Summed over the datasets of this page. *parameters*: of the final fits' models (a range where "
              "the chosen configurations differ). *epochs (search)*: epochs trained by all trials together; "
              "*epochs (final)*: by all final fits. *CPU-h / GPU-h*: wall time × CPUs / GPUs reserved per "
              "trial (the search run's `cpus_per_trial`, `gpus_per_trial`), the wall time of a trial being "
              "the time it ran (`trial_seconds`, summed over restores; not the time its sweep was stopped); "
              "for final fits, the fit time (`fit_seconds`) × the same resources.", ""]
    lines += _model_cost_table(t)
    lines += ["", "## Budget", ""]
    lines += _budget_table(t)
    notes = _grouped_cost_notes(t)
    if notes:
        lines += [""] + notes
    lines += ["", "## Datasets", ""]
    for d in t.datasets:
        lines.append(f"- [{d}]({suite}/{slug(d)}.md): parity, residuals, learning curves, search trials, MAE vs cost")
    lines += ["", "## Exports", ""]
    for path, what in exports:
        lines.append(f"- [{path}]({path}): {what}")
    if submissions is not None:
        lines += ["", "### Matbench submission files", "",
                  "Matbench's `results.json.gz` layout (one per model; load with "
                  "`matbench.MatbenchBenchmark.from_file` after gunzip). A task goes in only when complete: "
                  "all 5 official folds on the full data. One prediction per fold: the final fit with the "
                  "lowest seed.", ""]
        rows = []
        for m in t.models:
            path, tasks, left = submissions.get(m, (None, [], {}))
            rows.append([t.labels[m], f"[{path}]({path})" if path else "none",
                         ", ".join(tasks) or "—", "; ".join(f"{k}: {v}" for k, v in sorted(left.items())) or "—"])
        lines += table(["model", "file", "tasks included", "tasks left out (why)"], rows)
    published = t.published
    if not published.empty:
        lines += ["", "## Sources of published numbers", ""]
        for source in sorted(set(published["source"])):
            lines.append(f"- {source}")
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- dataset page
def _versions_text(info: dict) -> str:
    """The data version (sha256, first 16 hex digits); several, each with its models, if the runs differ."""
    versions = info.get("versions") or {}
    if len(versions) <= 1:
        return f"`{info['sha256'][:16] or 'n/a'}`"
    return "; ".join(f"`{sha[:16]}` ({', '.join(labels)})" for sha, labels in versions.items())


def render_dataset(t: SuiteTables, dataset: str, plots: dict[str, str | None], train_logged: bool) -> str:
    suite, info = t.data.suite, t.info[dataset]
    rows_text = info["rows"] or "n/a"
    if info["subsample"]:
        rows_text += " (seeded subsample)"
    lines = [f"# {dataset} · `{suite}`", "", f"[← `{suite}` leaderboard](../{suite}.md)", "",
             f"Target: {info['target'] or 'n/a'} ({info['unit'] or 'no unit'}) · split: {info['split_scheme'] or 'n/a'} · "
             f"rows used: {rows_text} · data sha256 {_versions_text(info)}", ""]
    if t.notes[dataset]:
        lines += ["Differs from the published protocol: " + "; ".join(t.notes[dataset]) + ".", ""]
    lines += ["## Results", "", "Best first: ranked models by rank, then the unranked (no number, or fewer folds), "
              "then the published numbers.", ""]
    rows = []
    here = [r for r in (t.get(dataset, m) for m in t.models) if r is not None]
    # a leaderboard reads top-down; a stable sort keeps the suite's model order among the unranked
    for r in sorted(here, key=lambda r: r.rank if finite(r.rank) else math.inf):
        cost = _cost_cells(r)
        pooled = fmt_mae(r.pooled, r.pooled_std, r.pooled_seeds) if finite(r.pooled) else "—"
        folds = fmt_mae(r.mean_folds, r.std_folds, len(r.fold_mae)) if finite(r.mean_folds) else "—"
        rows.append([r.label, cell_text(r), r.over or "—", fmt_rank(r.rank),
                     fmt_num(r.mad_mae) if r.has_value else "—", pooled, folds,
                     f"{r.n_ok} of {r.n_fits}", cost[0], cost[1], cost[4], cost[5], cost[6], cost[7]])
    pub = t.published[t.published["dataset"] == dataset]
    for _, p in pub.sort_values("model", key=lambda c: c.str.lower(), kind="mergesort").iterrows():
        rows.append([f"{p['model']} (published)", f"{p['value']:.4g}",
                     "folds" if p["metric"] == "mae_test_mean_folds" else "—", "—", "—", "—", "—", "—",
                     "—", "—", "—", "—", "—", "—"])
    lines += table(["model", "test MAE", "over", "rank", "MAD:MAE", "pooled MAE", "mean ± std over folds",
                    "fits with a test MAE", "parameters", "trials (completed / pruned / failed)",
                    "search CPU-h", "search GPU-h", "final CPU-h", "final GPU-h"], rows,
                   ["---"] + ["---:"] * 13)
    sig = t.significance[dataset]
    lines += ["", "## Best two: paired test", "", sig.text + ("" if not sig.test else f" — paired: {sig.test}."), ""]
    lines += ["## Plots", ""]
    for key, title, caption in PLOTS:
        lines += [f"### {title}", ""]
        if key == "residuals":
            caption = ("Residuals (prediction − true) of the train and test predictions of all final fits."
                       if train_logged else
                       "Residuals (prediction − true) of the test predictions of all final fits. **Train "
                       "residuals are not shown: the sweep logs only `predictions_test.csv`** (train MAE is in "
                       "the final-fit table below).")
            caption += (" The axis spans the 99th percentile of |residual| over all panels; residuals beyond "
                        "it are counted in the two edge bins (the title says how many).")
        path = plots.get(key)
        if path:
            lines += [caption, "", f"![{title}]({path})", ""]
        else:
            lines += [f"No plot: {_why_no_plot(key)}", ""]
    lines += ["## Final fits", ""]
    f = t.data.finals
    fits = f[f["dataset"] == dataset]
    rows = []
    for _, run in fits.iterrows():
        mx = run["metrics"]
        g = lambda k, d=4: fmt_num(mx.get(k, math.nan), d) if k in mx else "missing"  # noqa: E731
        rows.append([t.labels[run["model"]], run["split"], run["seed"],
                     run["state"] if run["state"] != OK else "ok", g("test_mae"), g("test_rmse"), g("test_r2", 3),
                     g("train_mae"), g("val_mae"), g("epochs_run", 4), g("fit_seconds", 3),
                     f"`{run['run_id']}`"])
    lines += table(["model", "split", "seed", "status", "test MAE", "test RMSE", "test R²", "train MAE", "val MAE",
                    "epochs", "fit seconds", "MLflow run"], rows, ["---"] * 4 + ["---:"] * 7 + ["---"]) if rows \
        else ["No final runs."]
    lines += ["", "## Chosen hyperparameters", "",
              "Floats to 4 significant digits; the exact values are in MLflow and `fits.csv`.", ""]
    rows = []
    for (model, split), group in fits.groupby(["model", "split"], sort=False):
        chosen = params_of(group.iloc[0]["params"])
        rows.append([t.labels[model], split,
                     ", ".join(f"{k.split('.', 1)[1]}={param_text(v)}" for k, v in chosen.items()) or "—"])
    lines += table(["model", "split", "hyperparameters (best trial of the search)"], rows) if rows else ["None (no final runs)."]
    lines += ["", "## Searches", ""]
    s, tr = t.data.searches, t.data.trials
    rows = []
    for _, run in s[s["dataset"] == dataset].iterrows():
        mine = tr[tr["parent_run_id"] == run["run_id"]]
        counts: dict[str, int] = {}
        for state in mine["trial_state"]:
            counts[state or "unknown"] = counts.get(state or "unknown", 0) + 1
        p, mx = run["params"], run["metrics"]
        rows.append([t.labels[run["model"]], run["split"], run["status"], fmt_trials(counts),
                     fmt_num(mx.get("best_val_mae", math.nan), 4), p.get("num_samples", "n/a"), p.get("max_epochs", "n/a"),
                     f"{p.get('cpus_per_trial', 'n/a')} / {p.get('gpus_per_trial', 'n/a')}",
                     run["final_status"] or "—", f"`{run['run_id']}`"])
    lines += table(["model", "split", "status", "trials (completed / pruned / failed)", "best val MAE", "samples",
                    "max epochs", "CPUs / GPUs per trial", "note", "MLflow run"], rows) if rows else ["No search runs."]
    lines.append("")
    return "\n".join(lines)


def _why_no_plot(key: str) -> str:
    return {
        "parity": "no final fit with logged test predictions.",
        "residuals": "no final fit with logged test predictions.",
        "learning_curves": "no final fit with a per-epoch history (`epoch_*` metrics; models without epochs have none).",
        "trial_curves": "no trial with a per-epoch `val_mae`.",
        "pareto": "no ranked model with both a test MAE and a known cost.",
    }[key]


# ----------------------------------------------------------------------------- exports
def results_frame(t: SuiteTables) -> pd.DataFrame:
    rows = []
    for d in t.datasets:
        for m in t.models:
            r = t.get(d, m)
            if r is None:
                continue
            tot_other = sum(v for k, v in r.trials.items() if k not in ("completed", "pruned", "failed"))
            rows.append({
                "suite": t.data.suite, "dataset": d, "unit": t.info[d]["unit"], "kind": "measured",
                "model": m, "label": r.label, "cell": cell_text(r), "mae": r.value, "mae_std": r.spread,
                "over": r.over, "aggregate": r.aggregate if r.has_value else "", "n": r.n_units,
                "rank": r.rank, "mad": t.mad[d], "mad_mae": r.mad_mae,
                "pooled_mae": r.pooled, "pooled_std": r.pooled_std, "mean_folds": r.mean_folds,
                "std_folds": r.std_folds, "fold_mae": ";".join(f"{s}={v!r}" for s, v in r.fold_mae.items()),
                "fits": r.n_fits, "fits_ok": r.n_ok, "fits_failed": r.n_failed, "fits_no_test_mae": r.n_no_metric,
                "fits_running": r.n_running, "no_final_reason": r.no_final_reason,
                "params_min": r.params[0] if r.params else math.nan, "params_max": r.params[-1] if r.params else math.nan,
                "trials_completed": r.trials.get("completed", 0), "trials_pruned": r.trials.get("pruned", 0),
                "trials_failed": r.trials.get("failed", 0), "trials_other": tot_other,
                "epochs_search": r.search_epochs, "epochs_final": r.final_epochs,
                "search_cpu_h": r.search_cpu_h, "search_gpu_h": r.search_gpu_h,
                "final_cpu_h": r.final_cpu_h, "final_gpu_h": r.final_gpu_h,
                "max_epochs": r.max_epochs, "num_samples": r.num_samples, "subsample": r.subsample,
                "hardware": "; ".join(r.hardware), "sweep_id": r.sweep_id, "git_commit": "; ".join(r.git_commits),
                "significance": t.significance[d].text if m in (t.significance[d].best, t.significance[d].second) else "",
                "notes": "; ".join(t.notes[d]), "source": "MLflow",
            })
    for _, p in t.published.iterrows():
        rows.append({"suite": t.data.suite, "dataset": p["dataset"], "unit": t.info[p["dataset"]]["unit"],
                     "kind": "published", "model": p["model"], "label": f"{p['model']} (published)",
                     "cell": f"{p['value']:.4g}", "mae": p["value"],
                     "aggregate": "folds" if p["metric"] == "mae_test_mean_folds" else "",
                     "notes": p["note"], "source": p["source"]})
    return pd.DataFrame(rows)


def fits_frame(t: SuiteTables) -> pd.DataFrame:
    return t.fits


def significance_frame(t: SuiteTables) -> pd.DataFrame:
    rows = []
    for d in t.datasets:
        s = t.significance[d]
        rows.append({"suite": t.data.suite, "dataset": d,
                     "best": t.labels.get(s.best, ""), "second": t.labels.get(s.second, ""),
                     "test": "wilcoxon signed-rank" if finite(s.p_value) else "", "paired": s.test, "n": s.n,
                     "statistic": s.statistic, "p_value": s.p_value, "text": s.text})
    return pd.DataFrame(rows)


def models_frame(t: SuiteTables) -> pd.DataFrame:
    rows = []
    for m in t.models:
        tot = model_totals(t, m)
        mean, n = t.average_rank[m]
        rows.append({"suite": t.data.suite, "model": m, "label": t.labels[m], "datasets": tot["datasets"],
                     "average_rank": mean, "ranked_datasets": n,
                     "params_min": tot["params"][0] if tot["params"] else math.nan,
                     "params_max": tot["params"][-1] if tot["params"] else math.nan,
                     "trials_completed": tot["trials"].get("completed", 0), "trials_pruned": tot["trials"].get("pruned", 0),
                     "trials_failed": tot["trials"].get("failed", 0),
                     "epochs_search": tot["search_epochs"], "epochs_final": tot["final_epochs"],
                     "search_cpu_h": tot["search_cpu_h"], "search_gpu_h": tot["search_gpu_h"],
                     "final_cpu_h": tot["final_cpu_h"], "final_gpu_h": tot["final_gpu_h"]})
    return pd.DataFrame(rows)


def csv_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    frame.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue().encode("utf-8")


# ----------------------------------------------------------------------------- README
def readme_entry(t: SuiteTables) -> dict:
    """One suite's rows of README.md's two tables (the index, and the budget per sweep), as cells.

    Written beside the suite's pages (``<suite>/index.json``) so that README.md can be composed
    from the suites present in a folder, each from its own store (scripts/publish_leaderboard.py
    replaces one suite's pages without the other's store)."""
    suite = t.data.suite
    f = t.fits
    n_ok = int((f["state"] == OK).sum()) if not f.empty else 0
    totals = [model_totals(t, m) for m in t.models]
    cpu = sum(x for tot in totals for x in (tot["search_cpu_h"], tot["final_cpu_h"]) if finite(x))
    gpu = sum(x for tot in totals for x in (tot["search_gpu_h"], tot["final_gpu_h"]) if finite(x))
    trials = sum(sum(tot["trials"].values()) for tot in totals)
    hardware = sorted({h for r in t.results.values() for h in r.hardware})
    index = [f"[{suite}]({suite}.md)", str(len(t.datasets)), ", ".join(t.labels[m] for m in t.models),
             f"{n_ok} of {len(f)}", str(trials), f"{cpu:.3g} / {gpu:.3g}", "; ".join(hardware) or "n/a",
             ", ".join(f"`{short_commit(c)}`" for c in commits_of(t)) or "unknown", date_of(last_end(t))]
    budget = []
    for sweep, b in sorted(t.sweeps.items()):
        per = b["datasets"].values()
        budget.append([suite, f"`{sweep}`", str(sum(1 for d in per if d["searches"])),
                       str(len({m for d in per for m in d["models"]})),
                       str(sum(d["searches"] for d in per)), b["num_samples"], b["max_epochs"], b["final_seeds"],
                       str(sum(d["finals"] for d in per)), b["subsample"], f"`{b['command']}`"])
    return {"suite": suite, "index": index, "budget": budget}


def _row_cells(row: str) -> list[str]:
    """A markdown table row's cells, ``\\|`` unescaped (see render.table)."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row.strip()[1:-1])]


def entry_from_readme(readme: str, suite: str) -> dict | None:
    """A suite's :func:`~harness.leaderboard.render.readme_entry` read back from a README.md
    written before the suites had ``index.json`` (its rows of the index and budget tables)."""
    index, budget = None, []
    for line in readme.splitlines():
        if not line.startswith("| "):
            continue
        cells = _row_cells(line)
        if cells[0] == f"[{suite}]({suite}.md)":
            index = cells
        elif cells[0] == suite and len(cells) == 11:
            budget.append(cells)
    return None if index is None else {"suite": suite, "index": index, "budget": budget}


def render_readme(entries: list[dict]) -> str:
    """README.md from the suites' :func:`readme_entry` rows (in suite order)."""
    entries = sorted(entries, key=lambda e: e["suite"])
    lines = ["# Leaderboards", "",
             "Generated by `harness leaderboard` from the MLflow store of the sweeps (the only source of "
             "truth); never edited by hand. A dataset's page and plots are computed from its run data "
             "(`<suite>/<dataset>/runs.json.gz`: its runs as read from MLflow), and regenerating them gives "
             "the same bytes; a suite page is composed from its datasets' records "
             "(`<suite>/<dataset>/record.json`). So datasets, and models of one dataset, may come from "
             "different stores, each naming its sweeps. This index lists the suites in this folder (each "
             "suite's rows are in `<suite>/index.json`).", ""]
    lines += ["## Index", ""]
    if entries:
        lines += table(["suite", "datasets", "models", "final fits with a test MAE", "trials",
                        "compute CPU-h / GPU-h", "hardware", "commit", "last run ended"],
                       [e["index"] for e in entries],
                       ["---", "---:", "---", "---:", "---:", "---:", "---", "---", "---"])
    else:
        lines.append("No leaderboard yet: the store has no sweep.")
    lines += ["", "Per suite page: test MAE (mean ± std) with published numbers beside, rank, MAD:MAE, "
              "cross-validation pooled vs per-fold, cost per model, budget; per dataset page: parity, residual, "
              "learning-curve, search-trial and MAE-vs-cost plots, every final fit, the chosen hyperparameters; "
              "CSV exports of every table (and Matbench submission files for `matbench`).", ""]
    lines += ["## Protocols", ""]
    for suite, text in PROTOCOLS.items():
        lines += [f"### `{suite}`", "", text, ""]
    lines += ["Everywhere: a final fit retrains the chosen configuration from scratch on the split's "
              "training part (validation part for early stopping / SWA as the model's recipe does), then "
              "scores the untouched test part. The search (Optuna TPE, told the truth about ASHA-pruned "
              "trials) sees only train/val. Published numbers are quoted from the papers and the Matbench "
              "leaderboard (`reference_results.csv`), marked *(published)*, and every difference between "
              "their protocol and ours is listed beside them.", ""]
    lines += ["## Budget and how to reproduce", ""]
    rows = [row for e in entries for row in e["budget"]]
    if rows:
        lines += table(["suite", "sweep", "datasets", "models", "searches", "trials per search", "max epochs",
                        "final seeds", "final fits", "subsample", "command"], rows)
        lines += ["", "A sweep runs with `--workdir DIR`; an interrupted one continues with "
                  "`harness sweep --resume DIR`; the pages are rebuilt with "
                  "`harness leaderboard --workdir DIR` (or `--mlflow-uri URI`)."]
    else:
        lines.append("No sweep in the store yet.")
    lines.append("")
    return "\n".join(lines)
