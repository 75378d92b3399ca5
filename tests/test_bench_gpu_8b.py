"""benchmarks/gpu_8b.py --tiny: the 8B-architecture benchmark runs end to end on the CPU (shrunken architecture)
and writes its record; the GPU run (docs/bench_gpu.md) uses the same code at full size."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["llama31_8b", "qwen3_8b"])
def test_gpu_8b_tiny_smoke(model, tmp_path):
    out = tmp_path / "rec.json"
    cmd = [
        sys.executable,
        "benchmarks/gpu_8b.py",
        "--model",
        model,
        "--tiny",
        "--out",
        str(out),
        "--trees",
        "3,4,8",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads(out.read_text())
    assert rec["model"] == model and rec["tiny"] and rec["architecture"]["hidden_size"] == 64
    assert [f["batch"] for f in rec["features_cached"]] == [1, 4]
    assert all(f["tokens_per_s"] > 0 for f in rec["features_cached"] + rec["features_online"])
    assert rec["features_cached"][0]["bytes_per_token"] == pytest.approx(8 * 64 + 5, rel=0.02)
    assert (
        [t["batch"] for t in rec["train"]["cache"]] == [t["batch"] for t in rec["train"]["online"]] == [1, 2]
    )
    assert all(t["step_ms"] > 0 for t in rec["train"]["cache"] + rec["train"]["online"])
    (tree,) = rec["decode"]["trees"]
    assert tree["shape"] == "3x4x8" and tree["draft_ms"] > 0 and tree["verify_ms"] > 0
    assert tree["speedup_at_tau"] == pytest.approx(
        rec["published_tau"]["tau"]
        * rec["decode"]["ar"]["ms_per_token"]
        / (tree["draft_ms"] + tree["verify_ms"])
    )
    assert "| 3x4x8 |" in rec["table"]
