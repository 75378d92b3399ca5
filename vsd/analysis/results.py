"""The paper experiment's results page (docs/results.md), regenerated from run records.

    python -m vsd.analysis.results --runs docs/records/paper --page docs/results.md --figures docs/results

Rewrites only the block between the page's ``<!-- generated:begin -->`` / ``<!-- generated:end -->`` markers
(the conclusions around it are written by hand, after reading the tables) and the figures. Every number comes
from a run record (``metrics.json`` + ``config.json`` + ``run.json``; raw folders or the compacted parts of
docs/records, vsd/analysis/record_store.py); rows are the experiment configs' ``run_name``s. CIs are 95% t
intervals over seeds; VSD − EAGLE-3 differences are paired by seed (same base draft, same data order, same
prompts).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from vsd.analysis.aggregate import mean_ci
from vsd.analysis.collect import collect_runs
from vsd.analysis.plots import (
    MissingData,
    plot_acceptance_curves,
    plot_speedup_vs_bound,
    plot_tau_vs_samples,
    save_figure,
)
from vsd.analysis.record_store import open_run
from vsd.config import compose

BEGIN, END = "<!-- generated:begin -->", "<!-- generated:end -->"


def markers(block: str = "") -> tuple[str, str]:
    """The page markers of a named block (``--block gpu``: ``<!-- generated:gpu:begin -->``)."""
    return (
        (BEGIN, END)
        if not block
        else (f"<!-- generated:{block}:begin -->", f"<!-- generated:{block}:end -->")
    )


# run_name -> row label, in table order (conf/experiment/paper_*.yaml)
ROWS = {
    "paper-base": "base draft",
    "smollm2_135m-paper-base": "base draft",
    "paper-eagle3": "EAGLE-3",
    "paper-vsd": "VSD",
    "paper-vsd-no-arw": "VSD −ARW",
    "paper-vsd-no-car": "VSD −CAR",
    "paper-vsd-no-filter": "VSD −filter",
    "paper-vsd-all-off": "VSD −ARW −CAR −filter",
    "paper-eagle3-tuned": "EAGLE-3, val-tuned",
    "paper-vsd-tuned": "VSD, val-tuned",
    "paper-base-1epoch": "base draft, 1 epoch",
    "paper-eagle3-1epoch": "EAGLE-3, 1-epoch base",
    "paper-vsd-1epoch": "VSD, 1-epoch base",
}
# Further VSD-vs-EAGLE-3 comparisons (T=0, paired by seed), each under its own heading when its runs exist.
PAIRS = [
    ("VSD, val-tuned", "EAGLE-3, val-tuned", "Part D: each arm with its validation search's pick"),
    ("VSD, 1-epoch base", "EAGLE-3, 1-epoch base", "Part E: 200 fine-tune steps from a one-epoch base"),
]
# Keys each arm's validation search varied (sweeps/paper_tune_{eagle3,vsd}.yaml), in table order.
SEARCH_KEYS = {
    "EAGLE-3": ["train.lr", "loss.step_decay"],
    "VSD": [
        "train.lr",
        "loss.vsd_weight",
        "loss.car_weight",
        "loss.arw_target_ess",
        "loss.proposal_temperature",
    ],
}
ORDER = list(dict.fromkeys(ROWS.values()))
CATEGORIES = ("mt_bench", "translation", "qa", "math", "coding")


@functools.cache
def main_samples() -> int:
    """S of the main and ablation rows: ``loss.num_samples`` as ``experiment=paper_vsd`` composes it."""
    return compose(["experiment=paper_vsd"])[0][1].loss.num_samples


def load(runs_dirs: Sequence[str | Path], split: str = "test") -> pd.DataFrame:
    """Completed paper runs evaluated on ``split``, with columns ``row`` (table label), ``T`` and ``S``.

    The tables report test-split runs only; the validation search's trials (``eval.split=val``) share the
    rows' run names and are read separately (``split="val"``).
    """
    runs = collect_runs(runs_dirs, warn=False)
    if not len(runs):
        return runs
    df = runs[(runs["status"] == "completed") & runs["run_name"].isin(ROWS)].copy()
    df = df[_col(df, "eval.split").fillna("test") == split]
    df["row"] = df["run_name"].map(ROWS)
    df["T"] = df["decoding.temperature"].astype(float)
    df["S"] = [
        0 if r.startswith(("base draft", "EAGLE-3")) else int(s)
        for s, r in zip(df["loss.num_samples"], df["row"])
    ]
    return df


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    """A metric column, or NaNs where no record has it (older records, or a metric a run did not produce)."""
    return df[name] if name in df else pd.Series(float("nan"), index=df.index)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _header(head: Sequence[str]) -> list[str]:
    return [_row(head), "|" + "---|" * len(head)]


def _fmt(values: pd.Series, digits: int = 2, pct: bool = False, signed: bool = False) -> str:
    mean, half, _, n = mean_ci(pd.to_numeric(values, errors="coerce"))
    if n == 0:
        return "–"
    scale, unit = (100.0, "%") if pct else (1.0, "")
    s = f"{mean * scale:{'+' if pct or signed else ''}.{digits}f}{unit}"
    if n > 1:
        s += f" ± {half * scale:.{digits}f}{unit}"
    return s


def _main_rows(df: pd.DataFrame, T: float) -> pd.DataFrame:
    d = df[(df["T"] == T) & ((df["S"] == main_samples()) | (df["S"] == 0))]
    return d


def main_table(df: pd.DataFrame, T: float) -> list[str]:
    d = _main_rows(df, T)
    cats = [c for c in CATEGORIES if f"eval/{c}/tau" in d]
    head = ["row", "seeds", "τ (all)", *[f"τ {c}" for c in cats], "speedup", "bound", "tokens/s"]
    lines = _header(head)
    for row in ORDER:
        g = d[d["row"] == row]
        if not len(g):
            continue
        cells = [row, str(len(g)), _fmt(_col(g, "eval/tau")), *[_fmt(_col(g, f"eval/{c}/tau")) for c in cats]]
        cells += [
            _fmt(_col(g, "eval/speedup")),
            _fmt(_col(g, "eval/speedup_bound")),
            _fmt(_col(g, "eval/tokens_per_s"), 1),
        ]
        lines.append(_row(cells))
    return lines


def _paired(df: pd.DataFrame, a: str, b: str, T: float, metric: str) -> tuple[pd.Series, pd.Series]:
    """Per-seed ``a − b`` and ``a / b − 1`` of ``metric`` at temperature T (seeds present in both rows)."""
    d = _main_rows(df, T)
    pa = _col(d[d["row"] == a], metric).set_axis(d[d["row"] == a]["seed"])
    pb = _col(d[d["row"] == b], metric).set_axis(d[d["row"] == b]["seed"])
    seeds = pa.index.intersection(pb.index)
    return pa[seeds] - pb[seeds], pa[seeds] / pb[seeds] - 1


def paired_table(df: pd.DataFrame, rows: Sequence[str], ref: str, temps: Sequence[float]) -> list[str]:
    metrics = [("eval/tau", "τ"), ("eval/speedup", "speedup")]
    head = (
        ["row", "T", "paired seeds"]
        + [f"Δ{n} vs {ref}" for _, n in metrics]
        + [f"Δ{n} %" for _, n in metrics]
    )
    lines = _header(head)
    for T in temps:
        for row in rows:
            diffs = [_paired(df, row, ref, T, m) for m, _ in metrics]
            n = len(diffs[0][0])
            if n == 0:
                continue
            cells = [row, f"{T:g}", str(n)]
            cells += [_fmt(dd, 3, signed=True) for dd, _ in diffs] + [
                _fmt(rr, 1, pct=True) for _, rr in diffs
            ]
            lines.append(_row(cells))
    return lines


def depth_table(df: pd.DataFrame, T: float = 0.0) -> list[str]:
    d = _main_rows(df, T)
    depths = sorted(
        int(c.split("_")[-1]) for c in d.columns if c.startswith("eval/alpha_") and d[c].notna().any()
    )
    head = ["row", "seeds", *[f"α{k}" for k in depths], "accepted/step"]
    lines = _header(head)
    for row in ORDER:
        g = d[d["row"] == row]
        if len(g):
            cells = [row, str(len(g)), *[_fmt(_col(g, f"eval/alpha_{k}")) for k in depths]]
            lines.append(_row(cells + [_fmt(_col(g, "eval/accepted_per_step"))]))
    return lines


def samples_table(df: pd.DataFrame) -> list[str]:
    """VSD at T=0 per S, over seeds; Δτ vs the main rows' S, paired by seed (seeds that ran both)."""
    d, s0 = df[(df["T"] == 0) & (df["row"] == "VSD")], main_samples()
    ref = _col(d[d["S"] == s0], "eval/tau").set_axis(d[d["S"] == s0]["seed"])
    head = ["S", "seeds", "τ", f"Δτ vs S={s0} (paired)", "speedup", "train s (40 steps)", "E-step s/step"]
    head.append("held-out sim τ")
    lines = _header(head)
    for S, g in d.groupby("S"):
        tau = _col(g, "eval/tau").set_axis(g["seed"])
        seeds = tau.index.intersection(ref.index)
        delta = "–" if S == s0 else _fmt(tau[seeds] - ref[seeds], 3, signed=True)
        cells = [str(S), str(len(g)), _fmt(tau, 3), delta, _fmt(_col(g, "eval/speedup"), 3)]
        cells += [_fmt(_col(g, "train/seconds"), 0), _fmt(_col(g, "train/vsd/estep_s"), 2)]
        cells.append(_fmt(_col(g, "heldout/sim_tau"), 3))
        lines.append(_row(cells))
    return lines


