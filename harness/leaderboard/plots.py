"""PNG plots of one dataset's results (matplotlib, Agg canvas, no pyplot state).

Byte-identical output for identical input: the default style is forced (a user's
matplotlibrc changes nothing), the PNG carries no ``Software`` entry and no time stamp, and
every series is drawn in a fixed order. Plots are written as 8-bit palette PNGs (:func:`_palette_png`).
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd

from harness.leaderboard.store import OK
from harness.leaderboard.tables import PairResult, SuiteTables, finite

DPI = 100
PANEL = (4.2, 3.4)  # inches per subplot
STATE_COLORS = {"completed": "C0", "pruned": "C1", "failed": "C3"}
# A model's marker in plots that show every model in one panel: the 10 default colours repeat
# after ten models (a suite page has up to 25), so the shape changes with each round of colours.
MARKERS = ("o", "s", "^", "D", "v", "P")


def model_style(index: int) -> dict:
    """Colour and marker of the model at ``index`` (:func:`style_index`): no two of the first 60
    models look alike."""
    return {"color": f"C{index % 10}", "marker": MARKERS[(index // 10) % len(MARKERS)]}


def style_index(model: str, models: list[str]) -> int:
    """The model's place among every registered model (by registry name): the same model looks
    the same on every dataset page whatever the other models on it are (a dataset's page may be
    computed from its own run data alone, or from a store holding other datasets' models too).
    A model this harness does not register (an older version's) comes after them, in ``models``' order."""
    from harness.models import MODEL_FILES

    known = sorted(name for names in MODEL_FILES.values() for name in names)
    if model in known:
        return known.index(model)
    return len(known) + [m for m in models if m not in known].index(model)


def MaxNLocator(**kwargs):
    from matplotlib.ticker import MaxNLocator as _Locator

    return _Locator(**kwargs)


def _epoch_axis(ax, last_epoch: float) -> None:
    """Integer epoch ticks; a one-epoch axis is centred on 1 instead of showing fractions."""
    if last_epoch <= 1:
        ax.set_xlim(0.5, 1.5)
        ax.set_xticks([1])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _value_axis(ax, values: np.ndarray) -> None:
    """Log scale where this panel's values span more than 20x (a diverged first epoch beside the
    converged ones), with plain tick labels (10, 20, 50) instead of 2 x 10^1; linear otherwise."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    values = values[np.isfinite(values) & (values > 0)]
    if len(values) == 0 or values.max() / values.min() <= 20:
        return
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _figure(n_panels: int, ncols_max: int = 3):
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols_max, n_panels))
    nrows = max(1, math.ceil(n_panels / ncols))
    # constrained layout makes room for the suptitle above two-line panel titles (tight_layout
    # let them overlap).
    fig = Figure(figsize=(PANEL[0] * ncols, PANEL[1] * nrows), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _panel_title(ax, label: str, detail: str) -> None:
    """The model's label on one line and what the panel shows on the next: side by side panels'
    one-line titles ran into each other for long labels ("IRNet-17 (composition + structure)")."""
    ax.set_title(f"{label}\n{detail}", fontsize=9)


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return _palette_png(buf.getvalue())


def _palette_png(png: bytes) -> bytes:
    """The same picture as an 8-bit palette PNG: about 2.7 times smaller than matplotlib's RGBA
    (the committed pages' 64 PNGs: 16.2 MB as RGBA, 5.9 MB as palette), and every republish of a
    dataset commits its plots again. These plots are lines, markers and bars in a few colours on
    white (a few hundred to 10,000 distinct colours, nearly all antialiasing shades): median-cut
    to 256 colours without dithering moves a pixel by 0.2 of 255 on average, and the picture does
    not change to the eye. Pillow is matplotlib's own dependency; its output is deterministic."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                dither=Image.Dither.NONE)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _styled(draw):
    """Run ``draw`` under matplotlib's default style (not the user's rc) and return PNG bytes."""
    import matplotlib
    import matplotlib.style

    with matplotlib.style.context("default"), matplotlib.rc_context({"svg.hashsalt": "harness", "font.size": 9}):
        return _png(draw())


def _models_with(tables: SuiteTables, dataset: str, predicate) -> list[PairResult]:
    out = []
    for model in tables.models:
        res = tables.get(dataset, model)
        if res is not None and predicate(res):
            out.append(res)
    return out


def _ok_runs(tables: SuiteTables, dataset: str, model: str) -> pd.DataFrame:
    f = tables.data.finals
    return f[(f["dataset"] == dataset) & (f["model"] == model) & (f["state"] == OK)]


def _axis_label(tables: SuiteTables, dataset: str, what: str) -> str:
    info = tables.info.get(dataset, {})
    unit = info.get("unit", "")
    return f"{what} ({unit})" if unit else what


def _mean_predictions(tables: SuiteTables, runs: pd.DataFrame, store: dict) -> pd.DataFrame | None:
    frames = [store[r] for r in runs["run_id"] if r in store]
    if not frames:
        return None
    both = pd.concat(frames, ignore_index=True)
    both["id"] = both["id"].astype(str)
    return both.groupby("id", sort=True).agg(target=("target", "first"), prediction=("prediction", "mean")).reset_index()


# ----------------------------------------------------------------------------- plots
def parity(tables: SuiteTables, dataset: str) -> bytes | None:
    """Predicted vs true test targets per model (prediction averaged over the model's seeds)."""
    items = []
    for res in _models_with(tables, dataset, lambda r: r.n_ok > 0):
        frame = _mean_predictions(tables, _ok_runs(tables, dataset, res.model), tables.data.predictions)
        if frame is not None:
            items.append((res, frame))
    if not items:
        return None
    lo = min(min(f["target"].min(), f["prediction"].min()) for _, f in items)
    hi = max(max(f["target"].max(), f["prediction"].max()) for _, f in items)
    pad = 0.04 * (hi - lo or 1.0)

    def draw():
        fig, axes = _figure(len(items))
        for ax, (res, frame) in zip(axes, items):
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=1, zorder=1)
            ax.scatter(frame["target"], frame["prediction"], s=10, alpha=0.6, color="C0", lw=0, zorder=2)
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_aspect("equal", adjustable="box")
            mae = float(np.mean(np.abs(frame["prediction"] - frame["target"])))
            _panel_title(ax, res.label, f"MAE of mean prediction {mae:.4g}")
            ax.set_xlabel(_axis_label(tables, dataset, "true"))
            ax.set_ylabel(_axis_label(tables, dataset, "predicted"))
        fig.suptitle(f"{dataset}: parity (test, {len(items[0][1])} samples)")
        return fig

    return _styled(draw)


