"""The whole pipeline under torchrun (2 gloo processes on CPU): rank 0 owns records and evaluation."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_smoke_pipeline_under_torchrun(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "run.py",
        "experiment=smoke",
        "threads=1",
        f"paths.cache_dir={tmp_path}/cache",
        f"hydra.run.dir={run_dir}",
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/world_size"] == 2.0
    assert "eval/tau" in metrics
    rank1 = json.loads((run_dir / "rank1" / "run.json").read_text())
    assert rank1["status"] == "completed" and rank1["rank"] == 1
    assert not (run_dir / "rank1" / "eval.jsonl").exists()
    # each rank's output lands in its own run.log
    assert "[vsd] stage eval done" in (run_dir / "run.log").read_text()
    rank1_log = (run_dir / "rank1" / "run.log").read_text()
    assert "[vsd] stage train done" in rank1_log and "stage eval" not in rank1_log
