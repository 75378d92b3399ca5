"""Regenerate every paper figure and table from a folder of run records.

    python -m vsd.analysis.make_figures --runs multirun/2025-01-01_00-00-00 [more dirs] --out analysis/figures
    make figures RUNS=multirun OUT=analysis/figures

Writes ``<name>.pdf`` + ``<name>.png`` per figure, ``<name>.md`` + ``<name>.tex`` per table, the tidy
``runs.csv`` / ``summary.csv`` (aggregated over seeds), and ``index.md`` listing what was made, what was
skipped for lack of data (also printed) and which run folders could not be read.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

os.environ.setdefault("MPLBACKEND", "Agg")  # headless: no display is needed to write files

from vsd.analysis.aggregate import aggregate  # noqa: E402
from vsd.analysis.collect import Problem, collect_runs, collect_train_logs  # noqa: E402
from vsd.analysis.plots import FIGURES, MissingData, save_figure  # noqa: E402
from vsd.analysis.tables import TABLES  # noqa: E402


@dataclass
class Report:
    made: dict[str, list[Path]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def make_all(runs_dirs: list[str | Path], out: str | Path) -> Report:
    """Every figure and table the records allow, written to ``out``; see the module docstring."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = collect_runs(runs_dirs, warn=False)
    logs = collect_train_logs(runs_dirs, warn=False)
    rep = Report(problems=list(logs.attrs.get("problems", [])))
    if not len(runs):
        rep.skipped["*"] = "no readable run records"
        _write_index(out, runs_dirs, rep)
        return rep
    runs.to_csv(out / "runs.csv", index=False)
    rep.made["runs"] = [out / "runs.csv"]
    summary = aggregate(runs)
    summary.to_csv(out / "summary.csv", index=False)
    rep.made["summary"] = [out / "summary.csv"]
    data = {"runs": runs, "train_logs": logs}
    for name, (kind, fn) in FIGURES.items():
        try:
            rep.made[name] = save_figure(fn(data[kind]), out, name)
        except MissingData as e:
            rep.skipped[name] = str(e)
    for name, fn in TABLES.items():
        try:
            rep.made[name] = fn(runs).save(out, name)
        except MissingData as e:
            rep.skipped[name] = str(e)
    _write_index(out, runs_dirs, rep, runs)
    return rep


def _write_index(out: Path, runs_dirs: list, rep: Report, runs: pd.DataFrame | None = None) -> None:
    lines = ["# vsd figures and tables", "", f"Records: {', '.join(str(d) for d in runs_dirs)}", ""]
    if runs is not None and len(runs):
        counts = runs["status"].value_counts().to_dict()
        lines += [f"Runs: {len(runs)} ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))})", ""]
        failed = runs[runs["status"] == "failed"]
        for _, r in failed.iterrows():
            lines.append(f"- failed: `{r['run_id']}`: {r['error']}")
        if len(failed):
            lines.append("")
    lines += ["## Made", ""]
    for name, paths in rep.made.items():
        lines.append(f"- {name}: " + ", ".join(f"[{p.name}]({p.name})" for p in paths))
    if rep.skipped:
        lines += ["", "## Skipped (no data)", ""] + [f"- {k}: {v}" for k, v in rep.skipped.items()]
    if rep.problems:
        lines += ["", "## Unreadable run folders (skipped)", ""] + [
            f"- `{p.path}`: {p.reason}" for p in rep.problems
        ]
    (out / "index.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="folders of run records (searched recursively)")
    ap.add_argument("--out", default="analysis/figures", help="output folder")
    args = ap.parse_args(argv)
    missing = [d for d in args.runs if not Path(d).exists()]
    if missing:
        print(f"error: --runs: folder not found: {missing[0]}", file=sys.stderr)
        return 1
    rep = make_all(args.runs, args.out)
    for p in rep.problems:
        print(f"note: skipped unreadable run folder {p}")
    for name, why in rep.skipped.items():
        print(f"note: skipped {name}: {why}")
    print(
        f"wrote {sum(len(v) for v in rep.made.values())} files ({len(rep.made)} items) to {args.out}; "
        f"see {Path(args.out) / 'index.md'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