def residual_axis_limit(values: np.ndarray) -> float:
    """Half-width of the residual histograms' shared axis: the 99th percentile of |residual|.

    A few outliers (phonon peaks off by thousands of cm^-1) would otherwise stretch the axis until
    the bulk is one bar; the residuals beyond the limit are drawn in the two edge bins."""
    magnitude = np.abs(values)
    return float(np.percentile(magnitude, 99)) or float(np.max(magnitude)) or 1.0


def residuals(tables: SuiteTables, dataset: str) -> tuple[bytes | None, bool]:
    """Histogram of residuals (prediction - target) of test, and of train where logged.
    Returns (png, whether any train residuals were drawn)."""
    items = []
    any_train = False
    for res in _models_with(tables, dataset, lambda r: r.n_ok > 0):
        runs = _ok_runs(tables, dataset, res.model)
        test = [tables.data.predictions[r] for r in runs["run_id"] if r in tables.data.predictions]
        train = [tables.data.train_predictions[r] for r in runs["run_id"] if r in tables.data.train_predictions]
        if not test:
            continue
        res_test = np.concatenate([(f["prediction"] - f["target"]).to_numpy(float) for f in test])
        # train predictions are kept as residuals in the pages' run data (rundata.py)
        res_train = np.concatenate([(f["residual"] if "residual" in f else f["prediction"] - f["target"]).to_numpy(float)
                                    for f in train]) if train else None
        any_train |= res_train is not None
        items.append((res, res_test, res_train))
    if not items:
        return None, False
    everything = np.concatenate([np.concatenate([t] + ([r] if r is not None else [])) for _, t, r in items])
    limit = residual_axis_limit(everything)
    edges = np.linspace(-limit, limit, 41)
    beyond = float(np.mean(np.abs(everything) > limit))

    def hist(ax, values, **kwargs):
        ax.hist(np.clip(values, -limit, limit), bins=edges, density=True, alpha=0.5, **kwargs)

    def draw():
        fig, axes = _figure(len(items))
        for ax, (res, test, train) in zip(axes, items):
            if train is not None:
                hist(ax, train, color="C0", label=f"train (MAE {np.mean(np.abs(train)):.4g})")
            hist(ax, test, color="C1", label=f"test (MAE {np.mean(np.abs(test)):.4g})")
            ax.axvline(0, color="0.3", lw=1)
            ax.set_title(res.label)
            ax.set_xlabel(_axis_label(tables, dataset, "prediction − true"))
            ax.set_ylabel("density")
            ax.legend(loc="upper right")
        what = "train and test" if any_train else "test only (train predictions not logged)"
        clipped = f"; the {beyond:.1%} beyond ±{limit:.3g} are in the edge bins" if beyond else ""
        fig.suptitle(f"{dataset}: residuals, {what}; all final fits{clipped}")
        return fig

    return _styled(draw), any_train


