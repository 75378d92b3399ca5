"""Where a run's records live: its raw run folder, or one line of a part's compact ``runs.jsonl.gz``.

``python run.py`` writes a run's records into its run folder (vsd/records.py). The repo keeps them compact
(docs/records/README.md), one folder per experiment *part* (a sweep folder, or a single run's folder):

- ``runs.jsonl.gz``: one line per run, ``{"path": <run folder relative to the part>, "files": {<name>: <content>}}``,
  gzip-compressed (per-prompt eval rows compress ~6x, and the repo travels to the GPU machine whole; written
  with no timestamp, so the same runs give the same bytes with the same zlib). A plain ``runs.jsonl`` (parts
  written by earlier versions) is read the same way
  holding the run's record files: ``run.json`` (provenance: git SHA, dirty flag, versions, machine, seed, dates,
  status), ``config.json`` (the resolved config), ``metrics.json``, ``data_card.json``, ``eval.jsonl`` (the
  per-prompt rows), ``train_log.jsonl``, ``run.log``, ...
- ``part.json``: the part's other files by relative path (``sweep_summary.json``, ``multirun.yaml``, Optuna's
  ``optimization_results.yaml``, submitit's job logs) and a count of the files that were dropped.
- ``trials.jsonl`` (only where the part holds an Optuna ``study.db``): one line per trial (study, number,
  state, values, params, dates).

Contents: ``.json``/``.yaml`` parsed, ``.jsonl`` the list of its rows (a torn line is dropped, with a note),
logs as text with carriage-return redraws (progress bars) collapsed to the line a terminal showed. Dropped:
weights, pickles (submitit's), Hydra's ``.hydra/`` copies (``config.json`` is the resolved config, ``run.json``
has the overrides), W&B folders, empty files. A compacted run's ``run_dir`` is ``<part>/<path>``, the folder it
was compacted from (it need not exist); :class:`StoredRun` reads a run's files in either form.

    python -m vsd.analysis.keep SRC DST            # SRC's runs -> the compact part DST (scripts/keep_records.sh)
    python -m vsd.analysis.keep --expand PART DST  # the inverse: raw run folders (JSON re-indented)
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import re
import shutil
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

RUNS_FILE, PART_FILE, TRIALS_FILE = "runs.jsonl.gz", "part.json", "trials.jsonl"
# what a part's runs file may be called: the plain one is from older parts
RUNS_FILES = (RUNS_FILE, "runs.jsonl")


def runs_file(part: Path) -> Path | None:
    """The part folder's runs file, or None when it is not a compact part."""
    return next((part / n for n in RUNS_FILES if (part / n).is_file()), None)


FORMAT = 1  # part.json's "format": bump when the layout above changes

# Record files whose presence marks a folder as (a piece of) a run directory.
RANK_DIR = re.compile(r"rank[0-9]+")  # vsd.pipeline: the records of DDP rank N > 0
RECORD_FILES = ("run.json", "config.json", "metrics.json", "eval.jsonl", "train_log.jsonl")
# Folders that are never kept: Hydra's config copies, W&B's offline runs, draft weights, caches.
SKIP_DIRS = (".hydra", "wandb", "draft", "__pycache__")
TEXT_SUFFIXES = (".log", ".out", ".err", ".txt", ".md", ".csv", ".py")
# A run's files in this order first (the small ones a reader looks at), then the rest by name, logs last.
FILE_ORDER = ("run.json", "config.json", "metrics.json", "data_card.json")


class RecordError(ValueError):
    """Records that cannot be compacted (missing folder, unreadable file): the message names it."""


