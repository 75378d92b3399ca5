"""A real single-node Slurm (scripts/slurm/up.sh): a 2-job sweep through hydra/launcher=slurm_cpu.

Not marked slow: CI runs it. Skipped (with the reason) only where Slurm cannot be installed: not root, or
neither Slurm nor apt-get present.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.sweep_helpers import FAST_JOB, REPO, job_env, read_json, run_sweep
from vsd.sweep import SUMMARY_FILE

SLURM_DIR = Path(os.environ.get("VSD_SLURM_DIR", "/var/lib/vsd-slurm"))


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to install and start Slurm (scripts/slurm/up.sh)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "Slurm is not installed and apt-get is unavailable"
    return None


def _running() -> bool:
    pid = SLURM_DIR / "slurmctld.pid"
    try:
        os.kill(int(pid.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    why = _why_not()
    if why:
        print(f"skipping Slurm test: {why}")
        pytest.skip(why)
    started_here = not _running()
    t0 = time.time()
    up = subprocess.run(
        ["bash", "scripts/slurm/up.sh"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert up.returncode == 0, up.stdout + up.stderr
    print(f"slurm bring-up: {time.time() - t0:.1f}s ({up.stdout.strip().splitlines()[-1]})")
    env = job_env(SLURM_CONF=str(SLURM_DIR / "slurm.conf"))
    env["PATH"] = f"{REPO / 'scripts/slurm/bin'}:{env['PATH']}"  # the sacct stand-in
    yield env
    if started_here:  # leave a cluster that was already up as it was
        subprocess.run(["bash", "scripts/slurm/down.sh"], cwd=REPO, capture_output=True, timeout=60)
        assert not _running()


def test_sacct_standin_reports_a_failed_job(slurm_env: dict[str, str]) -> None:
    """submitit reads job states through sacct; the stand-in must report a crashed job as FAILED."""
    from submitit.slurm.slurm import SlurmInfoWatcher

    jid = subprocess.run(
        ["sbatch", "--parsable", "--output=/dev/null", "--wrap", "exit 3"],
        env=slurm_env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    state = ""
    for _ in range(100):
        out = subprocess.run(
            ["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", jid],
            env=slurm_env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        state = SlurmInfoWatcher().read_info(out).get(jid, {}).get("State", "")
        if state not in ("", "PENDING", "RUNNING", "COMPLETING"):
            break
        time.sleep(0.2)
    assert state == "FAILED"


def test_sweep_through_submitit_slurm(slurm_env: dict[str, str], tmp_path: Path) -> None:
    sweep_dir = tmp_path / "slurm_sweep"
    proc, secs = run_sweep(
        sweep_dir,
        [*FAST_JOB, "hydra/launcher=slurm_cpu", "hydra.launcher.timeout_min=5", "seed=0,1"],
        env=slurm_env,
        timeout=540,
    )
    print(f"2-job sweep through Slurm took {secs:.1f}s")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for n in ("0", "1"):
        run = read_json(sweep_dir / n / "run.json")
        assert run["status"] == "completed", run["error"]
        assert run["seed"] == int(n) and run["job"]["mode"] == "multirun"
        assert run["threads"] == 1  # SLURM_CPUS_PER_TASK=1
        assert read_json(sweep_dir / n / "metrics.json")["eval/tau"] >= 1.0
    assert read_json(sweep_dir / SUMMARY_FILE)["counts"] == {"completed": 2}
    assert list((sweep_dir / ".submitit").iterdir()), "submitit wrote no job folders"


def test_ddp_job_of_two_slurm_tasks(slurm_env: dict[str, str], tmp_path: Path) -> None:
    """``tasks_per_node=2`` (how hydra/launcher=slurm_gpu runs one rank per GPU): the job's two Slurm tasks
    join one process group (gloo here, NCCL on GPUs) and train as DDP, with rank 0 owning the records."""
    sweep_dir = tmp_path / "slurm_ddp"
    proc, secs = run_sweep(
        sweep_dir,
        [
            "experiment=smoke",
            "threads=1",
            f"paths.cache_dir={tmp_path}/cache",
            "hydra/launcher=slurm_cpu",
            "hydra.launcher.tasks_per_node=2",
            "hydra.launcher.timeout_min=5",
            "seed=0",
        ],
        env=slurm_env,
        timeout=540,
    )
    print(f"one 2-task DDP job through Slurm took {secs:.1f}s")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    metrics = read_json(sweep_dir / "0" / "metrics.json")
    assert metrics["train/world_size"] == 2.0 and "eval/tau" in metrics
    rank1 = read_json(sweep_dir / "0" / "rank1" / "run.json")
    assert rank1["status"] == "completed" and rank1["rank"] == 1 and rank1["world_size"] == 2
    assert read_json(sweep_dir / SUMMARY_FILE)["counts"] == {"completed": 1}  # one job, not one per rank
