"""End-to-end: a tiny REAL sweep on tiny_random (made here by `python run.py -m ...`) goes through collection,
aggregation, every figure, every table and every notebook. Three multiruns into one folder give an EAGLE-3
baseline, VSD at S = 1, 2 and VSD without CAR at S = 2, each over seeds 0 and 1 (8 jobs).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.test_analysis_notebooks import NOTEBOOKS, execute_notebook
from vsd.analysis import aggregate, collect_prompts, collect_runs, collect_train_logs
from vsd.analysis.make_figures import make_all
from vsd.analysis.plots import FIGURES
from vsd.analysis.record_store import compact
from vsd.analysis.tables import TABLES

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["experiment=smoke", "seed=0,1", "threads=1", "eval.max_turns=1", "eval.per_category=1"]
VSD = ["loss=vsd", "loss.vsd_start_step=1"]  # VSD after one EAGLE-3 step: no separate warm-start run needed
SWEEPS = {
    "eagle3": ["loss=eagle3"],
    "vsd_S": [*VSD, "loss.num_samples=1,2"],
    "vsd_no_car": [*VSD, "loss.num_samples=2", "loss.car=false"],
}


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real_runs")
    t0 = time.time()
    for name, overrides in SWEEPS.items():
        cmd = [
            sys.executable,
            "run.py",
            "-m",
            *SMOKE,
            "tracker=none",
            *overrides,
            f"hydra.sweep.dir={root / name}",
        ]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
    print(f"real sweep: 8 jobs in {time.time() - t0:.0f} s")
    return root


@pytest.mark.slow
def test_real_sweep_collect_aggregate(real_runs: Path) -> None:
    runs = collect_runs(real_runs)
    assert len(runs) == 8 and (runs["status"] == "completed").all(), runs[["run_id", "status", "error"]]
    assert runs.attrs["problems"] == []
    assert {"loss.num_samples", "git_sha", "eval/tau", "eval/speedup"} <= set(runs.columns)
    agg = aggregate(runs, metrics=["eval/tau", "eval/speedup"])
    assert set(agg["label"]) == {"EAGLE-3", "VSD (S=1)", "VSD (S=2)", "VSD −CAR (S=2)"}
    assert (agg["n_runs"] == 2).all() and agg["eval/tau"].between(1.0, 17.0).all()
    assert len(collect_prompts(real_runs)) > 0 and len(collect_train_logs(real_runs)) > 0


@pytest.mark.slow
def test_real_sweep_every_figure_and_table(real_runs: Path, tmp_path: Path) -> None:
    rep = make_all([real_runs], tmp_path)
    assert not rep.skipped, rep.skipped
    for name in [*FIGURES, *TABLES]:
        assert all(p.stat().st_size > 200 for p in rep.made[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_real_sweep_notebooks(
    path: Path, real_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = execute_notebook(path, real_runs, tmp_path / "figs", monkeypatch)
    assert any(f.suffix == ".png" and f.stat().st_size > 1000 for f in files), files


@pytest.mark.slow
def test_real_sweep_compacted_collects_the_same_frames(
    real_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keep_records.sh's compaction of each real sweep (Hydra's .hydra/ and multirun.yaml, draft weights,
    sweep_summary.json), collected, gives the raw records' frames: runs, per-prompt rows, training logs."""
    for side in ("raw", "kept"):
        shutil.copytree(real_runs, tmp_path / side / "runs")
    for sweep in sorted((tmp_path / "kept" / "runs").iterdir()):
        done = compact(sweep, sweep)
        assert done.dropped[".hydra/"] > 0 and done.dropped["draft/"] > 0 and not done.notes
    kept = [p.name for p in (tmp_path / "kept").rglob("*") if p.is_file()]
    assert sorted(set(kept)) == ["part.json", "runs.jsonl.gz"] and len(kept) == 2 * len(SWEEPS)
    frames = {}
    for side in ("raw", "kept"):
        monkeypatch.chdir(tmp_path / side)  # relative paths: run_dir and run_id compare equal too
        frames[side] = [collect_runs("runs"), collect_prompts("runs"), collect_train_logs("runs")]
    for raw, kept_frame in zip(frames["raw"], frames["kept"]):
        assert len(raw) > 0
        pd.testing.assert_frame_equal(raw, kept_frame)
