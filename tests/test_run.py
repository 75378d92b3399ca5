"""`python run.py experiment=smoke`: the whole pipeline on the tiny model writes every record and a W&B run."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_smoke_run_writes_records_and_wandb(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "VSD_THREADS": "1"}
    cmd = [
        sys.executable,
        "run.py",
        "experiment=smoke",
        "tracker=wandb",
        f"paths.cache_dir={tmp_path}/cache",
        f"hydra.run.dir={run_dir}",
        "dataset.source=tiny",
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "completed" and run["git_sha"] and run["versions"]["torch"]
    assert set(run["stages"]) == {"data", "features", "train", "eval"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for k in ("train/loss", "train/sim_tau", "eval/tau", "eval/speedup", "eval/lossless_match"):
        assert k in metrics, k
    assert metrics["eval/lossless_match"] == 1.0  # fp32 tiny model: speculative == greedy
    assert json.loads((run_dir / "config.json").read_text())["model"]["name"] == "tiny_random"
    for f in ("eval.jsonl", "train_log.jsonl", "data_card.json", ".hydra/config.yaml", "draft/config.json"):
        assert (run_dir / f).exists(), f
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert any(p.suffix == ".wandb" for p in offline[0].iterdir())
