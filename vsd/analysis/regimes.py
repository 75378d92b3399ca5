"""The regime experiment's page section (docs/results.md, "Regimes"), regenerated from run records.

    python -m vsd.analysis.regimes --runs docs/records/regimes/gpu --page docs/results.md \\
        --figures docs/results/regimes --block regimes

Runs are the ``regime_*`` experiments (conf/experiment/regime_*.yaml), identified by ``extra.regime`` and
their run name (``regime-<regime>-<arm>``). Every comparison is A minus B on the same eval prompts:

- **by seed**: per seed both arms ran, then mean ± 95% t-interval over those seeds (training noise and
  eval noise together), the design's main estimate when it has >= 2 paired seeds;
- **by prompt**: a bootstrap over prompt turns (resampled jointly for both arms, every available seed pair:
  the same seed where both exist, else each A seed against B's seeds) of tau = sum(new tokens) / sum(target
  forwards): the eval's own noise, which says how large a difference it can resolve;
- **combined**: the by-prompt variance plus the seed variance of tau pooled over every arm with >= 2 seeds at
  the same temperature (divided by each arm's seed count): the interval to read when one arm ran few seeds.
The smallest difference the eval detects (two-sided 5%, power 80%) is 2.8 combined standard errors.
Eval diagnostics (``eval/accepted_not_top1``, ``eval/ece``) are recomputed from each run's eval rows by
vsd.evaluation.metrics, so records written before those metrics existed get them too.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vsd.analysis.aggregate import mean_ci
from vsd.analysis.collect import collect_runs
from vsd.analysis.plots import MissingData, save_figure, style
from vsd.analysis.record_store import open_run
from vsd.analysis.results import markers, write_page

REGIMES = ("control", "source", "sampled", "tree")
ARMS = {
    "base": "base",
    "eagle3": "EAGLE-3",
    "vsd": "VSD",
    "eagle3-time": "EAGLE-3, equal time",
    "power": "EAGLE-3, half steps",
    "vsd-token": "VSD, L_M per token",
}
VSD_ARMS = ("vsd", "vsd-token")
# the diagnostics of each VSD run: train keys averaged over its logged steps, held-out keys at its last held-out
# evaluation (both from train_log.jsonl, so runs whose eval did not finish still show what the E-step did)
DIAG = {
    "train/vsd/novel_frac": "novel_frac",
    "heldout/vsd/novel_frac": "novel_frac (held-out)",
    "train/vsd/oracle_vs_data": "oracle_vs_data",
    "train/vsd/distinct_prefixes": "distinct kept paths / anchor",
    "train/vsd/mean_U": "mean U",
    "train/vsd/kept_tokens": "kept tokens / step",
    "train/vsd/arw_at_cap": "ARW β at cap",
    "train/vsd/ess_adapt": "ESS (adaptable anchors)",
    "train/vsd/grad_cos": "cos(∇L_M, ∇L_EAGLE3)",
}
BOOT = 2000


def _arm(run_name: str, regime: str) -> str | None:
    if run_name.startswith("regime-base-"):
        return "base"
    prefix = f"regime-{regime}-"
    return run_name[len(prefix) :] if run_name.startswith(prefix) else None


def vsd_diagnostics(runs_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """One row per VSD run of the regime experiment (either VSD arm), completed or not: its E-step diagnostics
    (see DIAG)."""
    df = collect_runs(list(runs_dirs), warn=False)
    df = df[df["run_name"].astype(str).str.fullmatch(rf"regime-.+-({'|'.join(VSD_ARMS)})")]
    rows = []
    for _, run in df.iterrows():
        src = open_run(run["run_dir"])
        if not src.has("train_log.jsonl"):  # an eval-only run of the arm's draft (its T=1 eval)
            continue
        log = pd.DataFrame(src.read_jsonl("train_log.jsonl", []))
        if not len(log):
            continue
        arm = _arm(str(run["run_name"]), str(run["extra.regime"]))
        row = {"regime": run["extra.regime"], "arm": arm, "seed": run["seed"], "status": run["status"]}
        for k in DIAG:
            if k in log:
                col = log[k].dropna()
                row[k] = (
                    float(col.iloc[-1] if k.startswith("heldout/") else col.mean()) if len(col) else math.nan
                )
        rows.append(row)
    # the columns even when empty
    return pd.DataFrame(rows, columns=["regime", "arm", "seed", "status", *DIAG])


def load(runs_dirs: Sequence[str | Path]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(one row per completed regime run: regime, arm, seed, metrics; per run id: its per-turn counts)."""
    from vsd.evaluation.metrics import compute_metrics

    df = collect_runs(list(runs_dirs), warn=False)
    df = df[(df["status"] == "completed") & df["run_name"].astype(str).str.startswith("regime-")].copy()
    df["regime"] = df["extra.regime"].astype(str)
    df["arm"] = [_arm(n, r) for n, r in zip(df["run_name"], df["regime"])]
    df["T"] = df["decoding.temperature"].astype(float)
    df = df[df["arm"].notna()].copy()
    turns: dict[str, pd.DataFrame] = {}
    for i, run in df.iterrows():
        src = open_run(run["run_dir"])
        rows = [r for r in src.read_jsonl("eval.jsonl", []) if "skipped" not in r]
        turns[run["run_id"]] = pd.DataFrame(
            {
                "key": [f"{r['id']}#{r['turn']}" for r in rows],
                "new": [r["spec"]["new_tokens"] for r in rows],
                "fwd": [r["spec"]["target_forwards"] for r in rows],
            }
        ).set_index("key")
        for k, v in compute_metrics(rows).items():  # the eval diagnostics, by today's metric code
            if k.startswith(("eval/accepted_not_top1", "eval/ece")):
                df.loc[i, k] = v
    return df, turns


