"""Issue 30's page section (docs/results.md, "Strong base"), regenerated from run records.

    python -m vsd.analysis.strong --runs docs/records/strong/gpu docs/records/strong/gpu2 --page docs/results.md --block strong

Runs are the ``strong_*`` experiments (conf/experiment/strong_*.yaml, driven by scripts/run_strong.py), named
``strong-<regime>-<arm>`` (``strong-base`` for the shipped base, evaluated only), each trained run's eval on
the test split at T=0 (eval.method=reference), an eval-only run of its draft on the val split at T=0, and for
the arms the selection keeps a T=1 decoded eval on the test split. Each ``--runs`` folder is one batch (one GPU
session: its own data, its own EAGLE-3 control): an arm is compared with the control of its own batch, the
latest batch holding both, since a rerun of the same seed on another machine is close but not bit-equal.
Differences, their by-seed, by-prompt and
combined intervals and the seed variance come from vsd.analysis.regimes (:func:`compare`,
:func:`pooled_seed_var`): one code path for both blocks. The pre-declared rule (:func:`select_alpha`) reads
the val records only; every comparison reads the test records only.
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
from vsd.analysis.record_store import open_run
from vsd.analysis.regimes import _fmt, compare, pooled_seed_var
from vsd.analysis.results import markers, write_page
from vsd.evaluation.selection import pick_best

REGIMES = ("source", "sampled")
ARMS = {
    "base": "shipped base (no training)",
    "eagle3": "EAGLE-3 (control)",
    "power": "EAGLE-3, half steps (power)",
    "vsd-a1": "VSD, L_M per token, α=1",
    "vsd-a3": "VSD, L_M per token, α=3",
    "vsd-a10": "VSD, L_M per token, α=10",
    "vsd-noe3": "VSD without L_EAGLE3 (eagle3_weight=0)",
    "kl": "EAGLE-3 + KL on own paths (α=0)",
    "tree": "VSD, tree E-step",
}
ALPHA = ("vsd-a1", "vsd-a3", "vsd-a10")  # the one family with a choice; smaller alpha first (the tie-break)
assert tuple(a.replace("-", "_") for a in ALPHA) == ("vsd_a1", "vsd_a3", "vsd_a10")  # scripts/run_strong.py
# family -> (its arms, the temperature its test is judged at first)
FAMILIES = {
    "α family": (ALPHA, 0.0),
    "eagle3_weight=0": (("vsd-noe3",), 0.0),
    "KL on own paths": (("kl",), 1.0),
    "tree E-step": (("tree",), 0.0),
}
ARM_REGIMES = {"tree": ("source",)}  # the tree E-step needs the greedy oracle: source only
GAIN = 0.05  # the pre-declared threshold: +5% tau with the combined 95% CI above zero
VSD_DIAG = {
    "train/vsd/novel_frac": "novel_frac",
    "train/vsd/mean_U": "mean accepted prefix U",
    "train/vsd/kept_tokens": "kept tokens / step",
    "train/vsd/car_positions": "CAR path positions / micro-batch",
}


def arm_of(run_name: str) -> tuple[str, str] | None:
    """(regime, arm) of a run name; the base is regime "any"."""
    if run_name == "strong-base":
        return "any", "base"
    for r in REGIMES:
        if run_name.startswith(f"strong-{r}-") and run_name[len(f"strong-{r}-") :] in ARMS:
            return r, run_name[len(f"strong-{r}-") :]
    return None


def batch_of(run_dir: str | Path, runs_dirs: Sequence[str | Path]) -> str:
    """The batch of a run: the name of the ``--runs`` folder it lies under (the last that holds it)."""
    where = Path(run_dir).resolve()
    names = [Path(d).name for d in runs_dirs if where.is_relative_to(Path(d).resolve())]
    return names[-1] if names else ""


def batches(df: pd.DataFrame) -> list[str]:
    """The batches in the frame, in ``--runs`` order (a hand-made frame without the column is one batch)."""
    return list(dict.fromkeys(df["batch"])) if len(df) and "batch" in df else [""]


def load(runs_dirs: Sequence[str | Path]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(one row per completed strong run: regime, arm, seed, split, T, metrics; per run id: its per-turn
    counts), the eval diagnostics recomputed from the eval rows (as vsd.analysis.regimes does)."""
    from vsd.evaluation.metrics import compute_metrics

    df = collect_runs(list(runs_dirs), warn=False)
    if not len(df):
        return df, {}
    df = df[(df["status"] == "completed") & df["run_name"].astype(str).str.startswith("strong-")].copy()
    df["batch"] = [batch_of(d, runs_dirs) for d in df["run_dir"]]
    if "eval/tau" not in df:
        return df.iloc[0:0], {}
    df = df[df["eval/tau"].notna()].copy()  # runs without an eval (data, features) are no arm's
    ra = [arm_of(str(n)) for n in df["run_name"]]
    df["regime"] = [x[0] if x else None for x in ra]
    df["arm"] = [x[1] if x else None for x in ra]
    df = df[df["arm"].notna()].copy()
    df["T"] = df["decoding.temperature"].astype(float)
    df["split"] = df["eval.split"].astype(str)
    turns: dict[str, pd.DataFrame] = {}
    for i, run in df.iterrows():
        rows = [r for r in open_run(run["run_dir"]).read_jsonl("eval.jsonl", []) if "skipped" not in r]
        turns[run["run_id"]] = pd.DataFrame(
            {
                "key": [f"{r['id']}#{r['turn']}" for r in rows],
                "new": [r["spec"]["new_tokens"] for r in rows],
                "fwd": [r["spec"]["target_forwards"] for r in rows],
            }
        ).set_index("key")
        for k, v in compute_metrics(rows).items():
            if k.startswith(("eval/accepted_not_top1", "eval/ece")):
                df.loc[i, k] = v
    return df, turns


