"""Run records: the source of truth for analysis (W&B offline runs cannot be read back).

Every run directory holds ``.hydra/`` (Hydra), ``run.json`` (identity, provenance, status, stage timings),
``metrics.json`` (final scalar metrics; written once, atomically, only on success) and per-stage JSONL logs.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "transformers", "hydra-core", "omegaconf", "wandb", "numpy", "pandas", "vsd")
REPO_ROOT = Path(__file__).resolve().parents[1]


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row, default=_json_default) + "\n")


@functools.cache
def git_info(root: Path = REPO_ROOT) -> dict[str, Any]:
    """SHA and dirty flag of the code this process runs, read once: a multirun in one process (basic launcher)
    keeps the modules it imported at its first job, so a commit made while it runs must not relabel later jobs.
    """

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD") or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        sha, dirty = None, None
    return {"git_sha": sha, "git_dirty": dirty}


@functools.cache
def code_digest(root: Path = REPO_ROOT) -> str:
    """sha256 over the code and configs (``vsd/**/*.py``, ``conf/**/*.yaml``, ``run.py``), read once per process.
    Identifies the code exactly where the git SHA cannot: an uncommitted tree, or a copy whose git metadata lags
    (a lent GPU machine). Compare with ``python -c "from vsd.records import code_digest; print(code_digest())"``
    at a checkout."""
    h = hashlib.sha256()
    files = sorted([*root.glob("vsd/**/*.py"), *root.glob("conf/**/*.yaml"), root / "run.py"])
    for f in files:
        if f.is_file():
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def machine_info() -> dict[str, Any]:
    import torch

    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class RunRecord:
    """Writes ``run.json`` on every state change; ``metrics.json`` only once the run has succeeded."""

    def __init__(self, run_dir: Path, seed: int, config: dict[str, Any], job: dict[str, Any] | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {
            "status": "running",
            "run_dir": str(self.dir),
            "seed": seed,
            "start": now(),
            "end": None,
            "stages": {},
            "error": None,
            "job": job or {},
            **git_info(),
            "code_digest": code_digest(),
            "versions": package_versions(),
            "machine": machine_info(),
        }
        # A resumed run (same dir) must not keep stale results of an earlier attempt.
        (self.dir / "metrics.json").unlink(missing_ok=True)
        atomic_write_json(self.dir / "config.json", config)
        self.flush()

    def flush(self) -> None:
        atomic_write_json(self.dir / "run.json", self.data)

    def stage(self, name: str, seconds: float, **extra: Any) -> None:
        self.data["stages"][name] = {"seconds": round(seconds, 3), **extra}
        self.flush()

    def update(self, **kw: Any) -> None:
        self.data.update(kw)
        self.flush()

    def succeed(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.dir / "metrics.json", metrics)
        self.data.update(status="completed", end=now())
        self.flush()

    def fail(self, error: BaseException | str) -> None:
        self.data.update(
            status="failed",
            end=now(),
            error=f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error),
        )
        self.flush()