def _runs(df: pd.DataFrame, regime: str, arm: str, T: float = 0.0) -> pd.DataFrame:
    if arm in ("eagle3", "eagle3-time", "power", "base") and regime == "tree":
        regime = "control"  # the tree regime shares the control's data, base and EAGLE-3 arms
    return df[(df["regime"] == regime) & (df["arm"] == arm) & (df["T"] == T)].sort_values("seed")


def pooled_seed_var(df: pd.DataFrame, T: float | None = None) -> tuple[float, int]:
    """Seed variance of eval/tau pooled over every (regime, arm) with >= 2 seeds (at temperature ``T``; None:
    all), and its degrees of freedom."""
    ss, dof = 0.0, 0
    sel = df[df["arm"] != "base"]
    if T is not None:
        sel = sel[sel["T"] == T]
    for _, g in sel.groupby(["regime", "arm", "T"]):
        x = g["eval/tau"].astype(float).to_numpy()
        if len(x) >= 2:
            ss += float(((x - x.mean()) ** 2).sum())
            dof += len(x) - 1
    return (ss / dof if dof else math.nan), dof


def compare(
    df: pd.DataFrame, turns: dict[str, pd.DataFrame], a: pd.DataFrame, b: pd.DataFrame, seed_var: float, rng
) -> dict[str, float] | None:
    """A minus B in eval/tau: by seed, by prompt (bootstrap), combined (see the module docstring)."""
    if not len(a) or not len(b):
        return None
    out: dict[str, float] = {"n_a": len(a), "n_b": len(b)}
    ta, tb = a.set_index("seed")["eval/tau"].astype(float), b.set_index("seed")["eval/tau"].astype(float)
    out["diff"] = float(ta.mean() - tb.mean())
    out["rel"] = out["diff"] / float(tb.mean())
    common = sorted(set(ta.index) & set(tb.index))
    m, h, _, n = mean_ci([ta[s] - tb[s] for s in common])
    out.update(seed_diff=m, seed_ci=h, seed_n=n)
    pairs = [(ra, rb) for ra in a["run_id"] for rb in b["run_id"]]
    if common:
        pairs = [(a.set_index("seed").loc[s, "run_id"], b.set_index("seed").loc[s, "run_id"]) for s in common]
    keys = sorted(set.intersection(*(set(turns[r].index) for p in pairs for r in p)))
    if not keys:
        return out
    na = np.stack([turns[ra].loc[keys, "new"].to_numpy() for ra, _ in pairs])
    fa = np.stack([turns[ra].loc[keys, "fwd"].to_numpy() for ra, _ in pairs])
    nb = np.stack([turns[rb].loc[keys, "new"].to_numpy() for _, rb in pairs])
    fb = np.stack([turns[rb].loc[keys, "fwd"].to_numpy() for _, rb in pairs])
    idx = rng.integers(0, len(keys), size=(BOOT, len(keys)))
    boot = (na[:, idx].sum(-1) / fa[:, idx].sum(-1) - nb[:, idx].sum(-1) / fb[:, idx].sum(-1)).mean(0)
    se_prompt = float(boot.std(ddof=1))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    out.update(prompt_lo=float(lo), prompt_hi=float(hi), se_prompt=se_prompt, turns=len(keys))
    out["mde_prompt"] = 2.8 * se_prompt  # what the prompts alone could detect (one seed: no seed variance)
    if math.isfinite(seed_var):
        se = math.sqrt(se_prompt**2 + seed_var / len(a) + seed_var / len(b))
        out.update(se=se, lo=out["diff"] - 1.96 * se, hi=out["diff"] + 1.96 * se, mde=2.8 * se)
    return out


