"""Multirun robustness: a failing job is recorded and the sweep goes on; a summary; non-zero exit at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.sweep_helpers import FAST_JOB, failing_sweep, read_json, run_sweep
from vsd.records import atomic_write_json
from vsd.sweep import SUMMARY_FILE, summarize


def test_failed_job_does_not_cost_the_others(tmp_path_factory: pytest.TempPathFactory) -> None:
    proc, sweep_dir, secs = failing_sweep(tmp_path_factory.mktemp("multirun"))
    print(f"2-job sweep (basic launcher) took {secs:.1f}s")
    assert proc.returncode == 1, proc.stderr[-2000:]  # non-zero only after every job finished
    bad, good = sweep_dir / "0", sweep_dir / "1"
    run0 = read_json(bad / "run.json")
    assert run0["status"] == "failed"
    assert "eval.prompts" in run0["error"] and "/nonexistent/vsd-prompts.jsonl" in run0["error"]
    assert not (bad / "metrics.json").exists()
    run1 = read_json(good / "run.json")  # the job after the failure ran and completed
    assert run1["status"] == "completed", run1["error"]
    assert run1["job"]["mode"] == "multirun" and run1["job"]["num"] == 1
    assert read_json(good / "metrics.json")["eval/tau"] >= 1.0

    summary = read_json(sweep_dir / SUMMARY_FILE)
    assert summary["num_jobs"] == 2 and summary["counts"] == {"failed": 1, "completed": 1}
    by_dir = {j["dir"]: j for j in summary["jobs"]}
    assert by_dir["0"]["status"] == "failed" and "eval.prompts" in by_dir["0"]["error"]
    assert by_dir["0"]["swept"] == ["eval.suite=file"]
    assert by_dir["1"]["swept"] == ["eval.suite=smoke"] and by_dir["1"]["metrics"]["eval/tau"] >= 1.0
    assert "1 of 2 jobs did not complete" in proc.stderr


def test_summary_lists_jobs_that_never_recorded(tmp_path: Path) -> None:
    """A job dir Hydra created but the job never wrote run.json (killed early) counts as missing."""
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    atomic_write_json(tmp_path / "1" / "run.json", {"status": "completed", "job": {"overrides": ["seed=1"]}})
    atomic_write_json(tmp_path / "1" / "metrics.json", {"eval/tau": 2.5, "eval/other": 1})
    (tmp_path / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - seed=0,1\n")
    s = summarize(tmp_path)
    assert [(j["dir"], j["status"]) for j in s["jobs"]] == [("0", "missing"), ("1", "completed")]
    assert s["jobs"][0]["overrides"] == ["seed=0"] and s["jobs"][1]["swept"] == ["seed=1"]
    assert s["jobs"][1]["metrics"] == {"eval/tau": 2.5}
    json.dumps(s)


@pytest.mark.slow
def test_local_launcher_gives_each_job_one_thread(tmp_path: Path) -> None:
    """hydra/launcher=local: 2 parallel processes, each with torch threads = cpus_per_task = 1."""
    proc, secs = run_sweep(
        tmp_path / "sw", [*FAST_JOB, "hydra/launcher=local", "hydra.sweeper.max_batch_size=2", "seed=0,1"]
    )
    print(f"2-job sweep (submitit_local) took {secs:.1f}s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for n in ("0", "1"):
        run = read_json(tmp_path / "sw" / n / "run.json")
        assert run["status"] == "completed" and run["threads"] == 1
    assert read_json(tmp_path / "sw" / SUMMARY_FILE)["counts"] == {"completed": 2}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Deprecated API features detected")  # optuna 2.10 on SQLAlchemy 1.4
def test_optuna_study_in_sqlite_grows_across_calls(tmp_path: Path) -> None:
    # The paper's searches (sweeps/paper_tune_*.yaml) keep their study in SQLite, so a second call adds trials
    # to the first call's study instead of starting over (and an interrupted search resumes).
    import optuna

    db = tmp_path / "study" / "study.db"  # the folder does not exist: the resolver creates it
    common = [
        "+sweep=paper_tune_eagle3",
        "hydra.sweeper.params.experiment=smoke",
        "hydra.sweeper.n_trials=1",
        f"hydra.sweeper.storage=${{sqlite_file:{db}}}",
        *FAST_JOB[1:],
    ]
    for call in (1, 2):
        proc, _ = run_sweep(tmp_path / f"part{call}", [*common, f"hydra.sweeper.sampler.seed={call}"])
        assert proc.returncode == 0, proc.stderr[-2000:]
    study = optuna.load_study(study_name="paper_tune_eagle3", storage=f"sqlite:///{db}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and all(t.value >= 1.0 for t in done)  # eval/tau of each call's trial
    assert done[0].params != done[1].params


def test_a_bad_later_sweep_value_fails_before_any_job(tmp_path: Path) -> None:
    """The preflight validates every value of a swept key, not only the first: one line, exit 2, no sweep dir."""
    proc, _ = run_sweep(tmp_path / "sw", [*FAST_JOB, "train.lr=1e-3,-1"], timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(err) == 1 and "train.lr" in err[0] and "train.lr=-1" in err[0], proc.stderr
    assert not (tmp_path / "sw").exists()
