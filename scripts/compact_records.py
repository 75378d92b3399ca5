"""Convert the raw run folders under docs/records into the compact form, in place (docs/records/README.md).

    .venv/bin/python scripts/compact_records.py docs/records/paper docs/records/gpu_bench \\
        docs/records/2026-11-26_default_run

Each experiment part under the given trees (see :func:`find_parts`) is replaced by its compact form,
``vsd.analysis.record_store.compact``: ``runs.jsonl.gz``, ``part.json`` and, for an Optuna search,
``trials.jsonl``. Files outside any part (bench JSONs, a profile script and its output) are left as they are.
Each tree is collected before and after (runs, per-prompt rows, training logs, as vsd.analysis reads them), and
the script fails unless the frames are equal. Compact parts hold no raw records, so a second run changes nothing.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's vsd, whatever is installed
from vsd.analysis.collect import collect_prompts, collect_runs, collect_train_logs  # noqa: E402
from vsd.analysis.record_store import RecordError, compact  # noqa: E402

# Files that make a folder one part (a sweep, an Optuna search) rather than a folder of parts.
PART_MARKERS = ("multirun.yaml", "sweep_summary.json", "study.db", ".submitit")


def _has_runs(d: Path) -> bool:
    return any(d.rglob("run.json"))


def _is_part(d: Path) -> bool:
    if (d / "run.json").is_file() or any((d / m).exists() for m in PART_MARKERS):
        return True
    # a folder of single runs (e.g. two evals side by side) is one part too
    return all((c / "run.json").is_file() for c in d.iterdir() if c.is_dir() and _has_runs(c))


def find_parts(root: Path) -> list[Path]:
    """The parts under ``root``: a run folder, a sweep folder (Hydra's multirun.yaml, sweep_summary.json, an
    Optuna study.db or submitit's folder), or a folder whose run-holding children are all run folders;
    otherwise the parts of its children. A part is the unit a reader checks a table against."""
    if not root.is_dir() or not _has_runs(root):
        return []
    if _is_part(root):
        return [root]
    return [p for c in sorted(root.iterdir()) for p in find_parts(c)]


def _frames(tree: Path) -> list[pd.DataFrame]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [f(tree) for f in (collect_runs, collect_prompts, collect_train_logs)]


def _count(tree: Path) -> tuple[int, int]:
    files = [f for f in tree.rglob("*") if f.is_file()]
    return len(files), sum(f.stat().st_size for f in files)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="+", type=Path, help="folders of run records to convert in place")
    args = ap.parse_args(argv)
    for tree in args.trees:
        if not tree.is_dir():
            print(f"error: {tree}: no such folder", file=sys.stderr)
            return 1
    for tree in args.trees:
        n0, b0 = _count(tree)
        before = _frames(tree)
        for part in find_parts(tree):
            try:
                done = compact(part, part)
            except RecordError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
            for note in done.notes:
                print(f"  note: {note}")
            print(f"  {done}")
        for name, a, b in zip(("runs", "prompts", "train logs"), before, _frames(tree)):
            pd.testing.assert_frame_equal(a, b, obj=f"{tree}: {name}")
            problems = [str(p) for p in a.attrs["problems"]], [str(p) for p in b.attrs["problems"]]
            if problems[0] != problems[1]:
                print(f"  {name}: unreadable records before {problems[0]}, after {problems[1]}")
        n1, b1 = _count(tree)
        print(f"{tree}: {n0} files, {b0 / 1e6:.1f} MB -> {n1} files, {b1 / 1e6:.1f} MB; same frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
