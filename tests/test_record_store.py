"""vsd.analysis.record_store: run records compacted into docs/records' form, and read back.

The round trip: a sweep compacted, then collected, gives the same frames (runs, per-prompt rows, training logs)
as its raw folders. Here on the synthetic fixture with everything a real sweep leaves beside the records
(.hydra/, draft weights, submitit pickles and logs, a torn line, a nested rank folder); on a tiny real sweep
in tests/test_analysis_real.py.
"""

from __future__ import annotations

import gzip
import json
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytest

from tests.test_analysis_fixture import write_fake_sweep, write_run
from vsd.analysis import collect_prompts, collect_runs, collect_train_logs, keep
from vsd.analysis.record_store import (
    PART_FILE,
    RUNS_FILE,
    TRIALS_FILE,
    RecordError,
    compact,
    expand,
    find_runs,
    open_run,
)

SWEEP = "2025-01-01_00-00-00"  # write_fake_sweep's folder


def frames(root: str | Path) -> list[pd.DataFrame]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [f(root) for f in (collect_runs, collect_prompts, collect_train_logs)]


def assert_same_frames(a: Path, b: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> list[pd.DataFrame]:
    """``a/name`` and ``b/name`` collect to equal frames. Read by relative path, so run_dir and run_id (which
    name the folder read) compare equal too."""
    monkeypatch.chdir(a)
    before = frames(name)
    monkeypatch.chdir(b)
    after = frames(name)
    for x, y in zip(before, after):
        pd.testing.assert_frame_equal(x, y)
    return after


def messy_sweep(root: Path) -> Path:
    """The fixture sweep plus what Hydra, submitit and the trainer leave beside the records."""
    sweep = write_fake_sweep(root, seeds=(0, 1)) / SWEEP
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  mode: MULTIRUN\n  sweeper:\n    params:\n      seed: 0,1\n"
    )
    (sweep / "sweep_summary.json").write_text(json.dumps({"counts": {"completed": 22, "failed": 1}}))
    job = sweep / ".submitit" / "77"
    job.mkdir(parents=True)
    (job / "77_submitted.pkl").write_bytes(b"\x80\x04pickle")
    (job / "77_0_log.err").write_bytes(b"eval:  50%|5/10\reval: 100%|10/10\nTraceback: boom\n")
    r0 = sweep / "0"
    (r0 / ".hydra").mkdir()
    (r0 / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (r0 / "draft").mkdir()
    (r0 / "draft" / "model.safetensors").write_bytes(b"w" * 100)
    (r0 / "draft" / "config.json").write_text("{}")
    (r0 / "draft_vocab.safetensors").write_bytes(b"v")
    (r0 / "run.log").write_text("[vsd] stage data ...\n")
    (r0 / "rank1").mkdir()
    (r0 / "rank1" / "run.json").write_text(json.dumps({"status": "completed", "rank": 1}))
    (sweep / "1" / "run.log").write_text("")
    with open(sweep / "2" / "train_log.jsonl", "a") as fh:
        fh.write('{"step": 3')  # a torn last line
    return sweep


def test_compacted_sweep_collects_the_same_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    messy_sweep(tmp_path / "raw")
    shutil.copytree(tmp_path / "raw", tmp_path / "kept")
    part = tmp_path / "kept" / SWEEP
    done = compact(part, part)  # in place, as scripts/compact_records.py does
    assert sorted(p.name for p in part.iterdir()) == [PART_FILE, RUNS_FILE]
    assert done.runs == 23 and done.trials == 0
    assert done.dropped == {".hydra/": 1, "draft/": 2, ".safetensors": 1, ".pkl": 1, "empty": 1}
    assert any("train_log.jsonl:" in n and "corrupt JSONL line" in n for n in done.notes)

    runs, prompts, logs = assert_same_frames(tmp_path / "raw", tmp_path / "kept", SWEEP, monkeypatch)
    assert len(runs) == 23 and (runs["status"] == "failed").sum() == 1
    assert len(prompts) == 3 * 22 and len(logs) == 7 * 22
    assert runs["run_dir"].iloc[0].startswith(f"{SWEEP}/")  # the folder it was compacted from

    meta = json.loads((part / PART_FILE).read_text())
    assert meta["files"][".submitit/77/77_0_log.err"] == "eval: 100%|10/10\nTraceback: boom\n"
    assert meta["files"]["multirun.yaml"]["hydra"]["sweeper"]["params"] == {"seed": "0,1"}
    assert meta["files"]["sweep_summary.json"]["counts"]["failed"] == 1
    run0 = open_run(Path(SWEEP) / "0")  # a run's files by its run_dir, as results.py reads run.json
    assert run0.read_json("rank1/run.json")["rank"] == 1 and run0.files["run.log"] == "[vsd] stage data ...\n"
    assert list(run0.files)[:3] == ["run.json", "config.json", "metrics.json"]
    with pytest.raises(FileNotFoundError, match="no compacted record"):
        open_run(Path(SWEEP) / "99")


def test_single_run_part_expands_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = write_run(tmp_path / "raw" / "run", seed=3)
    assert keep.main([str(raw), str(tmp_path / "kept" / "run")]) == 0  # the keep_records.sh entry point
    assert sorted(p.name for p in raw.iterdir()) == [  # the source is left alone
        "config.json",
        "eval.jsonl",
        "metrics.json",
        "run.json",
        "train_log.jsonl",
    ]
    row = json.loads(gzip.decompress((tmp_path / "kept" / "run" / RUNS_FILE).read_bytes()))
    assert row["path"] == "." and row["files"]["run.json"] == json.loads((raw / "run.json").read_text())
    assert open_run(tmp_path / "kept" / "run").read_json("metrics.json") == json.loads(
        (raw / "metrics.json").read_text()
    )
    assert_same_frames(tmp_path / "raw", tmp_path / "kept", "run", monkeypatch)
    assert keep.main(["--expand", str(tmp_path / "kept" / "run"), str(tmp_path / "expanded" / "run")]) == 0
    assert_same_frames(tmp_path / "raw", tmp_path / "expanded", "run", monkeypatch)


def test_a_run_inside_a_run_is_its_own_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A T=1 eval written into its arm's folder (scripts/run_regimes.py: <arm>/seed0/t1) is a run of its own,
    in the raw folders and after compaction; a DDP rank folder (rank1/run.json) stays part of its run."""
    arm = write_run(tmp_path / "raw" / "part" / "vsd" / "seed0", seed=0)
    write_run(arm / "t1", seed=1)
    (arm / "rank1").mkdir()
    (arm / "rank1" / "run.json").write_text(json.dumps({"status": "completed", "rank": 1}))
    done = compact(tmp_path / "raw" / "part", tmp_path / "kept" / "part")
    assert done.runs == 2
    rows = [json.loads(line) for line in gzip.open(tmp_path / "kept" / "part" / RUNS_FILE, "rt")]
    assert [r["path"] for r in rows] == ["vsd/seed0", "vsd/seed0/t1"]
    assert "rank1/run.json" in rows[0]["files"] and not any(k.startswith("t1/") for k in rows[0]["files"])
    runs, _, _ = assert_same_frames(tmp_path / "raw", tmp_path / "kept", "part", monkeypatch)
    assert sorted(runs["seed"]) == [0, 1]


def test_optuna_study_becomes_trial_rows(tmp_path: Path) -> None:
    import optuna

    search = tmp_path / "tune"
    write_run(search / "part_a" / "0")
    study = optuna.create_study(
        study_name="tune", storage=f"sqlite:///{search / 'study.db'}", direction="maximize"
    )
    study.optimize(lambda t: t.suggest_float("train.lr", 1e-4, 1e-2, log=True) * 100, n_trials=3)
    want = [(t.number, "COMPLETE", t.params, t.values) for t in study.trials]
    best = study.best_value
    (search / "part_a" / "optimization_results.yaml").write_text(f"best_value: {best}\n")
    done = compact(search, search)
    assert done.trials == 3 and not list(search.rglob("*.db"))
    rows = [json.loads(line) for line in (search / TRIALS_FILE).read_text().splitlines()]
    assert [(r["number"], r["state"], r["params"], r["values"]) for r in rows] == want
    assert {r["study"] for r in rows} == {"tune"} and all(r["datetime_complete"] for r in rows)
    meta = json.loads((search / PART_FILE).read_text())
    assert meta["files"]["part_a/optimization_results.yaml"] == {"best_value": best}


def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dst = tmp_path / "dst"

    def err() -> str:
        text = capsys.readouterr().err
        assert text.count("\n") == 1 and text.startswith("error: ")
        return text

    assert keep.main([str(tmp_path / "nope"), str(dst)]) == 1 and "no such folder" in err()
    (tmp_path / "empty").mkdir()
    assert keep.main([str(tmp_path / "empty"), str(dst)]) == 1 and "no run.json below it" in err()
    write_run(tmp_path / "bad" / "0")
    (tmp_path / "bad" / "0" / "config.json").write_text("{oops")
    assert keep.main([str(tmp_path / "bad"), str(dst)]) == 1 and "bad/0/config.json" in err()
    assert not dst.exists() and not list(tmp_path.glob(".dst*"))
    write_run(tmp_path / "tune" / "0")
    (tmp_path / "tune" / "study.db").write_bytes(b"not a database")
    assert (
        keep.main([str(tmp_path / "tune"), str(dst)]) == 1
        and "study.db: cannot read it as an Optuna" in err()
    )
    assert not dst.exists() and not list(tmp_path.glob(".dst*"))
    # a folder that is not a compact part is never replaced
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.md").write_text("x")
    write_run(tmp_path / "ok" / "0")
    assert keep.main([str(tmp_path / "ok"), str(tmp_path / "notes")]) == 1 and "not replacing" in err()
    assert (tmp_path / "notes" / "todo.md").exists()
    # ... a compact one is (keeping a sweep again after it grew)
    assert (
        keep.main([str(tmp_path / "ok"), str(dst)]) == 0 and keep.main([str(tmp_path / "ok"), str(dst)]) == 0
    )
    assert sorted(p.name for p in dst.iterdir()) == [PART_FILE, RUNS_FILE]
    assert keep.main([str(dst), str(dst)]) == 1 and "holds compact records already" in err()  # not twice
    assert sorted(p.name for p in dst.iterdir()) == [PART_FILE, RUNS_FILE]


def test_expand_refuses_a_folder_that_is_not_compact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert keep.main(["--expand", str(tmp_path), str(tmp_path / "out")]) == 1
    assert f"no {RUNS_FILE}" in capsys.readouterr().err and not (tmp_path / "out").exists()
    with pytest.raises(RecordError, match="not a compact records folder"):
        expand(tmp_path, tmp_path / "out")


def test_parts_are_gzip_with_fixed_bytes_and_plain_parts_still_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same runs compact to the same bytes (no gzip timestamp); a part written before compression (a plain
    runs.jsonl) reads as the gzip one does."""
    write_run(tmp_path / "raw" / "part" / "a", seed=0)
    write_run(tmp_path / "raw" / "part" / "b", seed=1)
    compact(tmp_path / "raw" / "part", tmp_path / "kept" / "part")
    first = (tmp_path / "kept" / "part" / RUNS_FILE).read_bytes()
    compact(tmp_path / "raw" / "part", tmp_path / "again" / "part")
    assert (tmp_path / "again" / "part" / RUNS_FILE).read_bytes() == first
    plain = tmp_path / "plain" / "part"
    plain.mkdir(parents=True)
    (plain / "runs.jsonl").write_bytes(gzip.decompress(first))
    runs, _, _ = assert_same_frames(tmp_path / "raw", tmp_path / "plain", "part", monkeypatch)
    assert sorted(runs["seed"]) == [0, 1]
    assert open_run(plain / "b").read_json("run.json")["seed"] == 1


def test_a_corrupt_gzip_part_and_a_part_with_both_names_are_reported(tmp_path: Path) -> None:
    """A truncated runs.jsonl.gz gives the rows before the damage and a note, not an exception; a part holding
    both runs.jsonl and runs.jsonl.gz is read once, from the gzip one, with a note."""
    for i in range(40):
        write_run(tmp_path / "raw" / "part" / f"r{i:02d}", seed=i)
    compact(tmp_path / "raw" / "part", tmp_path / "kept" / "part")
    f = tmp_path / "kept" / "part" / RUNS_FILE
    whole = f.read_bytes()
    f.write_bytes(whole[: len(whole) // 2])
    problems: list = []
    runs = find_runs(tmp_path / "kept", problems)
    assert 0 < len(runs) < 40 and any("unreadable compressed data" in str(p) for p in problems)
    f.write_bytes(whole)
    (f.parent / "runs.jsonl").write_text('{"path": "extra", "files": {}}\n')
    problems = []
    runs = find_runs(tmp_path / "kept", problems)
    assert len(runs) == 40 and any("read runs.jsonl.gz only" in str(p) for p in problems)
