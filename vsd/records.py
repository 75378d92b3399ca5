"""Run records: the source of truth for analysis (W&B offline runs cannot be read back).

Every run directory holds ``.hydra/`` (Hydra), ``run.json`` (identity, provenance, status, stage timings),
``metrics.json`` (final scalar metrics; written once, atomically, only on success) and per-stage JSONL logs.

A run dir belongs to one live run at a time: :class:`RunRecord` holds an exclusive ``flock`` on
``<run dir>/.run.lock`` while the run lives (the kernel drops it when the process dies, even by SIGKILL), and
refuses a dir another live run holds. A later run in the same dir (a rerun of the same command, how an
interrupted run resumes) takes it over. Default dir names carry the pid (:func:`run_stamp`), so runs started
in the same second never meet.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import functools
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from vsd.errors import UserError

PACKAGES = ("torch", "transformers", "hydra-core", "omegaconf", "wandb", "numpy", "pandas", "vsd")
REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK_FILE = ".run.lock"


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


def process_start_time(pid: int) -> float | None:
    """Unix time at which process ``pid`` started (Linux ``/proc``), or None where that cannot be read."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22
        btime = next(ln for ln in Path("/proc/stat").read_text().splitlines() if ln.startswith("btime "))
        return int(btime.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def run_stamp() -> str:
    """``<YYYY-mm-dd_HH-MM-SS>_<pid>``: the default run and sweep dir name (``${run_stamp:}``, conf/config.yaml).

    The pid keeps two runs started in the same second on one host apart. Under torchrun every rank names the
    dir after the agent (its parent process) and the agent's start time, so the local ranks agree on one dir
    (ranks on several nodes still need an explicit ``hydra.run.dir``, docs/gpu.md).
    """
    pid, t = os.getpid(), time.time()
    if "TORCHELASTIC_RUN_ID" in os.environ:
        pid = os.getppid()
        t = process_start_time(pid) or t
    return f"{_dt.datetime.fromtimestamp(t):%Y-%m-%d_%H-%M-%S}_{pid}"


def _lock(run_dir: Path, create: bool) -> int | None:
    """An fd holding ``<run_dir>/.run.lock`` exclusively, or None if another process holds it (or, without
    ``create``, there is no lock file)."""
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def holder(run_dir: Path) -> str | None:
    """Who holds ``run_dir``: ``"pid N on HOST since START"`` for a live run, None when the dir is free."""
    run_dir = Path(run_dir)
    if not (run_dir / LOCK_FILE).exists():
        return None
    fd = _lock(run_dir, create=False)
    if fd is not None:
        os.close(fd)  # we got it: nobody holds it
        return None
    try:
        run = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        run = {}
    return f"pid {run.get('pid', '?')} on {run.get('hostname', '?')} since {run.get('start', '?')}"


class RunRecord:
    """Writes ``run.json`` on every state change; ``metrics.json`` only once the run has succeeded."""

    def __init__(self, run_dir: Path, seed: int, config: dict[str, Any], job: dict[str, Any] | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {
            "status": "running",
            "run_dir": str(self.dir),
            "pid": os.getpid(),
            "hostname": platform.node(),
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
        self._lock_fd = _lock(self.dir, create=True)
        if self._lock_fd is None:
            raise UserError(
                f"hydra.run.dir: {self.dir} is in use by a running run ({holder(self.dir)}); "
                "wait for it to end or choose another hydra.run.dir"
            )
        try:
            # A resumed run (same dir) must not keep stale results of an earlier attempt.
            (self.dir / "metrics.json").unlink(missing_ok=True)
            atomic_write_json(self.dir / "config.json", config)
            self.flush()
        except BaseException:
            self.close()
            raise

    def flush(self) -> None:
        atomic_write_json(self.dir / "run.json", self.data)

    def close(self) -> None:
        """Release the run dir (the process's exit would too)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

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