def _fmt(x: float | None, d: int = 3, signed: bool = True) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:+.{d}f}" if signed else f"{x:.{d}f}"


def comparisons(df: pd.DataFrame, turns: dict[str, pd.DataFrame]) -> list[dict]:
    """Every comparison of the section, in table order."""
    rng = np.random.default_rng(0)
    rows = []
    plan = [
        ("VSD − EAGLE-3 (equal steps)", "vsd", "eagle3"),
        ("VSD, L_M per token − EAGLE-3 (equal steps)", "vsd-token", "eagle3"),
        ("VSD − EAGLE-3 (equal wall-clock)", "vsd", "eagle3-time"),
        ("power control: half steps − EAGLE-3", "power", "eagle3"),
        ("EAGLE-3 − base (the arms' 400 steps)", "eagle3", "base"),
    ]
    for T in sorted(df["T"].unique()):
        seed_var, _ = pooled_seed_var(df, T)
        for r in REGIMES:
            for label, a, b in plan:
                if r == "tree" and a not in VSD_ARMS:
                    continue  # the tree regime's EAGLE-3 arms and base are the control's
                c = compare(df, turns, _runs(df, r, a, T), _runs(df, r, b, T), seed_var, rng)
                if c is not None:
                    rows.append({"T": T, "regime": r, "label": label, **c})
    return rows