def learning_curves(tables: SuiteTables, dataset: str) -> bytes | None:
    """Train and validation MAE per epoch of every final fit (``epoch_*`` history)."""
    items = []
    for res in _models_with(tables, dataset, lambda r: r.n_fits > 0):
        f = tables.data.finals
        runs = f[(f["dataset"] == dataset) & (f["model"] == res.model)]
        curves = [(r["split"], r["seed"], tables.data.histories[r["run_id"]])
                  for _, r in runs.iterrows() if r["run_id"] in tables.data.histories]
        if curves:
            items.append((res, curves))
    if not items:
        return None

    def draw():
        fig, axes = _figure(len(items))
        for ax, (res, curves) in zip(axes, items):
            for k, (split, seed, h) in enumerate(curves):
                color = f"C{k % 10}"
                # one legend entry per fit (its colour); the line style is in the panel title
                ax.plot(h["epoch"], h["train_mae"], color=color, lw=1.2, alpha=0.8, label=f"{split}/seed {seed}")
                ax.plot(h["epoch"], h["val_mae"], color=color, lw=1.2, ls="--", alpha=0.8, label="_nolegend_")
            _value_axis(ax, np.concatenate([h[k].to_numpy(float) for _, _, h in curves for k in ("train_mae", "val_mae")]))
            _panel_title(ax, res.label, "solid: train, dashed: val")
            _epoch_axis(ax, max(float(h["epoch"].max()) for _, _, h in curves))
            ax.set_xlabel("epoch")
            ax.set_ylabel(_axis_label(tables, dataset, "MAE"))
            if len(curves) <= 10:  # beyond 10 the colours repeat and the legend would mislead
                ax.legend(fontsize=6, ncol=2 if len(curves) > 5 else 1)
        fig.suptitle(f"{dataset}: learning curves of the final fits")
        return fig

    return _styled(draw)


def trial_curves(tables: SuiteTables, dataset: str) -> bytes | None:
    """Validation MAE per epoch of every search trial; ASHA-stopped trials end early (×)."""
    t = tables.data.trials
    items = []
    for model in tables.models:
        runs = t[(t["dataset"] == dataset) & (t["model"] == model)]
        curves = [(r["trial_state"] or "unknown", r["split"], tables.data.trial_curves[r["run_id"]])
                  for _, r in runs.iterrows() if r["run_id"] in tables.data.trial_curves]
        if curves:
            items.append((tables.labels[model], curves, int(len(runs))))
    if not items:
        return None

    def draw():
        fig, axes = _figure(len(items))
        for ax, (label, curves, n_runs) in zip(axes, items):
            seen = set()
            for state, split, c in curves:
                color = STATE_COLORS.get(state, "0.5")
                name = state if state not in seen else None
                seen.add(state)
                ax.plot(c["epoch"], c["val_mae"], color=color, lw=1, alpha=0.7, marker=".", ms=3, label=name)
                if state == "pruned" and len(c):
                    ax.plot(c["epoch"].iloc[-1], c["val_mae"].iloc[-1], "x", color=color, ms=6)
            _value_axis(ax, np.concatenate([c["val_mae"].to_numpy(float) for _, _, c in curves]))
            _panel_title(ax, label, f"{n_runs} trials")
            _epoch_axis(ax, max((float(c["epoch"].max()) for _, _, c in curves if len(c)), default=1))
            ax.set_xlabel("epoch")
            ax.set_ylabel(_axis_label(tables, dataset, "val MAE"))
            ax.legend(fontsize=7)
        fig.suptitle(f"{dataset}: search trials (× = stopped by ASHA)")
        return fig

    return _styled(draw)


def pareto(tables: SuiteTables, dataset: str) -> bytes | None:
    """Headline test MAE against compute spent (search + final fits), Pareto front drawn."""
    # ranked results only: a model on fewer folds than the others is not comparable (tables.py)
    items = [r for r in _models_with(tables, dataset,
                                     lambda r: finite(r.rank) and finite(r.total_hours) and r.total_hours > 0)]
    if not items:
        return None
    order = sorted(items, key=lambda r: (r.total_hours, r.value))
    front, best = [], math.inf
    for r in order:
        if r.value < best:
            front.append(r)
            best = r.value

    def draw():
        fig, axes = _figure(1, 1)
        ax = axes[0]
        fig.set_size_inches(8.6, 4.6)
        for r in items:
            err = r.spread if finite(r.spread) else None
            ax.errorbar([r.total_hours], [r.value], yerr=None if err is None else [[err], [err]], ls="none",
                        capsize=3, label=r.label, **model_style(style_index(r.model, tables.models)))
        ax.scatter([r.total_hours for r in front], [r.value for r in front], s=160, facecolors="none",
                   edgecolors="0.3", lw=1, zorder=3, label="on the Pareto front")
        if len(front) > 1:
            ax.step([r.total_hours for r in front], [r.value for r in front], where="post", color="0.4",
                    lw=1, ls="--")
        xs = [r.total_hours for r in items]
        if max(xs) / min(xs) > 10:
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            ax.set_xscale("log")
            # hours as people write them (0.2, 1, 30), not 2×10⁻¹; within two decades the
            # 2 and 5 marks are labelled too, else a decade alone has too few labels to read
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            ax.xaxis.set_major_formatter(plain)
            if max(xs) / min(xs) < 100:
                ax.xaxis.set_minor_locator(LogLocator(subs=(2, 5)))
                ax.xaxis.set_minor_formatter(plain)
            else:
                ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
            ax.margins(x=0.15)
        ax.set_xlabel("compute: CPU-h + GPU-h reserved (search + final fits)")
        ax.set_ylabel(_axis_label(tables, dataset, "test MAE"))
        ax.set_title(f"{dataset}: MAE vs cost")
        # beside the axes, not on them: inside, a 14-model legend covered the points
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        return fig

    return _styled(draw)
