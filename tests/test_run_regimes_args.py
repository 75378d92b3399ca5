"""scripts/run_regimes.py: a bad --seeds, --phases, --arms or --gpus is argparse's one-line error, before anything is
written; the GPU slots."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("run_regimes", ROOT / "scripts" / "run_regimes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "0,x"], "argument --seeds: '0,x' is not a comma-separated list of integers"),
        (["--phases", "2,4"], "--phases: [2, 4] names a phase other than 1, 2, 3"),
        (
            ["--arms", "vsd,eagle"],
            "--arms: ['eagle'] not among ['eagle3', 'vsd', 'vsd_token', 'eagle3_time', 'power']",
        ),
        (["--gpus", "2"], "--gpus needs --gpu and a count >= 1"),
        (["--gpu", "--gpus", "-1"], "--gpus needs --gpu and a count >= 1"),
        (["--jobs", "0"], "--jobs 0: needs at least 1"),
    ],
)
def test_bad_arguments_are_one_line_and_write_nothing(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        _script().main([*args, "--root", str(tmp_path / "root")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)
    assert not (tmp_path / "root").exists()


def test_gpu_slots_spread_workers_over_cards(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = _script().gpu_slots(5, 2)
    assert [slots.get_nowait() for _ in range(5)] == ["0", "1", "0", "1", "0"]
    # a scheduler's choice of cards is kept: the slots name its cards, not indices from 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    slots = _script().gpu_slots(3, 2)
    assert [slots.get_nowait() for _ in range(3)] == ["2", "3", "2"]
    none = _script().gpu_slots(3, 0)
    assert [none.get_nowait() for _ in range(3)] == [None, None, None]


def test_arm_runs_order_and_filter():
    """Phase 2's runs: the VSD arms first, the controls last; tree only for regime_vsd; --arms filters."""
    runs = _script().arm_runs([0, 1], ["regime_power", "regime_eagle3", "regime_vsd", "regime_vsd_token"])
    assert [a for _, a, _ in runs] == ["regime_vsd"] * 8 + ["regime_vsd_token"] * 6 + [
        "regime_eagle3"
    ] * 6 + ["regime_power"] * 6
    assert runs[:4] == [
        ("control", "regime_vsd", 0),
        ("source", "regime_vsd", 0),
        ("sampled", "regime_vsd", 0),
        ("control", "regime_vsd", 1),
    ]
    assert {r for r, a, _ in runs if r == "tree"} == {"tree"} and all(
        a == "regime_vsd" for r, a, _ in runs if r == "tree"
    )
    assert _script().arm_runs([0], ["regime_eagle3"]) == [
        (r, "regime_eagle3", 0) for r in ("control", "source", "sampled")
    ]


def test_more_gpus_than_the_inherited_cards_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    with pytest.raises(SystemExit) as e:
        _script().main(["--gpu", "--gpus", "2", "--root", str(tmp_path / "root")])
    assert e.value.code == 2 and not (tmp_path / "root").exists()
    assert (
        capsys.readouterr().err.strip().splitlines()[-1].endswith("CUDA_VISIBLE_DEVICES names only 1 card(s)")
    )


def test_a_run_completed_with_other_overrides_fails_its_job(tmp_path, capsys):
    """Rerunning into a --root of an older plan (e.g. the smaller T=1 evals) neither keeps the old run as this
    job's nor overwrites it; the same overrides are skipped as done."""
    import json

    run_dir, logs = tmp_path / "root" / "control" / "vsd" / "seed0" / "t1", tmp_path / "root" / "logs"
    run_dir.mkdir(parents=True)
    logs.mkdir()
    planned = ["experiment=regime_base", "eval.method=decode"]
    run = {"status": "completed", "job": {"overrides": [*planned, "eval.per_category=4"]}}
    (run_dir / "run.json").write_text(json.dumps(run))
    name, rc, _ = _script().job(planned, run_dir, logs)
    assert rc == 3 and "completed with other overrides" in capsys.readouterr().out
    run["job"]["overrides"] = planned
    (run_dir / "run.json").write_text(json.dumps(run))
    assert _script().job(planned, run_dir, logs)[1] == 0 and not list(logs.iterdir())
