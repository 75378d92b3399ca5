"""Aggregation over seeds: mean and a t-distribution confidence interval per condition.

A condition is one combination of the grouping keys (default: the swept config keys, see
:func:`vsd.analysis.collect.varying_keys`); the runs inside it differ only by seed. Only completed runs are
aggregated. Output columns per metric ``m``: ``m`` (mean), ``m.ci`` (CI half-width; NaN with one run),
``m.std`` (sample std) and ``m.n`` (runs with a value), plus ``n_runs`` and a readable ``label``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from vsd.analysis.collect import EAGLE3_LOSS_KEYS, VSD_ONLY_PREFIX, metric_columns, varying_keys

# Keys folded into the method label (collect.method_label), so labels do not repeat them.
METHOD_KEYS = (
    "loss.name",
    "loss.arw",
    "loss.car",
    "loss.oracle_filter",
    "loss.importance",
    "decoding.drafter",
    "method",
)
SHORT_NAMES = {
    "loss.num_samples": "S",
    "loss.depth": "D",
    "loss.vsd_weight": "α_vsd",
    "loss.car_weight": "λ_car",
    "loss.verify_temperature": "T_verify",
    "decoding.temperature": "T",
    "decoding.mode": "mode",
    "decoding.total_tokens": "nodes",
    "model.name": "model",
}


def mean_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, CI half-width, sample std, n) of the finite values; half-width = t_{(1+level)/2, n-1}·s/√n.

    With n < 2 the spread is unknown: std and half-width are NaN (shown as no error bar).
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(float(v))], dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, 1
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n))
    return mean, half, std, n


def condition_label(row: pd.Series | dict, keys: Sequence[str]) -> str:
    """ "VSD −CAR (S=4)": the method label plus the non-method keys of the condition."""
    method = row.get("method", "")
    parts = []
    for k in keys:
        if k in METHOD_KEYS or k not in row:
            continue
        # An EAGLE-3 run's VSD-only loss settings are inert defaults: don't label by them.
        if method == "EAGLE-3" and k.startswith(VSD_ONLY_PREFIX) and k not in EAGLE3_LOSS_KEYS:
            continue
        parts.append(f"{SHORT_NAMES.get(k, k.split('.')[-1])}={row[k]}")
    return f"{method} ({', '.join(parts)})" if parts else str(method)


def label_keys(runs: pd.DataFrame, keys: Sequence[str]) -> list[str]:
    """The keys worth naming in labels: those that vary within some method (``loss.vsd_weight`` varies
    between EAGLE-3 and VSD only, so the method label already says it)."""
    if "method" not in runs or not len(runs):
        return list(keys)
    return [k for k in keys if k in runs and runs.groupby("method")[k].nunique(dropna=False).max() > 1]


def aggregate(
    runs: pd.DataFrame,
    by: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    level: float = 0.95,
    completed_only: bool = True,
) -> pd.DataFrame:
    """Mean and ``level`` CI over seeds of each metric, one row per condition (group of ``by`` keys).

    ``by`` defaults to the swept keys plus ``method``; ``metrics`` to every numeric metric column.
    """
    df = runs[runs["status"] == "completed"] if completed_only and "status" in runs else runs
    if by is None:
        by = ["method", *[k for k in varying_keys(runs) if k != "method"]]
    by = [k for k in by if k in df.columns]
    metrics = list(metrics) if metrics is not None else metric_columns(df)
    metrics = [m for m in metrics if m in df.columns]
    if not len(df):
        return pd.DataFrame(columns=[*by, "n_runs", "label"])
    rows = []
    groups = df.groupby(by, dropna=False, sort=True) if by else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row["n_runs"] = len(g)
        row["seeds"] = ",".join(str(s) for s in sorted(g["seed"].dropna().unique())) if "seed" in g else ""
        for m in metrics:
            mean, half, std, n = mean_ci(pd.to_numeric(g[m], errors="coerce"), level)
            row.update({m: mean, f"{m}.ci": half, f"{m}.std": std, f"{m}.n": n})
        rows.append(row)
    out = pd.DataFrame(rows)
    if "method" not in out and "method" in df:
        out["method"] = df["method"].iloc[0] if df["method"].nunique() == 1 else ""
    out["label"] = [condition_label(r, label_keys(df, by)) for _, r in out.iterrows()]
    return out


def aggregate_long(
    runs: pd.DataFrame,
    pattern: str,
    by: Sequence[str] | None = None,
    level: float = 0.95,
    name: str = "key",
) -> pd.DataFrame:
    """Metrics whose key matches regex ``pattern`` (one capture group), melted: one row per condition × key.

    E.g. ``pattern=r"eval/alpha_(\\d+)"`` gives columns ``[*by, key, mean, ci, n, label]`` per depth;
    ``r"eval/(?!peer/)([^/]+)/tau"`` gives per-category τ.
    """
    import re

    rx = re.compile(f"^{pattern}$")
    cols = {c: m.group(1) for c in metric_columns(runs) if (m := rx.match(c))}
    if not cols:
        return pd.DataFrame(columns=["label", name, "mean", "ci", "n"])
    agg = aggregate(runs, by=by, metrics=list(cols), level=level)
    rows = []
    for _, r in agg.iterrows():
        for c, k in cols.items():
            if r[f"{c}.n"] == 0:
                continue
            rows.append(
                {"label": r["label"], "method": r.get("method"), name: k, "mean": r[c], "ci": r[f"{c}.ci"]}
                | {"n": r[f"{c}.n"]}
            )
    return pd.DataFrame(rows)


ABLATION_FLAGS = ("loss.arw", "loss.car", "loss.oracle_filter")


def ablation_subset(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Completed VSD runs of the ARW × CAR × oracle-filter grid, and the other swept keys held fixed.

    Every other key that varies among VSD runs (e.g. ``loss.num_samples`` of an S sweep in the same folder)
    is held at the value under which most flag combinations were run; ``held`` says which ("key=value").
    """
    done = runs[runs["status"] == "completed"] if "status" in runs else runs
    vsd = done[done.get("loss.name") == "vsd"] if "loss.name" in done else done.iloc[:0]
    held: list[str] = []
    if not len(vsd) or any(f not in vsd for f in ABLATION_FLAGS):
        return vsd.iloc[:0], held
    flags = list(ABLATION_FLAGS)
    for k in varying_keys(vsd):
        if k in (*flags, "loss.name", "method"):
            continue
        mode = vsd.groupby(k, dropna=False)[flags].apply(lambda g: len(g.drop_duplicates())).idxmax()
        vsd = vsd[vsd[k] == mode]
        held.append(f"{k}={mode}")
    return vsd, held
