"""Paper figures from run records: each ``plot_*`` takes the tidy frames of vsd.analysis.collect and
returns a matplotlib Figure (one style file: style.mplstyle), or raises :class:`MissingData` with a
one-line reason when the records hold nothing to draw. :func:`save_figure` writes vector PDF plus PNG.

Error bars and bands are 95% t-intervals over seeds (vsd.analysis.aggregate); a condition run with a
single seed is drawn without one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib

matplotlib.use(matplotlib.get_backend())  # keep the caller's backend (Agg headless, inline in notebooks)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from vsd.analysis.aggregate import (  # noqa: E402
    ABLATION_FLAGS,
    ablation_subset,
    aggregate,
    aggregate_long,
    condition_label,
    label_keys,
    mean_ci,
)
from vsd.analysis.collect import varying_keys  # noqa: E402

STYLE = Path(__file__).with_name("style.mplstyle")

TAU = "τ, accepted length (tokens / target forward)"
SPEEDUP = "speedup (× plain AR tokens/s)"
UNITS = {
    "eval/tau": TAU,
    "eval/speedup": SPEEDUP,
    "eval/tokens_per_s": "decoding throughput (tokens/s)",
    "eval/speedup_bound": "speedup bound τ/(c_verify + D·c_draft) (×)",
    "eval/lossless_match": "lossless match (fraction of prompt turns)",
    "train/sim_tau": "simulated τ (tokens / target forward)",
    "train/loss": "training loss (nats)",
}
CATEGORY_TAU = r"eval/(?!peer/)([^/]+)/tau"
CATEGORY_SPEEDUP = r"eval/(?!peer/)([^/]+)/speedup"
ALPHA = r"eval/alpha_(\d+)"
# Fixed colours for the main methods so that every figure agrees; other conditions cycle the rest.
METHOD_COLORS = {"EAGLE-3": "#0072B2", "VSD": "#D55E00", "n-gram": "#7F7F7F"}
CYCLE = ["#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#8C564B", "#F0E442", "#17BECF", "#BCBD22"]
MAX_SERIES = 6


class MissingData(LookupError):
    """The records hold nothing this figure (or table) can be drawn from; ``str()`` says what is missing."""


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The project's matplotlib style (vsd/analysis/style.mplstyle)."""
    with plt.style.context(str(STYLE)):
        yield


