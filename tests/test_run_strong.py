"""scripts/run_strong.py: argument errors are one line; the pool starts tasks by priority once what they wait
on has finished, and starts none after its deadline (what is left is reported, to be continued)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("run_strong", ROOT / "scripts" / "run_strong.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["run_strong"] = mod  # its dataclass looks its module up
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--phases", "4"], "--phases: [4] names a phase other than 1, 2, 3"),
        (["--arms", "eagle3,vsd"], "--arms: ['vsd'] not among"),
        (["--jobs", "0"], "--jobs 0: needs at least 1"),
        (["--gguf", "/nonexistent.gguf"], "--gguf / VSD_GGUF: /nonexistent.gguf is not a file"),
    ],
)
def test_bad_arguments(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit):
        _script().main([*args, "--root", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in err


def _pool(mod, tmp_path, monkeypatch, deadline=float("inf"), secs=0.0):
    started: list[str] = []

    def fake_job(overrides, run_dir, log_dir, gpu=None, live=None):
        started.append(overrides[0])
        time.sleep(secs)
        return overrides[0], 0, secs

    monkeypatch.setattr(mod.rr, "job", fake_job)
    return mod.Pool(1, tmp_path, 0, deadline, 1.0), started


def test_priority_and_dependencies(tmp_path, monkeypatch):
    mod = _script()
    pool, started = _pool(mod, tmp_path, monkeypatch)
    T = mod.Task
    tasks = [
        T((2,), "late", lambda: [(["late"], tmp_path)]),
        T((0, 1), "a", lambda: [(["a"], tmp_path)]),
        T((0.5,), "sel", lambda: [(["sel"], tmp_path)], after=["a", "b"]),  # waits for a and b
        T((0, 2), "b", lambda: [(["b1"], tmp_path), (["b2"], tmp_path)]),  # a chain, in order
        T((1,), "next", lambda: [(["next"], tmp_path)]),
    ]
    assert pool.run("test", tasks) == []
    assert started == ["a", "b1", "b2", "sel", "next", "late"]


def test_deadline_starts_nothing_more_and_reports_what_is_left(tmp_path, monkeypatch):
    mod = _script()
    pool, started = _pool(mod, tmp_path, monkeypatch, deadline=time.time() + 0.3, secs=0.5)
    tasks = [mod.Task((i,), f"t{i}", lambda i=i: [([f"t{i}"], tmp_path)]) for i in range(3)]
    left = pool.run("test", tasks)
    assert started == ["t0"] and left == ["t1", "t2"]
