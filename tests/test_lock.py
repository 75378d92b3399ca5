"""The locked environment (scripts/lock.py): the repo's locks satisfy what the project declares, and a
dependency added or re-pinned without `make lock` is named in one line."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("lock", ROOT / "scripts" / "lock.py")
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)


def _copy(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", "requirements-data.txt", "requirements-client.txt", *lock.LOCKS):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_the_repos_locks_satisfy_its_declared_requirements() -> None:
    assert lock.stale(ROOT) == []
    pins = lock.read_lock(ROOT / "requirements.lock")
    assert pins["torch"] == "2.13.0+cpu"  # the CPU wheel, never the CUDA build
    assert not [name for name in pins if name.startswith(("nvidia-", "triton"))]


def test_a_new_or_repinned_dependency_is_stale(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    py = root / "pyproject.toml"
    py.write_text(
        py.read_text()
        .replace('"pandas==3.1.1"', '"pandas==3.1.2"')
        .replace('"tqdm==4.70.1",', '"tqdm==4.70.1",\n  "pyyaml-include==2.2",')
    )
    data = root / "requirements-data.txt"
    data.write_text(data.read_text() + "made-up-package==1.0\n")
    assert lock.stale(root) == [
        "pyproject.toml: pandas==3.1.2 but requirements.lock pins 3.1.1 (run `make lock`)",
        "pyproject.toml: pyyaml-include==2.2 is not in requirements.lock (run `make lock`)",
        "requirements-data.txt: made-up-package==1.0 is not in requirements-data.lock (run `make lock`)",
    ]
    assert lock.main(["check", "--root", str(root)]) == 1


def test_a_missing_lock_is_named(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "requirements-data.lock").unlink()
    assert lock.stale(root) == ["requirements-data.lock: missing (run `make lock`)"]


def test_installed_drift_is_named(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    path = root / "requirements.lock"
    path.write_text(path.read_text().replace("pandas==3.1.1", "pandas==3.0.0"))
    assert "pandas is 3.1.1, requirements.lock pins 3.0.0 (run `make clean-venv setup`)" in lock.drift(root)
