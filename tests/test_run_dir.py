"""A run dir is never shared: default dirs are unique per process, and a dir a live run holds is refused.

Reusing a dir after its run ended (a rerun of the same command: how an interrupted run resumes, e.g.
experiment=paper_base's outputs/paper/base) keeps working.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.sweep_helpers import FAST_JOB, job_env
from vsd.errors import UserError
from vsd.records import RunRecord

# Each child imports everything, waits for a go-file, then resolves the default dirs: the resolutions land
# within a fraction of a second, so a per-second name would be shared by at least two of three processes.
_CHILD = """
import sys, time, pathlib
from vsd.config import hydra_dirs
go = pathlib.Path(sys.argv[1])
while not go.exists():
    time.sleep(0.005)
print(*hydra_dirs(["experiment=smoke"]), sep="\\n")
"""


def _resolve_default_dirs(tmp_path: Path, n: int, env: dict[str, str]) -> list[list[str]]:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(go)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    time.sleep(3)  # imports done (they wait on the go-file)
    go.touch()
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return outs


def test_default_dirs_of_runs_started_together_differ(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TORCHELASTIC_RUN_ID"}
    outs = _resolve_default_dirs(tmp_path, 3, env)
    run_dirs, sweep_dirs = [o[0] for o in outs], [o[1] for o in outs]
    assert len(set(run_dirs)) == 3, run_dirs
    assert len(set(sweep_dirs)) == 3, sweep_dirs
    assert all(d.startswith("outputs/smoke/") for d in run_dirs)


def test_torchrun_ranks_agree_on_the_default_dir(tmp_path: Path) -> None:
    # torchrun's workers are children of one agent process and carry TORCHELASTIC_RUN_ID; here the agent is
    # this test process.
    outs = _resolve_default_dirs(tmp_path, 2, {**os.environ, "TORCHELASTIC_RUN_ID": "test"})
    assert outs[0][0] == outs[1][0] and outs[0][0].endswith(f"_{os.getpid()}")


def test_a_live_run_holds_its_dir_and_a_finished_one_hands_it_on(tmp_path: Path) -> None:
    first = RunRecord(tmp_path, 0, {"seed": 0})
    with pytest.raises(UserError, match=f"{tmp_path} is in use by a running run \\(pid {os.getpid()}"):
        RunRecord(tmp_path, 1, {"seed": 1})
    assert json.loads((tmp_path / "config.json").read_text()) == {"seed": 0}  # the refused one wrote nothing
    first.succeed({"x": 1.0})
    first.close()
    second = RunRecord(tmp_path, 1, {"seed": 1})  # the next run (a resume) takes the dir over
    assert json.loads((tmp_path / "run.json").read_text())["seed"] == 1
    assert not (tmp_path / "metrics.json").exists()  # no stale result of the earlier run
    second.close()


def test_run_py_refuses_a_dir_that_a_live_run_holds(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "run.py", *FAST_JOB, f"hydra.run.dir={run_dir}"]
    live = RunRecord(run_dir, 0, {"seed": 0})  # stands for a run still going in that dir
    r = subprocess.run(cmd, cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=300)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr[-3000:]
    assert str(run_dir) in err[0] and f"pid {os.getpid()}" in err[0]
    assert not (run_dir / ".hydra").exists() and not (run_dir / "eval.jsonl").exists()
    live.fail("killed")
    live.close()
    # once that run has ended, the same command reuses the dir (how a rerun resumes)
    r = subprocess.run(cmd, cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"


def test_two_runs_started_together_keep_their_own_records(tmp_path: Path) -> None:
    """Two real runs with the default run dir, started at once: two dirs, each with its own one eval row."""
    cmd = [sys.executable, str(ROOT / "run.py"), *FAST_JOB]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    dirs = sorted((tmp_path / "outputs" / "smoke").iterdir())
    assert len(dirs) == 2, dirs
    pids = set()
    for d in dirs:
        run = json.loads((d / "run.json").read_text())
        assert run["status"] == "completed"
        pids.add(run["pid"])
        assert len((d / "eval.jsonl").read_text().splitlines()) == 1
    assert pids == {p.pid for p in procs}