def search_table(val: pd.DataFrame) -> list[str]:
    """The validation search: every trial of each arm, best first, beside the untouched base (val split)."""
    lines = []
    base = _col(val[val["row"] == "base draft"], "eval/tau")
    if len(base):
        lines += [f"Base draft on the validation prompts (no fine-tune): τ {_fmt(base, 3)}.", ""]
    for arm, keys in SEARCH_KEYS.items():
        g = val[val["row"] == arm].sort_values("eval/tau", ascending=False)
        keys = [k for k in keys if k in g]
        if not len(g):
            continue
        head = ["arm", "trial run", *keys, "val τ"]
        lines += _header(head)
        for _, r in g.iterrows():
            cells = [arm, Path(r["run_dir"]).parent.name + "/" + Path(r["run_dir"]).name]
            cells += [f"{float(r[k]):.3g}" for k in keys] + [f"{r['eval/tau']:.3f}"]
            lines.append(_row(cells))
        lines.append("")
    return lines[:-1] if lines and not lines[-1] else lines


def provenance(df: pd.DataFrame) -> list[str]:
    machines, versions, digests = set(), set(), set()
    for d in df["run_dir"]:
        rj = open_run(d).read_json("run.json")
        digests.add(rj.get("code_digest") or "not recorded")
        m = rj.get("machine", {})
        machines.add(
            f"{m.get('gpu') or 'CPU'} ({m.get('cpu_count')} cores, {rj.get('threads')} threads), {rj.get('device')}"
        )
        v = rj.get("versions", {})
        versions.add(f"torch {v.get('torch')}, transformers {v.get('transformers')}")
    shas = sorted({f"{s[:10]}{'+dirty' if dd else ''}" for s, dd in zip(df["git_sha"], df["git_dirty"])})
    return [
        f"- runs: {len(df)} completed; dates {str(df['start'].min())[:16]} – {str(df['end'].max())[:16]} (UTC)",
        f"- git: {', '.join(shas)}",
        f"- code digests (vsd.records.code_digest): {', '.join(sorted(digests))}",
        f"- machines: {'; '.join(sorted(machines))}",
        f"- packages: {'; '.join(sorted(versions))}",
    ]


