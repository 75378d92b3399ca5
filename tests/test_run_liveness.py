"""A run that died without recording it reads as dead, and run.log holds the run's output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT
from tests.sweep_helpers import FAST_JOB, job_env
from vsd.analysis.collect import collect_runs
from vsd.records import RunLog, RunRecord, now, run_status
from vsd.sweep import summarize


def _wait_for(pred, timeout: float, what: str) -> None:
    t0 = time.time()
    while not pred():
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_sigkilled_run_reads_as_dead_and_its_log_has_its_lines(tmp_path: Path) -> None:
    # 300 prompts of 64 new tokens keep the tiny model busy long after the eval stage starts.
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": i, "turns": [f"count to {i} please"]}) + "\n" for i in range(300))
    )
    run_dir = tmp_path / "runs" / "run"
    cmd = [
        sys.executable,
        "run.py",
        "experiment=smoke",
        "stages=[eval]",
        "decoding=ngram",
        "eval.suite=file",
        f"eval.prompts={prompts}",
        "eval.max_turns=1",
        "eval.per_category=300",
        "eval.ar_baseline=false",
        "decoding.max_new_tokens=64",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        log = run_dir / "run.log"
        _wait_for(
            lambda: log.exists() and "[vsd] eval: 300 prompts" in log.read_text(), 120, "the eval stage"
        )
        assert (run_dir / "run.json").exists() and proc.poll() is None, (
            proc.stderr.read() if proc.stderr else ""
        )
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "running" and run["pid"] == proc.pid and run["heartbeat"]  # what it left behind
    status, reason = run_status(run)
    assert status == "dead" and f"process {proc.pid}" in reason and "gone" in reason
    # every reader reports it dead
    job = summarize(tmp_path / "runs")["jobs"][0]
    assert (job["status"], job["error"]) == ("dead", reason)
    df = collect_runs([tmp_path / "runs"])
    assert list(df["status"]) == ["dead"] and "gone" in df["error"].iloc[0]
    # the log was written as the run went, not at its (missing) end
    text = log.read_text()
    assert "[vsd] stage eval ..." in text and "[vsd] eval: 300 prompts (file" in text


def test_run_log_holds_stage_lines_the_summary_and_errors(tmp_path: Path) -> None:
    ok, bad = tmp_path / "ok", tmp_path / "bad"
    r = subprocess.run(
        [sys.executable, "run.py", *FAST_JOB, f"hydra.run.dir={ok}"],
        cwd=ROOT,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    text = (ok / "run.log").read_text()
    for line in ("[vsd] stage eval ...", "[vsd] stage eval done in", "eval/tau", "vsd run"):
        assert line in text, line
    assert "\r" not in text and "\x1b[" not in text
    r = subprocess.run(
        [sys.executable, "run.py", *FAST_JOB, "eval.suite=file", "eval.prompts=/nonexistent/p.jsonl"]
        + [f"hydra.run.dir={bad}"],
        cwd=ROOT,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1
    assert "error: eval.prompts: /nonexistent/p.jsonl does not exist" in (bad / "run.log").read_text()


def test_heartbeat_beats_while_the_run_lives_and_stops_at_its_end(tmp_path: Path) -> None:
    rec = RunRecord(tmp_path, 0, {}, heartbeat_s=0.2)
    first = json.loads((tmp_path / "run.json").read_text())["heartbeat"]
    _wait_for(
        lambda: json.loads((tmp_path / "run.json").read_text())["heartbeat"] != first, 10, "a heartbeat"
    )
    assert run_status(json.loads((tmp_path / "run.json").read_text()))[0] == "running"  # this process lives
    rec.succeed({})
    rec.close()
    last = json.loads((tmp_path / "run.json").read_text())
    time.sleep(0.6)
    assert json.loads((tmp_path / "run.json").read_text()) == last and last["status"] == "completed"


def test_a_stale_heartbeat_means_dead_on_any_host() -> None:
    old = "2020-01-01T00:00:00.000+00:00"
    elsewhere = {"status": "running", "pid": 1, "hostname": "another-node", "heartbeat_every": 30.0}
    status, reason = run_status({**elsewhere, "heartbeat": old})
    assert status == "dead" and "no heartbeat" in reason and old in reason
    assert run_status({**elsewhere, "heartbeat": now(precise=True)}) == ("running", None)
    assert run_status({"status": "running"}) == ("running", None)  # a record from before heartbeats
    assert run_status({"status": "failed", "error": "x"}) == ("failed", "x")


def test_summary_takes_the_error_of_a_job_without_run_json_from_its_log(tmp_path: Path) -> None:
    for n, log in (
        ("0", "[vsd] something\nerror: train.lr: must be > 0, got -1.0\n"),
        ("1", "Traceback (most recent call last):\n  File 'x', line 1\nValueError: bad\n\n"),
        ("2", ""),
    ):
        (tmp_path / n / ".hydra").mkdir(parents=True)
        (tmp_path / n / ".hydra" / "overrides.yaml").write_text(f"- seed={n}\n")
        (tmp_path / n / "run.log").write_text(log)
    jobs = summarize(tmp_path)["jobs"]
    assert [(j["status"], j["error"]) for j in jobs] == [
        ("missing", "train.lr: must be > 0, got -1.0"),
        ("missing", "ValueError: bad"),
        ("missing", None),
    ]


def test_run_log_keeps_a_progress_bar_s_last_state_only(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "run.log")
    for chunk in (
        "start\n",
        "\r 10%|#",
        "\r 50%|#####",
        "\r100%|##########",
        "\n",
        "\x1b[1mbold\x1b[0m\n",
        "tail",
    ):
        log.write(chunk)
    log.close()
    assert (tmp_path / "run.log").read_text() == "start\n100%|##########\nbold\ntail\n"