def arms_table(df: pd.DataFrame) -> list[str]:
    out = [
        "| T | regime | arm | seeds | τ (mean ± 95% CI over seeds) | train s | accepted_not_top1 | ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for T in sorted(df["T"].unique()):
        for r in REGIMES:
            for arm, name in ARMS.items():
                g = df[(df["regime"] == r) & (df["arm"] == arm) & (df["T"] == T)]
                if not len(g):
                    continue
                m, h, _, n = mean_ci(g["eval/tau"])
                tau = f"{m:.3f}" + (f" ± {h:.3f}" if math.isfinite(h) else "")
                train_s = g["train/seconds"].mean() if "train/seconds" in g else math.nan
                secs = f"{train_s:.0f}" if math.isfinite(train_s) else "–"  # eval-only runs: no training
                cells = [
                    f"{g[k].mean():.3f}" if k in g and g[k].notna().any() else "–"
                    for k in ("eval/accepted_not_top1", "eval/ece")
                ]
                seeds = ",".join(str(int(s)) for s in sorted(g["seed"]))
                out.append(f"| {T:g} | {r} | {name} | {seeds} | {tau} | {secs} | {cells[0]} | {cells[1]} |")
    return out


def comparisons_table(rows: list[dict]) -> list[str]:
    out = [
        "| T | regime | comparison | Δτ | Δτ % | by seed (n) | by prompt, 95% | combined, 95% | "
        "detectable (80% power) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        seed = (
            f"{_fmt(c['seed_diff'])} ± {_fmt(c['seed_ci'], signed=False)} ({c['seed_n']})"
            if c["seed_n"]
            else "–"
        )
        if c["seed_n"] == 1:
            seed = f"{_fmt(c['seed_diff'])} (1)"
        prompt = f"[{_fmt(c.get('prompt_lo'))}, {_fmt(c.get('prompt_hi'))}]"
        comb = f"[{_fmt(c.get('lo'))}, {_fmt(c.get('hi'))}]"
        key, note = ("mde", "") if "mde" in c else ("mde_prompt", ", prompts only")
        ref = c["diff"] / c["rel"] if c["rel"] else math.nan
        mde = f"{_fmt(c.get(key), signed=False)} ({100 * c.get(key, math.nan) / ref:.1f}%{note})"
        out.append(
            f"| {c['T']:g} | {c['regime']} | {c['label']} | {_fmt(c['diff'])} | {100 * c['rel']:+.1f}% | {seed} | {prompt} | "
            f"{comb} | {mde} |"
        )
    return out


def diagnostics_table(diag: pd.DataFrame) -> list[str]:
    cols = [k for k in DIAG if k in diag.columns]
    out = [
        "| regime | arm | runs | " + " | ".join(DIAG[k] for k in cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for r, arm in [(r, a) for a in VSD_ARMS for r in REGIMES]:
        g = diag[(diag["regime"] == r) & (diag["arm"] == arm)] if len(diag) else diag
        if not len(g):
            continue
        cells = []
        for k in cols:
            m, h, _, n = mean_ci(g[k])
            cells.append("–" if not n else f"{m:.3f}" + (f" ± {h:.3f}" if math.isfinite(h) else ""))
        done = int((g["status"] == "completed").sum())
        runs = f"{len(g)}" + (f" ({done} evaluated)" if done < len(g) else "")
        out.append(f"| {r} | {ARMS[arm]} | {runs} | " + " | ".join(cells) + " |")
    return out


def figures(df: pd.DataFrame, diag: pd.DataFrame, rows: list[dict], out: Path) -> dict[str, str]:
    import matplotlib.pyplot as plt

    made: dict[str, str] = {}
    shown = ("VSD − EAGLE-3 (equal steps)", "VSD, L_M per token − EAGLE-3 (equal steps)", "power control")
    short = {shown[0]: "VSD", shown[1]: "VSD tok", shown[2]: "power"}
    temps = sorted({c["T"] for c in rows if c["label"].startswith(shown)})
    if temps:
        with style():
            fig, axes = plt.subplots(1, len(temps), figsize=(6.4 * len(temps), 3.6), squeeze=False)
            for ax, T in zip(axes[0], temps):
                main = [c for c in rows if c["T"] == T and c["label"].startswith(shown)]
                kind = [next(k for k in shown if c["label"].startswith(k)) for c in main]
                labels = [f"{c['regime']}\n{short[k]}" for c, k in zip(main, kind)]
                y = [100 * c["rel"] for c in main]
                base = [c["diff"] / c["rel"] if c["rel"] else math.nan for c in main]
                # the combined interval needs a seed variance (arms with >= 2 seeds); without one, the by-prompt
                combined = all("lo" in c for c in main)
                lo, hi = ("lo", "hi") if combined else ("prompt_lo", "prompt_hi")
                err = [
                    [100 * (c["diff"] - c.get(lo, math.nan)) / b for c, b in zip(main, base)],
                    [100 * (c.get(hi, math.nan) - c["diff"]) / b for c, b in zip(main, base)],
                ]
                palette = {shown[0]: "#D55E00", shown[1]: "#E69F00", shown[2]: "#7F7F7F"}
                ax.bar(range(len(main)), y, yerr=err, color=[palette[k] for k in kind], capsize=3)
                ax.axhline(0, color="black", lw=0.8)
                ax.set_xticks(range(len(main)), labels, fontsize=6)
                ax.set_title(f"T={T:g}", fontsize=9)
                ax.set_ylabel(f"Δτ vs EAGLE-3 (%), {'combined' if combined else 'by-prompt'} 95% CI")
            made["regimes_delta_tau"] = str(save_figure(fig, out, "regimes_delta_tau")[-1])
    vsd = df.loc[df["arm"].isin(VSD_ARMS) & (df["T"] == 0), ["regime", "arm", "seed", "eval/tau"]].merge(
        diag[["regime", "arm", "seed", "train/vsd/novel_frac"]], on=["regime", "arm", "seed"]
    )
    if len(vsd):
        with style():
            fig, ax = plt.subplots(figsize=(5.2, 3.6))
            colors = dict(zip(REGIMES, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
            for arm, marker in zip(VSD_ARMS, ("o", "^")):
                for r in REGIMES:
                    g = vsd[(vsd["regime"] == r) & (vsd["arm"] == arm)]
                    ref = _runs(df, r, "eagle3")
                    if not len(g) or not len(ref):
                        continue
                    e3 = float(ref["eval/tau"].mean())
                    y = 100 * (g["eval/tau"] / e3 - 1)
                    label = f"{r}, {ARMS[arm]}"
                    ax.scatter(g["train/vsd/novel_frac"], y, color=colors[r], marker=marker, label=label)
            ax.axhline(0, color="black", lw=0.8)
            ax.set_xlabel("E-step novel_frac (training mean)")
            ax.set_ylabel("VSD τ vs EAGLE-3 τ (%), T=0, per seed")
            ax.legend(fontsize=6)
            made["regimes_delta_vs_novel"] = str(save_figure(fig, out, "regimes_delta_vs_novel")[-1])
    arms = df[(df["T"] == 0) & df["arm"].isin(["base", "eagle3", *VSD_ARMS])]
    if len(arms) and "eval/accepted_not_top1" in arms and arms["eval/accepted_not_top1"].notna().any():
        with style():
            fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.8))
            names = [("base", "base (before)"), ("eagle3", "EAGLE-3")] + [(a, ARMS[a]) for a in VSD_ARMS]
            names = [(a, label) for a, label in names if len(arms[arms["arm"] == a])]
            regs = [r for r in REGIMES if len(arms[arms["regime"] == r])]
            width = 0.8 / len(names)
            for ax, key, ylabel in (
                (axes[0], "eval/accepted_not_top1", "steps accepting off the top-1 chain"),
                (axes[1], "eval/ece", "calibration error (ECE)"),
            ):
                for i, (arm, label) in enumerate(names):
                    ys = [_runs(df, r, arm)[key].mean() for r in regs]
                    x = np.arange(len(regs)) + (i - (len(names) - 1) / 2) * width
                    ax.bar(x, ys, width=width, label=label)
                ax.set_xticks(range(len(regs)), regs, fontsize=8)
                ax.set_ylabel(ylabel)
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="lower center", ncol=len(names), fontsize=7, frameon=False)
            fig.subplots_adjust(bottom=0.2, wspace=0.35)
            made["regimes_rank_calibration"] = str(save_figure(fig, out, "regimes_rank_calibration")[-1])
    return made


def render(
    df: pd.DataFrame, turns: dict[str, pd.DataFrame], diag: pd.DataFrame, fig_dir: Path, page_dir: Path
) -> str:
    rows = comparisons(df, turns)
    evals = []
    for T in sorted(df["T"].unique()):
        seed_var, dof = pooled_seed_var(df, T)
        n_turns = max((c.get("turns", 0) for c in rows if c["T"] == T), default=0)
        how = "by eval.method=reference" if T == 0 else "decoded"
        evals.append(
            f"T={T:g}: {n_turns} test prompt turns per comparison, {how}, seed SD of τ pooled over arms with ≥ 2 "
            f"seeds {math.sqrt(seed_var):.4f} ({dof} degrees of freedom)"
        )
    out = [
        "_Generated by `python -m vsd.analysis.regimes`; do not edit by hand._",
        "",
        f"Runs: {len(df)} completed; git {', '.join(sorted({str(s)[:10] for s in df['git_sha'].dropna()}))}. "
        + "; ".join(evals)
        + ".",
        "",
        "### Arms (τ at T=0 by eval.method=reference; at T=1 decoded, the same prompts)",
        "",
        *arms_table(df),
        "",
        "### Differences (by seed, by prompt and combined intervals: see vsd/analysis/regimes.py)",
        "",
        *comparisons_table(rows),
        "",
        "### E-step diagnostics of the VSD arms (mean ± 95% CI over runs; training means unless marked)",
        "",
        *diagnostics_table(diag),
    ]
    figs = figures(df, diag, rows, fig_dir)
    if figs:
        out += ["", "### Figures", ""]
        out += [f"![{n}]({Path(p).relative_to(page_dir).as_posix()})" for n, p in figs.items()]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="folders of run records (searched recursively)")
    ap.add_argument("--page", default="docs/results.md")
    ap.add_argument("--figures", default="docs/results/regimes")
    ap.add_argument("--block", default="regimes", help="named block of the page to rewrite")
    args = ap.parse_args(argv)
    missing = [d for d in args.runs if not Path(d).exists()]
    if missing:
        print(f"error: --runs: folder not found: {missing[0]}", file=sys.stderr)
        return 1
    df, turns = load(args.runs)
    if not len(df):
        print(f"error: --runs: no completed regime runs under {', '.join(args.runs)}", file=sys.stderr)
        return 1
    page = Path(args.page)
    try:
        body = render(df, turns, vsd_diagnostics(args.runs), Path(args.figures), page.parent)
    except MissingData as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write_page(page, body, args.block)
    print(f"wrote {page} ({markers(args.block)[0]}) from {len(df)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