def figures(df: pd.DataFrame, out: Path) -> dict[str, str]:
    """Figures from the T=0 runs; name -> PNG path (skipped when the records do not allow it)."""
    made = {}
    t0 = df[df["T"] == 0]
    plots = {
        "tau_vs_samples": (plot_tau_vs_samples, t0[t0["row"].isin(["VSD", "EAGLE-3"])]),
        "acceptance_by_depth": (plot_acceptance_curves, _main_rows(t0, 0.0)),
        "speedup_vs_bound": (plot_speedup_vs_bound, _main_rows(t0, 0.0)),
    }
    for name, (fn, data) in plots.items():
        # the page's derived columns are not config keys: "S" repeats loss.num_samples, "row" is the method
        data = data.assign(method=data["row"]).drop(columns=["row", "S"])
        try:
            paths = save_figure(fn(data), out, name)
        except MissingData:
            continue
        made[name] = next(p for p in paths if p.suffix == ".png")
    return made


def render(df: pd.DataFrame, fig_dir: Path, page_dir: Path, val: pd.DataFrame | None = None) -> str:
    temps = sorted(df["T"].unique())
    out = ["_Generated by `python -m vsd.analysis.results`; do not edit by hand._", "", "### Provenance", ""]
    out += provenance(df)
    for T in temps:
        out += ["", f"### Main table, T={T:g} (mean ± 95% CI over seeds; test prompts)", ""] + main_table(
            df, T
        )
    out += ["", "### Each row minus EAGLE-3, paired by seed", ""]
    out += paired_table(df, ["VSD", "base draft"], "EAGLE-3", temps)
    for row, ref, title in PAIRS:
        if row in set(df["row"]) and ref in set(df["row"]):
            out += ["", f"### {title} (VSD minus EAGLE-3, paired by seed)", ""]
            out += paired_table(df, [row], ref, [0.0])
    if val is not None and len(val):
        out += ["", "### Validation search (val prompts, seed 0, T=0; every trial, best first)", ""]
        out += search_table(val)
    abl = [r for r in ORDER if r.startswith("VSD −")]
    out += ["", "### Ablations (T=0, S=4): each row minus full VSD, paired by seed", ""]
    out += paired_table(df, abl + ["EAGLE-3"], "VSD", [0.0])
    out += ["", "### Per-depth acceptance α_k (T=0)", ""] + depth_table(df)
    out += ["", "### Monte Carlo samples S (VSD, T=0; mean ± 95% CI over seeds)", ""] + samples_table(df)
    figs = figures(df, fig_dir)
    if figs:
        out += ["", "### Figures", ""]
        out += [f"![{n}]({Path(p).relative_to(page_dir).as_posix()})" for n, p in figs.items()]
    return "\n".join(out)


def write_page(page: Path, body: str, block: str = "") -> None:
    begin, end = markers(block)
    text = page.read_text() if page.exists() else f"# Results\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        raise SystemExit(f"error: {page}: no {begin} ... {end} block to rewrite")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{begin}\n{body}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="folders of run records (searched recursively)")
    ap.add_argument("--page", default="docs/results.md")
    ap.add_argument("--figures", default="docs/results")
    ap.add_argument("--block", default="", help="named block of the page to rewrite (e.g. gpu)")
    args = ap.parse_args(argv)
    missing = [d for d in args.runs if not Path(d).exists()]
    if missing:
        print(f"error: --runs: folder not found: {missing[0]}", file=sys.stderr)
        return 1
    df, val = load(args.runs), load(args.runs, split="val")
    if not len(df):
        print(f"error: --runs: no completed paper runs under {', '.join(args.runs)}", file=sys.stderr)
        return 1
    page = Path(args.page)
    write_page(page, render(df, Path(args.figures), page.parent, val), args.block)
    print(f"wrote {page} from {len(df)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
