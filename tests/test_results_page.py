"""vsd.analysis.results (docs/results.md generator) on unit-test fixture records with known τ values."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.test_analysis_fixture import write_run
from vsd.analysis import collect_runs, results


def _run(
    root: Path, name: str, loss: str, seed: int, tau: float, speedup: float, split: str = "test", **flags
) -> None:
    d = write_run(root / f"{name}-{seed}-{flags.get('s', 4)}-{split}-{tau}", loss=loss, seed=seed, **flags)
    cfg = json.loads((d / "config.json").read_text())
    cfg["run_name"] = name
    cfg.setdefault("eval", {})["split"] = split
    (d / "config.json").write_text(json.dumps(cfg))
    m = json.loads((d / "metrics.json").read_text())
    m.update({"eval/tau": tau, "eval/speedup": speedup})
    (d / "metrics.json").write_text(json.dumps(m))


@pytest.fixture()
def records(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed in (0, 1, 2):
        _run(root, "paper-eagle3", "eagle3", seed, tau=2.0 + 0.01 * seed, speedup=0.5)
        _run(root, "paper-vsd", "vsd", seed, tau=2.1 + 0.01 * seed, speedup=0.55)
        _run(root, "paper-vsd-no-arw", "vsd", seed, tau=2.05 + 0.01 * seed, speedup=0.55, arw=False)
    _run(root, "paper-vsd", "vsd", 0, tau=2.2, speedup=0.6, s=16)  # S sweep points: not in the main rows
    _run(root, "paper-vsd", "vsd", 1, tau=2.31, speedup=0.6, s=16)
    _run(root, "someone-else", "vsd", 0, tau=9.0, speedup=9.0)  # not a paper row: ignored
    return root


def test_tables_pair_by_seed_and_keep_the_prose(records: Path, tmp_path: Path) -> None:
    page = tmp_path / "results.md"
    page.write_text(
        f"# Results\n\nhand-written intro\n\n{results.BEGIN}\nold\n{results.END}\n\nconclusions\n"
    )
    assert (
        results.main(["--runs", str(records), "--page", str(page), "--figures", str(tmp_path / "fig")]) == 0
    )
    text = page.read_text()
    assert "hand-written intro" in text and "conclusions" in text and "\nold\n" not in text
    # VSD − EAGLE-3 is exactly +0.100 τ on every seed: CI half-width 0; +10% speedup
    vsd_row = next(line for line in text.splitlines() if line.startswith("| VSD | 0 | 3 |"))
    assert "+0.100 ± 0.000" in vsd_row and "+10.0% ± 0.0%" in vsd_row
    no_arw = next(line for line in text.splitlines() if line.startswith("| VSD −ARW | 0 | 3 |"))
    assert "-0.050 ± 0.000" in no_arw  # ablation rows are paired against full VSD
    main_vsd = next(line for line in text.splitlines() if line.startswith("| VSD | 3 |"))
    assert main_vsd.split(" | ")[2] == "2.11 ± 0.02"  # mean of 2.10, 2.11, 2.12 (S=16 point excluded)
    s16 = next(line for line in text.splitlines() if line.startswith("| 16 |"))
    assert s16.startswith("| 16 | 2 | 2.255 ± ") and "| +0.150 ± " in s16  # Δ vs S=4 paired: +0.10, +0.20
    # the run named "someone-else" (tau and speedup 9.0) is in no row: no cell of the VSD row starts with 9
    assert not any(cell.strip().startswith("9") for cell in main_vsd.split("|")[2:])
    # idempotent: a second run rewrites the same block
    results.main(["--runs", str(records), "--page", str(page), "--figures", str(tmp_path / "fig")])
    assert page.read_text().count(results.BEGIN) == 1


def test_validation_trials_stay_out_of_the_test_tables(records: Path, tmp_path: Path) -> None:
    # Search trials share the rows' run names but were evaluated on the val split: listed, never averaged in.
    _run(records, "paper-vsd", "vsd", 0, tau=1.5, speedup=0.1, split="val")
    _run(records, "paper-vsd", "vsd", 0, tau=1.7, speedup=0.1, split="val")
    _run(records, "paper-base", "eagle3", 0, tau=1.6, speedup=0.1, split="val")
    for seed in (0, 1):
        _run(records, "paper-eagle3-tuned", "eagle3", seed, tau=2.0, speedup=0.5)
        _run(records, "paper-vsd-tuned", "vsd", seed, tau=2.0 + 0.02 * (seed + 1), speedup=0.5)
    page = tmp_path / "results.md"
    page.write_text(f"{results.BEGIN}\n{results.END}\n")
    assert results.main(["--runs", str(records), "--page", str(page), "--figures", str(tmp_path / "f")]) == 0
    lines = page.read_text().splitlines()
    main_vsd = next(line for line in lines if line.startswith("| VSD | 3 |"))
    assert main_vsd.split(" | ")[2] == "2.11 ± 0.02"  # the val trials (1.5, 1.7) are not in it
    assert "| base draft |" not in "\n".join(lines[: lines.index(main_vsd)])  # base ran on val only
    trials = [line for line in lines if line.startswith("| VSD | runs/paper-vsd-")]
    assert [t.split(" | ")[-1] for t in trials] == ["1.700 |", "1.500 |"]  # best first
    assert any("no fine-tune): τ 1.600" in line for line in lines)
    tuned = next(line for line in lines if line.startswith("| VSD, val-tuned | 0 | 2 |"))
    assert "+0.030 ± " in tuned  # paired: +0.02, +0.04


def test_bad_input_is_one_line(records: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert results.main(["--runs", str(tmp_path / "nope")]) == 1
    assert "folder not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert results.main(["--runs", str(empty), "--page", str(tmp_path / "p.md")]) == 1
    page = tmp_path / "nomarkers.md"
    page.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="no <!-- generated:begin -->"):
        results.main(["--runs", str(records), "--page", str(page), "--figures", str(tmp_path / "fig")])
    assert page.read_text() == "# no markers\n"


def test_keep_records_keeps_the_compact_form_without_weights(tmp_path: Path) -> None:
    import subprocess

    src = write_run(tmp_path / "multirun" / "0")
    (src / "draft").mkdir()
    (src / "draft" / "model.safetensors").write_bytes(b"x" * 10)
    (src / "draft_vocab.safetensors").write_bytes(b"x")
    (src / ".hydra").mkdir()
    (src / ".hydra" / "overrides.yaml").write_text("- loss=vsd\n")
    (tmp_path / "multirun" / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    script = Path(__file__).resolve().parents[1] / "scripts" / "keep_records.sh"
    dst = tmp_path / "kept"
    r = subprocess.run([str(script), str(tmp_path / "multirun"), str(dst)], capture_output=True, text=True)
    assert r.returncode == 0 and "kept 1 run records" in r.stdout, r.stderr
    assert sorted(p.name for p in dst.iterdir()) == ["part.json", "runs.jsonl.gz"]
    row = json.loads(gzip.decompress((dst / "runs.jsonl.gz").read_bytes()))
    assert row["path"] == "0" and row["files"]["metrics.json"] == json.loads(
        (src / "metrics.json").read_text()
    )
    assert not any("draft" in name or ".hydra" in name for name in row["files"])
    assert json.loads((dst / "part.json").read_text())["files"]["multirun.yaml"] == {
        "hydra": {"mode": "MULTIRUN"}
    }
    assert collect_runs(dst)["run_dir"].tolist() == [str(dst / "0")]  # read as the raw folder was
    r = subprocess.run([str(script), str(tmp_path / "nope"), str(dst)], capture_output=True, text=True)
    assert r.returncode == 1 and "no such folder" in r.stderr and (dst / "runs.jsonl.gz").exists()


def test_tau_vs_samples_draws_the_vsd_curve(records: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The figure's series are split by swept config keys only: not by the page's own derived columns (S
    repeats loss.num_samples), and not by a key that older records lack (added to the config later)."""
    old = next(records.glob("paper-vsd-0-16-*"))  # written before the key below existed
    for f in records.glob("*/config.json"):
        cfg = json.loads(f.read_text())
        if f.parent != old:
            cfg.setdefault("decoding", {})["draft_dtype"] = "float32"
        f.write_text(json.dumps(cfg))
    figs = {}
    monkeypatch.setattr(
        results, "save_figure", lambda fig, out, name: [figs.setdefault(name, fig) and Path(f"{name}.png")]
    )
    df = results.load(records)
    results.figures(df, records / "figs")
    labels = figs["tau_vs_samples"].axes[0].get_legend_handles_labels()[1]
    assert "VSD" in labels and len([x for x in labels if x.startswith("VSD")]) == 1
