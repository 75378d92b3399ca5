"""Shared pieces of the sweep/launcher tests: a tiny real job and a runner for `run.py -m`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# The smallest real job: tiny random target, prompt-lookup drafter, one prompt, 4 new tokens, no AR baseline.
FAST_JOB = [
    "experiment=smoke",
    "stages=[eval]",
    "decoding=ngram",
    "eval.max_turns=1",
    "eval.per_category=1",
    "decoding.max_new_tokens=4",
    "eval.ar_baseline=false",
]
# Sweeping eval.suite over file,smoke with a prompt file that does not exist: job 0 fails (before loading
# the model), job 1 runs after it and must still complete.
FAIL_FIRST = ["eval.prompts=/nonexistent/vsd-prompts.jsonl", "eval.suite=file,smoke"]


def job_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1", **extra)
    env.pop("VSD_THREADS", None)
    return env


def run_sweep(sweep_dir: Path, overrides: list[str], env: dict[str, str] | None = None, timeout: int = 300):
    """``python run.py -m <overrides> hydra.sweep.dir=<sweep_dir>``; returns (CompletedProcess, seconds)."""
    cmd = [sys.executable, "run.py", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    t0 = time.time()
    proc = subprocess.run(
        cmd, cwd=REPO, env=env or job_env(), capture_output=True, text=True, timeout=timeout
    )
    return proc, time.time() - t0


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


_FAILING_SWEEP: dict[str, Any] = {}


def failing_sweep(root: Path) -> tuple[subprocess.CompletedProcess, Path, float]:
    """One 2-job sweep (job 0 fails, job 1 completes) with offline W&B, run once per test session."""
    if not _FAILING_SWEEP:
        sweep_dir = Path(root) / "failing_sweep"
        proc, secs = run_sweep(sweep_dir, [*FAST_JOB, "tracker=wandb", *FAIL_FIRST])
        _FAILING_SWEEP.update(proc=proc, dir=sweep_dir, secs=secs)
    return _FAILING_SWEEP["proc"], _FAILING_SWEEP["dir"], _FAILING_SWEEP["secs"]