def runs(
    df: pd.DataFrame, regime: str, arm: str, split: str, T: float, batch: str | None = None
) -> pd.DataFrame:
    """The completed runs of one arm (the base whatever the regime) on one split at one temperature (of one
    batch, or of every batch)."""
    sel = (df["arm"] == arm) & (df["split"] == split) & (df["T"] == T)
    if arm != "base":
        sel &= df["regime"] == regime
    if batch is not None and "batch" in df:
        sel &= df["batch"] == batch
    return df[sel].sort_values("seed")


def _by_batch(df: pd.DataFrame) -> pd.DataFrame:
    """The frame with each arm named per batch, so seed variance pools within a batch's arms."""
    return df.assign(arm=df["arm"] + "@" + df["batch"]) if len(df) and "batch" in df else df


def select_alpha(df: pd.DataFrame, regime: str) -> tuple[str | None, dict[str, float]]:
    """The pre-declared rule, val records only: the alpha arm with the highest mean T=0 val tau over its
    completed seeds; a tie goes to the smaller alpha; arms without a val record are not candidates. Returns
    (the arm or None, each candidate's mean val tau)."""
    means = {}
    for arm in ALPHA:
        g = runs(df, regime, arm, "val", 0.0) if len(df) else df
        if len(g):
            means[arm] = float(g["eval/tau"].astype(float).mean())
    return pick_best(means, ALPHA), means  # the rule itself: one function, the driver's too


def chosen(df: pd.DataFrame, regime: str) -> list[tuple[str, str]]:
    """(family, arm) the test reports in ``regime``: the selected alpha arm and each single-setting family."""
    out = []
    for fam, (arms, _) in FAMILIES.items():
        if regime not in ARM_REGIMES.get(arms[0], REGIMES):
            continue
        arm = select_alpha(df, regime)[0] if arms == ALPHA else arms[0]
        out.append((fam, arm or ALPHA[0]))  # no val record: the family is reported "not run" below
    return out


def comparisons(df: pd.DataFrame, turns: dict[str, pd.DataFrame]) -> list[dict]:
    """Every pre-declared test-split comparison, run or not (``ran`` False: no records for one side)."""
    rng = np.random.default_rng(0)
    test = df[df["split"] == "test"] if len(df) else df
    rows = []
    for T in (0.0, 1.0):
        seed_var = pooled_seed_var(_by_batch(test), T)[0] if len(test) else math.nan
        for r in REGIMES:
            plan = [(fam, arm, "eagle3", fam_T) for fam, arm in chosen(df, r) for fam_T in [FAMILIES[fam][1]]]
            if T == 0.0:
                plan.append(("power", "power", "eagle3", None))
            plan.append(("EAGLE-3 − base", "eagle3", "base", None))
            for fam, a, b, fam_T in plan:
                ra = rb = test
                for batch in batches(test)[::-1]:  # the latest batch that ran both sides
                    ra = runs(test, r, a, "test", T, batch) if len(test) else test
                    rb = runs(test, r, b, "test", T, batch) if len(test) else test
                    if len(ra) and len(rb):
                        break
                c = compare(test, turns, ra, rb, seed_var, rng) if len(ra) and len(rb) else None
                row = {
                    "T": T,
                    "regime": r,
                    "family": fam,
                    "a": a,
                    "b": b,
                    "primary": fam_T == T,
                    "ran": c is not None,
                    "batch": str(ra["batch"].iloc[0]) if c is not None and "batch" in ra else "",
                }
                if c is not None:  # the % base, also where the difference is 0
                    row["b_tau"] = float(rb["eval/tau"].astype(float).mean())
                rows.append({**row, **(c or {})})
    return rows


