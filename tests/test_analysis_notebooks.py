"""Every analysis/*.py notebook (jupytext py:percent) executes headless through nbclient with the venv's
``python3`` kernel on unit-test fixture records, and writes non-empty figures. The same on real records:
tests/test_analysis_real.py."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest
from nbclient import NotebookClient

from tests.test_analysis_fixture import write_fake_sweep

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "analysis").glob("[0-9]*.py"))


def execute_notebook(path: Path, runs: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Run one notebook from the repo root with VSD_RUNS/VSD_FIGURES set; returns the files it wrote."""
    monkeypatch.setenv("VSD_RUNS", str(runs))
    monkeypatch.setenv("VSD_FIGURES", str(out))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = jupytext.read(path)
    NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    return sorted(out.iterdir()) if out.exists() else []


@pytest.fixture(scope="module")
def fixture_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_sweep(tmp_path_factory.mktemp("runs"), seeds=(0, 1))


def test_notebooks_exist() -> None:
    assert len(NOTEBOOKS) >= 7
    for nb in NOTEBOOKS:
        text = nb.read_text()
        assert "format_name: percent" in text and "VSD_RUNS" in text, nb.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_and_writes_figures(
    path: Path, fixture_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = execute_notebook(path, fixture_runs, tmp_path / "figs", monkeypatch)
    pngs = [f for f in files if f.suffix == ".png"]
    assert pngs and {f.with_suffix(".pdf") for f in pngs} <= set(files), f"{path.name} wrote {files}"
    assert all(f.stat().st_size > 1000 for f in files if f.suffix in (".png", ".pdf"))
