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

import contextlib
import datetime as _dt
import fcntl
import functools
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from vsd.errors import UserError

PACKAGES = ("torch", "transformers", "hydra-core", "omegaconf", "wandb", "numpy", "pandas", "vsd")
REPO_ROOT = Path(__file__).resolve().parents[1]
LOCK_FILE = ".run.lock"
HEARTBEAT_SECONDS = 30.0  # run.json's heartbeat period while a run lives
STALE_BEATS = 4  # a running run whose heartbeat is older than this many periods is dead


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """A fresh temp file beside ``path`` for the block to write; fsync'd and renamed onto ``path`` when the
    block ends, removed if it raises: a reader never sees a partial file under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


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


def now(precise: bool = False) -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds" if precise else "seconds")


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
    """Writes ``run.json`` on every state change; ``metrics.json`` only once the run has succeeded.

    While the run lives a daemon thread rewrites ``heartbeat`` (UTC time) every ``heartbeat_s`` seconds, and
    ``pid``, ``pid_start`` and ``hostname`` name the process, so a reader can tell a run that died without
    recording it (SIGKILL, the OOM killer, a lost node) from a running one: :func:`run_status`.
    """

    def __init__(
        self,
        run_dir: Path,
        seed: int,
        config: dict[str, Any],
        job: dict[str, Any] | None = None,
        heartbeat_s: float = HEARTBEAT_SECONDS,
    ):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {
            "status": "running",
            "run_dir": str(self.dir),
            "pid": os.getpid(),
            "pid_start": process_start_time(os.getpid()),
            "hostname": platform.node(),
            "heartbeat": now(precise=True),
            "heartbeat_every": heartbeat_s,
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
        self._mu = threading.RLock()  # the heartbeat thread writes run.json too
        self._stop = threading.Event()
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
        self._beat = threading.Thread(target=self._heartbeat, args=(heartbeat_s,), name="vsd-heartbeat")
        self._beat.daemon = True
        self._beat.start()

    def _heartbeat(self, every: float) -> None:
        while not self._stop.wait(every):
            with self._mu:
                if self.data["status"] != "running":
                    return
                self.data["heartbeat"] = now(precise=True)
                try:
                    self.flush()
                except OSError as e:  # a full disk must not kill the run; the next beat tries again
                    print(f"[vsd] heartbeat: cannot write {self.dir / 'run.json'} ({e})", file=sys.stderr)

    def flush(self) -> None:
        with self._mu:
            atomic_write_json(self.dir / "run.json", self.data)

    def close(self) -> None:
        """Stop the heartbeat and release the run dir (the process's exit would too)."""
        self._stop.set()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def stage(self, name: str, seconds: float, **extra: Any) -> None:
        with self._mu:
            self.data["stages"][name] = {"seconds": round(seconds, 3), **extra}
            self.flush()

    def update(self, **kw: Any) -> None:
        with self._mu:
            self.data.update(kw)
            self.flush()

    def succeed(self, metrics: dict[str, Any]) -> None:
        atomic_write_json(self.dir / "metrics.json", metrics)
        with self._mu:
            self.data.update(status="completed", end=now())
            self.flush()

    def fail(self, error: BaseException | str) -> None:
        with self._mu:
            self.data.update(
                status="failed",
                end=now(),
                error=f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error),
            )
            self.flush()


# ------------------------------------------------------------------------------------------- liveness
def _alive(pid: int, started: float | None) -> bool:
    """Whether process ``pid`` on this host still runs and is the one that started at ``started``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False  # a zombie: dead, its parent has not reaped it yet
    except (OSError, IndexError):
        pass
    now_started = process_start_time(pid)
    # a pid the kernel handed to a new process since
    return not (started and now_started and abs(now_started - started) > 2)


def run_status(run: dict[str, Any], host: str | None = None) -> tuple[str | None, str | None]:
    """(status, error) a reader should report for a ``run.json``: its own, except ``dead`` for a run that
    says ``running`` but whose process is gone (same host: pid check) or whose heartbeat is older than
    ``STALE_BEATS`` intervals (any host). Records older than the heartbeat cannot be told and stay ``running``.
    """
    status, error = run.get("status"), run.get("error")
    if status != "running":
        return status, error
    pid, hostname = run.get("pid"), run.get("hostname")
    if pid and hostname == (host or platform.node()) and not _alive(int(pid), run.get("pid_start")):
        return "dead", f"process {pid} on {hostname} is gone without recording an end (killed?)"
    try:
        beat = _dt.datetime.fromisoformat(run["heartbeat"]).timestamp()
        every = float(run.get("heartbeat_every") or HEARTBEAT_SECONDS)
    except (KeyError, TypeError, ValueError):
        return status, error
    age = time.time() - beat
    if age > STALE_BEATS * every:
        return "dead", f"no heartbeat for {age:.0f} s (last {run['heartbeat']}, every {every:g} s)"
    return status, error


# ------------------------------------------------------------------------------------------- run.log
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _last_state(line: str) -> str:
    """What a terminal shows for a line redrawn with carriage returns (a progress bar): its last state."""
    parts = [p for p in line.split("\r") if p.strip()]
    return parts[-1] if parts else ""


class RunLog:
    """Copies what the process prints (``sys.stdout``, ``sys.stderr``) into the run's log file as well.

    The project reports with ``print`` and tqdm, so Hydra's job log (``run.log``, logging records only) stayed
    empty. Lines are appended whole (Hydra's file handler appends to the same file); a progress bar's
    carriage-return redraws collapse to their last state and terminal colour codes are dropped.
    Use as a context manager; :meth:`retarget` moves the copy to another file (a rank's own run dir).
    """

    def __init__(self, path: Path):
        self._mu = threading.Lock()
        self._fh: Any = None
        self._pending = ""
        self.path = Path(path)
        self.retarget(path)

    def retarget(self, path: Path) -> None:
        with self._mu:
            self._close_file()
            self.path = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, text: str) -> None:
        with self._mu:
            if self._fh is None:
                return
            *lines, rest = _ANSI.sub("", self._pending + text).split("\n")
            for line in lines:
                self._fh.write(_last_state(line) + "\n")
            cut = rest.rfind("\r", 0, len(rest) - 1)  # keep only the bar's latest redraw pending
            self._pending = rest[cut:] if cut > 0 else rest
            if lines:
                self._fh.flush()

    def flush(self) -> None:
        with self._mu:
            if self._fh is not None:
                self._fh.flush()

    def _close_file(self) -> None:
        if self._fh is not None:
            if _last_state(self._pending):
                self._fh.write(_last_state(self._pending) + "\n")
            self._pending = ""
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        with self._mu:
            self._close_file()

    def __enter__(self) -> RunLog:
        self._saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, self), _Tee(sys.stderr, self)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = self._saved
        self.close()


class _Tee:
    """A text stream that writes to ``stream`` and to a :class:`RunLog`; everything else is ``stream``'s
    (``isatty``, ``fileno``, ``encoding``: tqdm and rich still see the terminal)."""

    def __init__(self, stream: Any, log: RunLog):
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        n = self._stream.write(text)
        self._log.write(text)
        return n

    def flush(self) -> None:
        self._stream.flush()
        self._log.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