def verdict(c: dict) -> str:
    """The pre-declared test on one comparison: a gain of >= GAIN with the combined 95% CI above zero."""
    if not c["ran"]:
        return "not run"
    if "lo" not in c:
        return "no combined CI (one seed per arm)"
    return "**yes**" if c["rel"] >= GAIN and c["lo"] > 0 else "no"


def val_table(df: pd.DataFrame) -> list[str]:
    out = ["| regime | " + " | ".join(ARMS[a] for a in ALPHA) + " | chosen |", "|---|---|---|---|---|"]
    for r in REGIMES:
        arm, means = select_alpha(df, r)
        cells = []
        for a in ALPHA:
            g = runs(df, r, a, "val", 0.0) if len(df) else df
            cells.append(f"{means[a]:.3f} ({len(g)} seeds)" if a in means else "not run")
        out.append(f"| {r} | " + " | ".join(cells) + f" | {ARMS[arm] if arm else 'none (no val records)'} |")
    return out


def arms_table(df: pd.DataFrame, diag: pd.DataFrame) -> list[str]:
    out = [
        "| T | regime | arm | batch | seeds | τ test (mean ± 95% CI over seeds) | τ val | train s | novel_frac | "
        "mean U | accepted_not_top1 | ECE |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for T in (0.0, 1.0):
        for r in REGIMES:
            for arm, name in ARMS.items():
                if r not in ARM_REGIMES.get(arm, REGIMES):
                    continue
                ran = [(b, runs(df, r, arm, "test", T, b)) for b in batches(df)] if len(df) else []
                ran = [(b, g) for b, g in ran if len(g)]
                if not ran:
                    if T == 0.0 or arm in ("eagle3", "base", *(a for _, a in chosen(df, r))):
                        out.append(f"| {T:g} | {r} | {name} | – | – | not run | – | – | – | – | – | – |")
                    continue
                for batch, g in ran:
                    out.append(_arm_row(df, diag, T, r, arm, name, batch, g))
    return out


def _arm_row(
    df: pd.DataFrame, diag: pd.DataFrame, T: float, r: str, arm: str, name: str, batch: str, g: pd.DataFrame
) -> str:
    """One arms-table row: the test runs ``g`` of ``arm`` in ``batch``, with that batch's val and diagnostics."""
    m, h, _, _ = mean_ci(g["eval/tau"].astype(float))
    tau = f"{m:.3f}" + (f" ± {h:.3f}" if math.isfinite(h) else "")
    v = runs(df, r, arm, "val", T, batch)
    val = f"{v['eval/tau'].astype(float).mean():.3f}" if len(v) else "–"
    secs = g["train/seconds"].mean() if "train/seconds" in g else math.nan
    d = diag[(diag["regime"] == r) & (diag["arm"] == arm)] if len(diag) else diag
    if len(d) and "batch" in d:
        d = d[d["batch"] == batch]
    dcell = [
        f"{d[k].mean():.3f}" if len(d) and k in d and d[k].notna().any() else "–"
        for k in ("train/vsd/novel_frac", "train/vsd/mean_U")
    ]
    ecell = [
        f"{g[k].mean():.3f}" if k in g and g[k].notna().any() else "–"
        for k in ("eval/accepted_not_top1", "eval/ece")
    ]
    seeds = ",".join(str(int(s)) for s in sorted(g["seed"]))
    return (
        f"| {T:g} | {r} | {name} | {batch or '–'} | {seeds} | {tau} | {val} | "
        f"{f'{secs:.0f}' if math.isfinite(secs) else '–'} | {' | '.join(dcell)} | {' | '.join(ecell)} |"
    )


def comparisons_table(rows: list[dict]) -> list[str]:
    out = [
        "| T | regime | comparison | batch | judged here first | Δτ | Δτ % | by seed (n) | combined, 95% | "
        "detectable (80% power) | ≥ +5%, CI > 0 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        label = f"{ARMS[c['a']]} − {ARMS[c['b']]}"
        first = "yes" if c["primary"] else ""
        is_test = c["b"] == "eagle3" and c["a"] != "power"  # the pre-declared test; the rest is context
        if not c["ran"]:
            out.append(
                f"| {c['T']:g} | {c['regime']} | {label} | – | {first} | not run | | | | | "
                f"{'not run' if is_test else ''} |"
            )
            continue
        seed = (
            f"{_fmt(c['seed_diff'])} ± {_fmt(c['seed_ci'], signed=False)} ({c['seed_n']})"
            if c["seed_n"]
            else "–"
        )
        comb = f"[{_fmt(c.get('lo'))}, {_fmt(c.get('hi'))}]"
        ref = c.get("b_tau", math.nan)
        key = "mde" if "mde" in c else "mde_prompt"
        mde = f"{_fmt(c.get(key), signed=False)} ({100 * c.get(key, math.nan) / ref:.1f}%)"
        out.append(
            f"| {c['T']:g} | {c['regime']} | {label} | {c.get('batch') or '–'} | {first} | {_fmt(c['diff'])} | "
            f"{100 * c['rel']:+.1f}% | "
            f"{seed} | {comb} | {mde} | {verdict(c) if is_test else ''} |"
        )
    return out


def vsd_diagnostics(runs_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """One row per trained strong run (completed or not): VSD_DIAG averaged over its logged training steps."""
    df = collect_runs(list(runs_dirs), warn=False)
    rows = []
    for _, run in df.iterrows() if len(df) else []:
        ra = arm_of(str(run["run_name"]))
        src = open_run(run["run_dir"])
        if ra is None or not src.has("train_log.jsonl"):
            continue
        log = pd.DataFrame(src.read_jsonl("train_log.jsonl", []))
        row = {
            "regime": ra[0],
            "arm": ra[1],
            "seed": run["seed"],
            "batch": batch_of(run["run_dir"], runs_dirs),
        }
        for k in VSD_DIAG:
            row[k] = float(log[k].dropna().mean()) if k in log and log[k].notna().any() else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["regime", "arm", "seed", "batch", *VSD_DIAG])


def render(df: pd.DataFrame, turns: dict[str, pd.DataFrame], diag: pd.DataFrame) -> str:
    rows = comparisons(df, turns)
    met = [c for c in rows if c["primary"] and verdict(c) == "**yes**"]
    primary = [c for c in rows if c["primary"]]  # each family's test at its first temperature
    shas = sorted({str(s)[:10] for s in df["git_sha"].dropna()}) if len(df) and "git_sha" in df else []
    named = [b for b in batches(df) if b]
    where = f" in {len(named)} batches ({', '.join(named)}; comparisons within one)" if len(named) > 1 else ""
    test = df[df["split"] == "test"] if len(df) else df
    sds = []
    for T in (0.0, 1.0):
        var, dof = pooled_seed_var(_by_batch(test), T) if len(test) else (math.nan, 0)
        sds.append(f"T={T:g} {math.sqrt(var):.4f} ({dof} dof)" if dof else f"T={T:g} –")
    out = [
        "_Generated by `python -m vsd.analysis.strong`; do not edit by hand._",
        "",
        f"Runs: {len(df)} completed{where}; git {', '.join(shas) or '–'}. Seed SD of test τ pooled over arms with ≥ 2 "
        f"seeds: {'; '.join(sds)}. Pre-declared test met (judged at the family's own temperature first): "
        + (", ".join(f"{c['regime']} {ARMS[c['a']]} at T={c['T']:g}" for c in met) if met else "in no arm")
        + f" ({sum(c['ran'] for c in primary)} of {len(primary)} comparisons ran).",
        "",
        "### Selection on the val split (T=0, eval.method=reference; mean τ over seeds)",
        "",
        *val_table(df),
        "",
        "### Arms (test split; τ at T=0 by eval.method=reference, at T=1 decoded; val τ at T=0)",
        "",
        *arms_table(df, diag),
        "",
        "### Differences on the test split (intervals as in the Regimes block: vsd/analysis/regimes.py)",
        "",
        *comparisons_table(rows),
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="folders of run records (searched recursively)")
    ap.add_argument("--page", default="docs/results.md")
    ap.add_argument("--block", default="strong", help="named block of the page to rewrite")
    args = ap.parse_args(argv)
    missing = [d for d in args.runs if not Path(d).exists()]
    if missing:
        print(f"error: --runs: folder not found: {missing[0]}", file=sys.stderr)
        return 1
    df, turns = load(args.runs)
    page = Path(args.page)
    write_page(page, render(df, turns, vsd_diagnostics(args.runs)), args.block)
    print(f"wrote {page} ({markers(args.block)[0]}) from {len(df)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
