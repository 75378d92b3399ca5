"""The run records kept in the repo (docs/records/README.md): a file budget, no pickles or databases, every
record readable in the compact form, every records path the docs name present, and the results page
regenerating from them unchanged (what `make results` does)."""

from __future__ import annotations

import glob
import re
import shutil
from pathlib import Path

from PIL import Image
from pypdf import PdfReader

from vsd.analysis import collect_runs, find_run_dirs, regimes, results

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "records"
BUDGET = 300  # files under docs/records (issue 20: it once held 1,649 of the repo's 1,872)
BANNED = (".pkl", ".db", ".sqlite", ".safetensors", ".pt", ".bin")
DOCS = [ROOT / "README.md", ROOT / "sweeps" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_records_stay_within_the_file_budget_without_pickles_or_databases() -> None:
    files = [p.relative_to(RECORDS) for p in RECORDS.rglob("*") if p.is_file()]
    assert len(files) <= BUDGET, (
        f"docs/records holds {len(files)} files (budget {BUDGET}); keep records compact"
    )
    banned = [str(f) for f in files if f.suffix in BANNED or {".hydra", ".submitit"} & set(f.parts)]
    assert banned == [], f"docs/records must not hold pickles, databases, weights or .hydra/ copies: {banned}"


def test_every_kept_record_reads_in_the_compact_form() -> None:
    runs = collect_runs(RECORDS, warn=False)
    assert [str(p) for p in runs.attrs["problems"]] == []
    assert len(runs) >= 135 and runs["git_sha"].notna().all()  # the 135 runs kept when converted
    assert find_run_dirs(RECORDS) == []  # nothing raw left: keep_records.sh writes the compact form


def test_every_records_path_named_in_the_docs_exists() -> None:
    missing = []
    for doc in DOCS:
        for m in re.finditer(r"docs/records[\w./*-]*", doc.read_text()):
            path = m.group(0).rstrip(".")
            if any(part.isupper() for part in Path(path).parts):  # a placeholder such as .../cpu/NAME
                path = str(Path(path).parent)
            if not (glob.glob(str(ROOT / path)) if "*" in path else (ROOT / path).exists()):
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert missing == []


def same_figure(made: Path, committed: Path) -> str | None:
    """Why two renderings of one figure differ, or None. What a reader sees is compared, not container bytes:
    PNGs pixel for pixel (zlib may pack equal pixels differently), PDFs by page count and extracted text
    (the embedded font subsets change with fonttools releases; the drawing itself is checked by the PNG)."""
    if made.suffix == ".png":
        a, b = Image.open(made), Image.open(committed)
        same = (a.mode, a.size) == (b.mode, b.size) and a.tobytes() == b.tobytes()
        return None if same else f"{made.name}: pixels differ"
    if made.suffix == ".pdf":
        a, b = PdfReader(made), PdfReader(committed)
        if len(a.pages) != len(b.pages):
            return f"{made.name}: {len(a.pages)} pages, committed {len(b.pages)}"
        texts = [[page.extract_text() for page in r.pages] for r in (a, b)]
        return None if texts[0] == texts[1] else f"{made.name}: text differs"
    return None if made.read_bytes() == committed.read_bytes() else f"{made.name}: bytes differ"


def test_same_figure_ignores_font_subsets_but_not_changes(tmp_path: Path) -> None:
    """A figure saved with another font subset (Type 42 instead of Type 3) is the same figure; a changed tick
    label or a changed data point is not."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(name: str, y: list[float], label: str, fonttype: int) -> Path:
        with matplotlib.rc_context({"pdf.fonttype": fonttype}):
            fig, ax = plt.subplots(figsize=(2, 2))
            ax.plot([0, 1, 2], y)
            ax.set_xlabel(label)
            path = tmp_path / name
            fig.savefig(path, dpi=50, metadata={"CreationDate": None})
            plt.close(fig)
        return path

    ref = [save(f"ref.{ext}", [0, 1, 2], "depth", 3) for ext in ("pdf", "png")]
    assert all(same_figure(save(f"t42.{r.suffix[1:]}", [0, 1, 2], "depth", 42), r) is None for r in ref)
    assert ref[0].read_bytes() != (tmp_path / "t42.pdf").read_bytes()  # the bytes did differ
    assert same_figure(save("label.pdf", [0, 1, 2], "τ", 3), ref[0]) == "label.pdf: text differs"
    assert same_figure(save("point.png", [0, 1, 1.5], "depth", 3), ref[1]) == "point.png: pixels differ"


def test_results_page_regenerates_unchanged(tmp_path: Path) -> None:
    """The four commands of `make results`, into a copy of the page: the page byte for byte and every figure
    as `same_figure` reads it equal the committed ones (~18 s: the regime records hold 81 runs' per-turn
    rows)."""
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    shutil.copy(ROOT / "docs" / "results.md", page)
    for part, block in (("cpu", []), ("gpu", ["--block", "gpu"])):
        args = ["--runs", str(RECORDS / "paper" / part), "--page", str(page)]
        assert results.main([*args, "--figures", str(tmp_path / "docs" / "results" / part), *block]) == 0
    for part, block in (("gpu", "regimes"), ("cpu", "regimes_cpu")):
        args = ["--runs", str(RECORDS / "regimes" / part), "--page", str(page), "--block", block]
        assert regimes.main([*args, "--figures", str(tmp_path / "docs" / "results" / block)]) == 0
    assert page.read_text() == (ROOT / "docs" / "results.md").read_text()
    made = sorted(p.relative_to(tmp_path) for p in (tmp_path / "docs" / "results").rglob("*.*"))
    committed = sorted(p.relative_to(ROOT) for p in (ROOT / "docs" / "results").rglob("*.*"))
    assert made == committed and len(made) == 24
    assert [why for rel in made if (why := same_figure(tmp_path / rel, ROOT / rel))] == []