@dataclass(frozen=True)
class Problem:
    """A folder or line that looked like a run record but could not be read."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_jsonl(path: Path, problems: list[Problem]) -> list[dict[str, Any]]:
    """Rows of a JSONL file; an unreadable line (e.g. a half-written last line) is reported and skipped."""
    rows = []
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        try:
            for i, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    problems.append(Problem(f"{path}:{i}", f"corrupt JSONL line skipped ({e.msg})"))
                    continue
                if isinstance(row, dict):
                    rows.append(row)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # a truncated or corrupt compressed file
            problems.append(Problem(str(path), f"unreadable compressed data ({e}); kept the rows before it"))
    return rows


def _as_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def find_run_dirs(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Every raw folder under ``paths`` (recursively, itself included) that holds any run-record file."""
    found: set[Path] = set()
    for root in _as_paths(paths):
        if not root.exists():
            raise FileNotFoundError(f"runs folder not found: {root}")
        for name in RECORD_FILES:
            for f in root.rglob(name):
                # Hydra's own folder and W&B's offline folders hold no vsd records.
                if not any(part in (".hydra", "wandb") for part in f.relative_to(root).parts[:-1]):
                    found.add(f.parent)
    # Folders inside a run directory (the draft checkpoint's config.json, a DDP rank's rank<N>/run.json) belong
    # to that run, unless they are runs of their own (a T=1 eval of a regime arm's draft in <arm run>/t1).
    runs = {d for d in found if (d / "run.json").is_file() and not RANK_DIR.fullmatch(d.name)}
    return sorted(d for d in found if d in runs or not any(p in runs for p in d.parents))


@dataclass(frozen=True, eq=False)
class StoredRun:
    """One run's record files: a raw run folder (``files is None``) or a compacted line of ``runs.jsonl``."""

    run_dir: Path
    files: Mapping[str, Any] | None = None

    def has(self, name: str) -> bool:
        return (self.run_dir / name).is_file() if self.files is None else name in self.files

    def read_json(self, name: str) -> Any:
        """A JSON file's value; raises OSError / ValueError as reading the raw file would."""
        if self.files is None:
            return _read_json(self.run_dir / name)
        if name not in self.files:
            raise FileNotFoundError(f"{name} is not in the compacted run {self.run_dir}")
        return self.files[name]

    def read_jsonl(self, name: str, problems: list[Problem]) -> list[dict[str, Any]]:
        if self.files is None:
            return read_jsonl(self.run_dir / name, problems)
        rows = self.files.get(name)
        if not isinstance(rows, list):
            problems.append(Problem(f"{self.run_dir}/{name}", "compacted rows are not a list: skipped"))
            return []
        return [r for r in rows if isinstance(r, dict)]


def read_part(runs_file: Path, problems: list[Problem]) -> list[StoredRun]:
    """The runs of one compact runs file; a line without ``path``/``files`` is reported and skipped."""
    out = []
    for i, row in enumerate(read_jsonl(runs_file, problems), 1):
        if not isinstance(row.get("path"), str) or not isinstance(row.get("files"), dict):
            problems.append(Problem(f"{runs_file}:{i}", "compacted run without 'path'/'files' skipped"))
            continue
        out.append(StoredRun(runs_file.parent / row["path"], row["files"]))
    return out


def find_runs(paths: str | Path | Iterable[str | Path], problems: list[Problem]) -> list[StoredRun]:
    """Every run under ``paths``, raw folders and compacted lines alike, in path order (as if all were raw)."""
    roots = _as_paths(paths)
    raw = [StoredRun(d) for d in find_run_dirs(roots)]
    seen = {d.run_dir for d in raw}
    compact = []
    for root in roots:
        for part in sorted({f.parent for name in RUNS_FILES for f in root.rglob(name)}):
            f = runs_file(part)
            if all((part / n).is_file() for n in RUNS_FILES):
                problems.append(
                    Problem(str(part), f"holds {' and '.join(RUNS_FILES)}; read {RUNS_FILE} only")
                )
            for r in read_part(f, problems):
                if r.run_dir in seen:  # the raw folder is still there: it wins
                    continue
                seen.add(r.run_dir)
                compact.append(r)
    return sorted(raw + compact, key=lambda r: r.run_dir)