def save_figure(fig: Figure, out_dir: str | Path, name: str, close: bool = True) -> list[Path]:
    """Write ``<out_dir>/<name>.pdf`` (vector) and ``.png``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.pdf", out / f"{name}.png"]
    with style():
        for p in paths:
            # no creation date: regenerating a figure from the same records gives the same file
            fig.savefig(p, metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    if close:
        plt.close(fig)
    return paths


def colors_for(labels: Sequence[str]) -> dict[str, str]:
    """Stable colour per condition label: the main methods get theirs, the rest cycle in order."""
    out, i = {}, 0
    for lab in labels:
        if lab in METHOD_COLORS:
            out[lab] = METHOD_COLORS[lab]
        else:
            out[lab] = CYCLE[i % len(CYCLE)]
            i += 1
    return out


def family_color(label: str) -> str:
    """Bar colour by method family: EAGLE-3 blue, full VSD orange, VSD with an ablation light orange."""
    if label.startswith("EAGLE-3"):
        return METHOD_COLORS["EAGLE-3"]
    if label.startswith("VSD −"):
        return "#F4A582"
    if label.startswith("VSD"):
        return METHOD_COLORS["VSD"]
    return METHOD_COLORS["n-gram"]


def _completed(runs: pd.DataFrame) -> pd.DataFrame:
    if "status" not in runs or not len(runs):
        raise MissingData("no runs")
    done = runs[runs["status"] == "completed"]
    if not len(done):
        raise MissingData("no completed runs")
    return done


def _need(df: pd.DataFrame, cols: Sequence[str], what: str) -> pd.DataFrame:
    missing = [c for c in cols if c not in df.columns or df[c].notna().sum() == 0]
    if missing:
        raise MissingData(f"{what}: no run has {', '.join(missing)}")
    return df.dropna(subset=list(cols))


def _err(ci: pd.Series | np.ndarray) -> np.ndarray:
    """CI half-widths as error-bar lengths (NaN, i.e. a single seed, becomes no bar)."""
    return np.nan_to_num(np.asarray(ci, dtype=float), nan=0.0)


def _main_labels(agg: pd.DataFrame, score: str | None = None) -> list[str]:
    """Conditions to show where many would clutter: full methods (no ablation switched off) first, at most
    MAX_SERIES, keeping the best by ``score`` when there are more."""
    labels = list(agg["label"])
    main = [lab for lab in labels if "−" not in lab] or labels
    if len(main) > MAX_SERIES and score and score in agg:
        best = agg[agg["label"].isin(main)].sort_values(score, ascending=False)["label"]
        main = [lab for lab in main if lab in set(best.head(MAX_SERIES))]
    return main[:MAX_SERIES]


def _legend(ax: plt.Axes, n: int, **kw) -> None:
    if n > 4:  # many entries: outside the axes so that they never cover data
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw)
    else:
        ax.legend(**kw)


# ------------------------------------------------------------------------------------------ τ vs S
def plot_tau_vs_samples(runs: pd.DataFrame, metric: str = "eval/tau") -> Figure:
    """τ against the number of sampled draft paths S (``loss.num_samples``) for VSD, log₂ x axis; EAGLE-3
    (which samples nothing) as a horizontal reference line with its CI band."""
    done = _need(_completed(runs), [metric], "τ vs S")
    vsd = done[done["loss.name"] == "vsd"]
    if "loss.num_samples" not in vsd or vsd["loss.num_samples"].nunique() < 2:
        raise MissingData("τ vs S: needs VSD runs at two or more loss.num_samples values")
    keys = [k for k in varying_keys(done) if k != "loss.num_samples"]
    agg = aggregate(vsd, by=["method", *keys, "loss.num_samples"], metrics=[metric])
    agg["series"] = [condition_label(r, label_keys(vsd, keys)) for _, r in agg.iterrows()]
    base = aggregate(done[done["loss.name"] == "eagle3"], by=["method", *keys], metrics=[metric])
    # Ablation conditions run at a single S are points, not curves: they belong to the ablation grid.
    counts = agg.groupby("series")["loss.num_samples"].nunique()
    series = [s for s in dict.fromkeys(agg["series"]) if counts[s] > 1]
    colors = colors_for([*base["label"], *series])
    with style():
        fig, ax = plt.subplots()
        for _, b in base.iterrows():
            c = colors[b["label"]]
            ax.axhline(b[metric], color=c, ls="--", lw=1.2, label=f"{b['label']} (no sampling)")
            if not math.isnan(b[f"{metric}.ci"]):
                ax.axhspan(b[metric] - b[f"{metric}.ci"], b[metric] + b[f"{metric}.ci"], color=c, alpha=0.15)
        for s in series:
            g = agg[agg["series"] == s].sort_values("loss.num_samples")
            ax.errorbar(
                g["loss.num_samples"],
                g[metric],
                yerr=_err(g[f"{metric}.ci"]),
                marker="o",
                color=colors[s],
                label=s,
            )
        svals = sorted(agg["loss.num_samples"].unique())
        ax.set_xscale("log", base=2)
        ax.set_xticks(svals, [str(int(s)) for s in svals])
        ax.minorticks_off()
        ax.set_xlabel("S, sampled draft paths per anchor (log scale)")
        ax.set_ylabel(UNITS.get(metric, metric))
        ax.set_title("τ vs. sampled paths S (mean ± 95% CI over seeds)")
        _legend(ax, len(series) + len(base))
    return fig


# ----------------------------------------------------------------------------------- method bars
def plot_method_bars(runs: pd.DataFrame, metrics: Sequence[str] = ("eval/tau", "eval/speedup")) -> Figure:
    """Horizontal bars, one per condition (method + swept keys), one panel per metric, 95% CI whiskers;
    a dotted line at 1 marks plain autoregressive decoding (τ = 1, speedup = 1)."""
    done = _completed(runs)
    metrics = [m for m in metrics if m in done and done[m].notna().any()]
    if not metrics:
        raise MissingData("method bars: no run has eval/tau or eval/speedup")
    agg = aggregate(done, metrics=metrics).sort_values(metrics[0], ascending=True, ignore_index=True)
    height = max(2.6, 0.42 * len(agg) + 1.2)
    with style():
        fig, axes = plt.subplots(
            1, len(metrics), figsize=(4.6 * len(metrics) + 1.5, height), sharey=True, constrained_layout=True
        )
        axes = np.atleast_1d(axes)
        y = np.arange(len(agg))
        for ax, m in zip(axes, metrics):
            ax.barh(
                y,
                agg[m],
                xerr=_err(agg[f"{m}.ci"]),
                color=[family_color(lab) for lab in agg["label"]],
                capsize=3,
                error_kw={"elinewidth": 1.2},
            )
            ax.axvline(1.0, color="0.3", ls=":", lw=1, label="plain AR")
            ax.set_xlabel(UNITS.get(m, m))
            ax.grid(axis="x", alpha=0.35)
            ax.grid(axis="y", visible=False)
            lo = np.nanmin(agg[m] - _err(agg[f"{m}.ci"]))
            ax.set_xlim(left=min(0.0, lo))
        axes[0].set_yticks(y, agg["label"])
        axes[0].set_ylabel("method (swept settings)")
        axes[0].legend(loc="lower right")
        fig.suptitle("τ and speedup per method (mean ± 95% CI over seeds)")
    return fig


# --------------------------------------------------------------------------------- category bars
def plot_category_bars(runs: pd.DataFrame, labels: Sequence[str] | None = None) -> Figure:
    """Grouped bars per eval category (x) and condition (colour), τ on top and speedup below, CI whiskers.
    ``labels`` picks conditions (default: the full methods, at most six)."""
    done = _completed(runs)
    tau = aggregate_long(done, CATEGORY_TAU, name="category")
    if not len(tau):
        raise MissingData("category bars: no run has eval/<category>/tau")
    spd = aggregate_long(done, CATEGORY_SPEEDUP, name="category")
    overall = aggregate(done, metrics=["eval/tau"])
    labels = list(labels) if labels else _main_labels(overall, "eval/tau")
    panels = [(tau, TAU)] + ([(spd, SPEEDUP)] if len(spd) else [])
    cats = sorted(tau["category"].unique())
    colors = colors_for(labels)
    width = 0.8 / len(labels)
    with style():
        fig, axes = plt.subplots(
            len(panels),
            1,
            figsize=(max(6.4, 1.1 * len(cats) + 3), 3.0 * len(panels) + 0.6),
            sharex=True,
            squeeze=False,
        )
        for ax, (data, ylabel) in zip(axes[:, 0], panels):
            for i, lab in enumerate(labels):
                g = data[data["label"] == lab].set_index("category").reindex(cats)
                x = np.arange(len(cats)) + (i - (len(labels) - 1) / 2) * width
                ax.bar(x, g["mean"], width, yerr=_err(g["ci"]), color=colors[lab], label=lab, capsize=2)
            ax.axhline(1.0, color="0.3", ls=":", lw=1)
            ax.set_ylabel(ylabel.replace(" (", "\n("))
        axes[-1, 0].set_xticks(np.arange(len(cats)), cats)
        axes[-1, 0].set_xlabel("eval category")
        _legend(axes[0, 0], 5)
        fig.suptitle("Per-category τ and speedup (mean ± 95% CI over seeds; dotted: plain AR)")
    return fig


# --------------------------------------------------------------------------------- ablation grid
def plot_ablation_grid(runs: pd.DataFrame, metric: str = "eval/tau") -> Figure:
    """VSD's ARW × CAR grid as heatmaps, one panel per oracle-filter setting, cells annotated mean ± CI.
    Other swept keys are held at their most-run value (said in the title); cells never run are hatched."""
    done = _need(_completed(runs), [metric], "ablation grid")
    flags = list(ABLATION_FLAGS)
    vsd, held = ablation_subset(done)
    if not len(vsd) or vsd[flags].drop_duplicates().shape[0] < 2:
        raise MissingData("ablation grid: needs VSD runs at two or more ARW/CAR/oracle-filter settings")
    agg = aggregate(vsd, by=flags, metrics=[metric])
    vals = agg[metric].to_numpy(dtype=float)
    vmin, vmax = np.nanmin(vals), np.nanmax(vals)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    base = aggregate(done[done["loss.name"] == "eagle3"], by=[], metrics=[metric])
    with style():
        fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.9), constrained_layout=True)
        for ax, filt in zip(axes, (False, True)):
            grid = np.full((2, 2), np.nan)
            text = [["not run", "not run"], ["not run", "not run"]]
            for _, r in agg[agg["loss.oracle_filter"] == filt].iterrows():
                i, j = int(bool(r["loss.arw"])), int(bool(r["loss.car"]))
                grid[i, j] = r[metric]
                ci = r[f"{metric}.ci"]
                text[i][j] = (
                    f"{r[metric]:.3f}" + ("" if math.isnan(ci) else f"\n± {ci:.3f}") + f"\nn={r['n_runs']}"
                )
            ax.set_facecolor("0.92")
            im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=vmin, vmax=vmax, origin="lower")
            for i in range(2):
                for j in range(2):
                    v = grid[i, j]
                    dark = not math.isnan(v) and (v - vmin) / (vmax - vmin) < 0.6
                    ax.text(
                        j,
                        i,
                        text[i][j],
                        ha="center",
                        va="center",
                        fontsize=9,
                        color="white" if dark else "black",
                    )
                    if math.isnan(v):
                        ax.add_patch(
                            plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", ec="0.6")
                        )
            ax.set_xticks([0, 1], ["off", "on"])
            ax.set_yticks([0, 1], ["off", "on"])
            ax.set_xlabel("CAR (confidence-aware reg.)")
            ax.set_ylabel("ARW (adaptive rejection weights)")
            ax.grid(False)
            ax.set_title(f"oracle filter {'on' if filt else 'off'}")
        cb = fig.colorbar(im, ax=list(axes), shrink=0.85)
        cb.set_label(UNITS.get(metric, metric).replace(" (", "\n("))
        sub = (
            f"EAGLE-3: {base[metric].iloc[0]:.3f}"
            if len(base) and not math.isnan(base[metric].iloc[0])
            else ""
        )
        sub = "; ".join(s for s in [sub, *held] if s)
        name = {"eval/tau": "τ", "eval/speedup": "speedup"}.get(metric, metric)
        fig.suptitle(f"VSD ablation: {name} (mean ± 95% CI over seeds)" + (f"\n{sub}" if sub else ""))
    return fig


# --------------------------------------------------------------------------- acceptance by depth
def plot_acceptance_curves(runs: pd.DataFrame, labels: Sequence[str] | None = None) -> Figure:
    """Per-depth conditional acceptance α_k (``eval/alpha_<k>``) against draft depth k, one line per
    condition with 95% CI error bars (default conditions: the full methods, at most six)."""
    done = _completed(runs)
    alpha = aggregate_long(done, ALPHA, name="depth")
    if not len(alpha):
        raise MissingData("acceptance curves: no run has eval/alpha_<k>")
    alpha["depth"] = alpha["depth"].astype(int)
    labels = list(labels) if labels else _main_labels(aggregate(done, metrics=["eval/tau"]), "eval/tau")
    colors = colors_for(labels)
    with style():
        fig, ax = plt.subplots()
        for n, lab in enumerate(labels):
            g = alpha[alpha["label"] == lab].sort_values("depth")
            # Small horizontal offsets keep overlapping error bars apart.
            dx = (n - (len(labels) - 1) / 2) * 0.04
            ax.errorbar(
                g["depth"] + dx, g["mean"], yerr=_err(g["ci"]), marker="o", color=colors[lab], label=lab
            )
        depths = sorted(alpha["depth"].unique())
        ax.set_xticks(depths)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("draft depth k (tokens past the last accepted one)")
        ax.set_ylabel(r"$\alpha_k$ = P(depth k accepted | depth k−1 accepted)")
        ax.set_title("Per-depth acceptance (mean ± 95% CI over seeds)")
        _legend(ax, len(labels))
    return fig


# ------------------------------------------------------------------------------- training curves
def plot_training_curves(
    train_logs: pd.DataFrame,
    metrics: Sequence[str] = ("train/sim_tau", "train/loss"),
    step: str = "step",
    labels: Sequence[str] | None = None,
) -> Figure:
    """Training curves from ``train_log.jsonl`` rows: mean over seeds per condition with a 95% CI band,
    one panel per metric, against the optimizer step (default conditions: the full methods, at most six)."""
    if not len(train_logs) or step not in train_logs:
        raise MissingData(f"training curves: no train_log.jsonl rows with a '{step}' column")
    metrics = [m for m in metrics if m in train_logs and train_logs[m].notna().any()]
    if not metrics:
        raise MissingData("training curves: no train/sim_tau or train/loss in train_log.jsonl")
    keys = [
        c for c in train_logs.columns if "." in c and "/" not in c and train_logs[c].astype(str).nunique() > 1
    ]
    df = train_logs.copy()
    df["label"] = [condition_label(r, label_keys(df, keys)) for _, r in df.iterrows()]
    order = df.sort_values(["method", *keys])["label"].drop_duplicates()
    if labels is None:
        main = [lab for lab in order if "−" not in lab] or list(order)
        labels = main[:MAX_SERIES]
    colors = colors_for(labels)
    with style():
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics) + 1.5, 3.8), squeeze=False)
        for ax, m in zip(axes[0], metrics):
            for lab in labels:
                g = df[(df["label"] == lab) & df[m].notna()]
                stats = [(s, *mean_ci(v[m])[:2]) for s, v in g.groupby(step)]
                if not stats:
                    continue
                s, mu, ci = (np.asarray(a, dtype=float) for a in zip(*stats))
                ax.plot(s, mu, color=colors[lab], label=lab)
                ax.fill_between(s, mu - _err(ci), mu + _err(ci), color=colors[lab], alpha=0.2, lw=0)
            ax.set_xlabel("training step (optimizer updates)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(UNITS.get(m, m))
        _legend(axes[0, -1], 5)
        fig.suptitle("Training curves (mean over seeds, band: 95% CI)")
    return fig


# ------------------------------------------------------------------------------- speedup vs bound
def plot_speedup_vs_bound(runs: pd.DataFrame) -> Figure:
    """Measured speedup against the cost-model bound τ/(c_verify + D·c_draft) (``eval/speedup_bound``), one
    point per condition with 95% CIs on both axes (small dots: single runs); y = x is the bound."""
    done = _need(_completed(runs), ["eval/speedup", "eval/speedup_bound"], "speedup vs bound")
    agg = aggregate(done, metrics=["eval/speedup", "eval/speedup_bound"])
    colors = colors_for(list(agg["label"]))
    with style():
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        x, y = done["eval/speedup_bound"], done["eval/speedup"]
        ax.scatter(x, y, s=10, color="0.6", alpha=0.7, label="single runs", zorder=1)
        for _, r in agg.iterrows():
            ax.errorbar(
                r["eval/speedup_bound"],
                r["eval/speedup"],
                xerr=_err([r["eval/speedup_bound.ci"]]),
                yerr=_err([r["eval/speedup.ci"]]),
                marker="o",
                ms=6,
                color=colors[r["label"]],
                label=r["label"],
                zorder=3,
            )
        lo = min(0.0, float(np.nanmin([x.min(), y.min()])))
        hi = max(1.1, float(np.nanmax([x.max(), y.max()])) * 1.1)  # keep the plain-AR line (y = 1) in view
        ax.plot([lo, hi], [lo, hi], color="0.3", ls="--", lw=1, label="measured = bound")
        ax.axhline(1.0, color="0.3", ls=":", lw=1, label="plain AR")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal", adjustable="box")
        ax.grid(True, alpha=0.35)
        ax.set_xlabel(UNITS["eval/speedup_bound"])
        ax.set_ylabel("measured speedup (× plain AR tokens/s)")
        ax.set_title("Measured speedup vs. cost-model bound")
        _legend(ax, len(agg) + 3)
    return fig


FIGURES = {
    "tau_vs_samples": ("runs", plot_tau_vs_samples),
    "method_bars": ("runs", plot_method_bars),
    "category_bars": ("runs", plot_category_bars),
    "ablation_grid": ("runs", plot_ablation_grid),
    "acceptance_curves": ("runs", plot_acceptance_curves),
    "training_curves": ("train_logs", plot_training_curves),
    "speedup_vs_bound": ("runs", plot_speedup_vs_bound),
}
