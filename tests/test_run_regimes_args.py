"""scripts/run_regimes.py: a bad --seeds or --phases is argparse's one-line error, before anything is written."""

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
    ],
)
def test_bad_arguments_are_one_line_and_write_nothing(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        _script().main([*args, "--root", str(tmp_path / "root")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)
    assert not (tmp_path / "root").exists()