@functools.lru_cache(maxsize=16)
def _part_index(runs_file: str, mtime_ns: int, size: int) -> dict[str, StoredRun]:
    return {
        Path(r.run_dir).relative_to(Path(runs_file).parent).as_posix(): r
        for r in read_part(Path(runs_file), [])
    }


def open_run(run_dir: str | Path) -> StoredRun:
    """A run by its ``run_dir`` (a frame's column): its raw folder, or its line in the part's runs file."""
    d = Path(run_dir)
    if not (d / "run.json").is_file():
        for parent in (d, *d.parents):
            if (f := runs_file(parent)) is not None:
                st = f.stat()
                run = _part_index(str(f), st.st_mtime_ns, st.st_size).get(d.relative_to(parent).as_posix())
                if run is not None:
                    return run
    if d.is_dir():
        return StoredRun(d)
    raise FileNotFoundError(f"{run_dir}: no run folder and no compacted record of it")


# --- compaction -----------------------------------------------------------------------------------------------


def collapse_redraws(text: str) -> str:
    """Each line as a terminal showed it: the part after its last carriage return (tqdm's redraws)."""
    return "\n".join(line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n"))


_DROP = object()


def _content(path: Path, problems: list[Problem]) -> Any:
    """A file's kept content, or _DROP. Unparseable JSON/YAML is an error (it would be lost silently)."""
    suffix = path.suffix
    try:
        if suffix == ".json":
            return _read_json(path)
        if suffix in (".yaml", ".yml"):
            return yaml.safe_load(path.read_text())
    except (ValueError, OSError, yaml.YAMLError) as e:
        raise RecordError(f"{path}: cannot read ({type(e).__name__})") from None
    if suffix == ".jsonl":
        return read_jsonl(path, problems)
    if suffix in TEXT_SUFFIXES:
        return collapse_redraws(path.read_bytes().decode("utf-8", errors="replace"))
    return _DROP


def optuna_trials(db: Path, rel: str) -> list[dict[str, Any]]:
    """Every trial of every study in an Optuna SQLite file, as plain rows (values and params)."""
    import optuna  # the sweeper's (hydra-optuna-sweeper); imported only when a part holds a study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db.resolve()}"
    rows = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for t in study.get_trials(deepcopy=False):
            rows.append(
                {
                    "db": rel,
                    "study": summary.study_name,
                    "directions": [d.name for d in study.directions],
                    "number": t.number,
                    "state": t.state.name,
                    "values": t.values,
                    "params": t.params,
                    "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
                    "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
                    "user_attrs": t.user_attrs,
                }
            )
    return rows


@dataclass
class Compacted:
    """What :func:`compact` kept and dropped."""

    dst: Path
    runs: int = 0
    kept: int = 0
    trials: int = 0
    dropped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        drop = ", ".join(f"{n} {k}" for k, n in sorted(self.dropped.items())) or "nothing"
        extra = f", {self.trials} Optuna trials" if self.trials else ""
        return f"kept {self.runs} run records in {self.dst} ({self.kept} files{extra}; dropped: {drop})"


def _file_key(name: str) -> tuple[int, str]:
    if name in FILE_ORDER:
        return FILE_ORDER.index(name), ""
    return (len(FILE_ORDER) + (1 if name.endswith((".jsonl", ".log", ".out", ".err")) else 0), name)


def _walk(src: Path) -> Iterable[tuple[Path, str | None]]:
    """Every file under src (sorted), with the skipped folder it lies in (or None)."""
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        skip = next((p for p in Path(dirpath).relative_to(src).parts if p in SKIP_DIRS), None)
        for name in sorted(filenames):
            yield Path(dirpath) / name, skip


def compact(src: str | Path, dst: str | Path) -> Compacted:
    """Write the runs under ``src`` (a sweep folder, a run folder, a folder of either) as the compact part
    ``dst``, replacing it. ``dst`` may be ``src`` itself (in-place conversion: the raw files are removed).
    Nothing is written when a file cannot be read (RecordError names it)."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise RecordError(f"{src}: no such folder")
    if dst.exists() and dst.resolve() != src.resolve():
        if not dst.is_dir() or (any(dst.iterdir()) and runs_file(dst) is None):
            raise RecordError(f"{dst}: exists and is not a compact records folder; not replacing it")
    if already := next((f for name in RUNS_FILES for f in src.rglob(name)), None):
        raise RecordError(f"{already}: {src} holds compact records already; compact raw run folders only")
    run_dirs = [d for d in find_run_dirs(src) if (d / "run.json").is_file()]
    if not run_dirs:
        raise RecordError(f"{src}: no run records (no run.json below it)")
    out = Compacted(dst)
    problems: list[Problem] = []
    runs: dict[Path, dict[str, Any]] = {d: {} for d in run_dirs}
    part: dict[str, Any] = {}
    trials: list[dict[str, Any]] = []
    for f, skipped in _walk(src):
        owner = next((d for d in (f.parent, *f.parent.parents) if d in runs), None)
        rel = f.relative_to(owner if owner is not None else src).as_posix()
        if skipped:
            out.dropped[skipped + "/"] += 1
        elif f.suffix == ".db" and owner is None:
            try:
                trials += optuna_trials(f, rel)
            except Exception as e:  # sqlalchemy/optuna errors: not an Optuna study, or a corrupt one
                raise RecordError(f"{f}: cannot read it as an Optuna study ({type(e).__name__})") from None
            out.kept += 1
        elif f.stat().st_size == 0:
            out.dropped["empty"] += 1
        elif (content := _content(f, problems)) is _DROP:
            out.dropped[f.suffix or f.name] += 1
        else:
            (runs[owner] if owner is not None else part)[rel] = content
            out.kept += 1
    out.notes += [str(p) for p in problems]
    out.runs, out.trials = len(runs), len(trials)

    # written beside dst, then swapped in: an error leaves dst as it was
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with io.TextIOWrapper(gzip.GzipFile(tmp / RUNS_FILE, "wb", mtime=0), encoding="utf-8") as fh:
            for d, files in runs.items():
                row = {
                    "path": d.relative_to(src).as_posix(),
                    "files": {k: files[k] for k in sorted(files, key=_file_key)},
                }
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        meta = {"format": FORMAT, "dropped": dict(sorted(out.dropped.items())), "files": part}
        (tmp / PART_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        if trials:
            with open(tmp / TRIALS_FILE, "w", encoding="utf-8") as fh:
                fh.writelines(json.dumps(t, ensure_ascii=False) + "\n" for t in trials)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)
    return out


def expand(part: str | Path, dst: str | Path) -> int:
    """Write a compact part back as raw run folders under ``dst`` (JSON re-indented); returns the run count."""
    part, dst = Path(part), Path(dst)
    if (f := runs_file(part)) is None:
        raise RecordError(f"{part}: no {RUNS_FILE} (not a compact records folder)")
    problems: list[Problem] = []
    runs = read_part(f, problems)
    meta = _read_json(part / PART_FILE) if (part / PART_FILE).is_file() else {}
    files = [(dst / rel, c) for rel, c in meta.get("files", {}).items()]
    for r in runs:
        files += [(dst / r.run_dir.relative_to(part) / name, c) for name, c in (r.files or {}).items()]
    for path, content in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".jsonl":
            text = "".join(json.dumps(row) + "\n" for row in content)
        elif path.suffix in (".json", ".yaml", ".yml"):  # YAML as JSON: a YAML parser reads it back
            text = json.dumps(content, indent=2) + "\n"
        else:
            text = content
        path.write_text(text, encoding="utf-8")
    return len(runs)
