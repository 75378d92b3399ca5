"""Multirun support: per-job thread budget, the end-of-sweep summary, and reading sweep files.

A sweep is ``python run.py -m +sweep=<name>`` where ``sweeps/<name>.yaml`` holds ``hydra.sweeper.params``
(``conf/sweep`` links to ``sweeps/``). Each job writes its own records (run.json, metrics.json); a failed job
is recorded and returns normally (``vsd.pipeline.hydra_task``), so the sweep goes on. When every job has
finished, :class:`SweepSummary` (a Hydra callback, registered in conf/config.yaml) writes
``<sweep dir>/sweep_summary.json``, prints one line per job, and exits non-zero if any job did not complete.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from vsd.records import atomic_write_json, now, run_status

REPO_ROOT = Path(__file__).resolve().parents[1]
SWEEPS_DIR = REPO_ROOT / "sweeps"
SUMMARY_FILE = "sweep_summary.json"
# Metrics copied into the summary (when a job has them); everything else stays in the job's metrics.json.
KEY_METRICS = (
    "eval/tau",
    "eval/speedup",
    "eval/tokens_per_s",
    "train/loss",
    "train/sim_tau",
    "heldout/loss",
    "run/seconds",
)


def launcher_threads() -> int | None:
    """Torch threads a multirun job may use: the CPUs its launcher gave it (None: no limit was set).

    Slurm exports ``SLURM_CPUS_PER_TASK``; submitit_local has no such variable, so the launcher config's
    ``cpus_per_task`` is read from the job's Hydra config. Parallel jobs on 2 cores then take 1 thread each
    instead of 2 each (oversubscription makes every job several times slower).
    """
    env = os.environ.get("SLURM_CPUS_PER_TASK")
    if env and env.isdigit():
        return int(env)
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if str(hc.mode).split(".")[-1].lower() != "multirun":
        return None
    cpus = OmegaConf.select(hc, "launcher.cpus_per_task", default=None)
    return int(cpus) if cpus else None


def declared_swept_keys(sweep_dir: Path) -> set[str]:
    """Keys a multirun declares swept: sweep overrides on its command line plus its sweeper's ``params`` (what
    was asked; :func:`vsd.analysis.collect.varying_keys` finds what differs between finished runs' records).

    Read from ``<sweep_dir>/multirun.yaml``, which the sweeper writes before launching any job (a job's own
    Hydra config only holds its expanded values). Empty when the file is missing.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = Path(sweep_dir) / "multirun.yaml"
    if not path.exists():
        return set()
    cfg = OmegaConf.load(path)
    keys = {str(k) for k in (OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {})}
    task = list(OmegaConf.select(cfg, "hydra.overrides.task", default=None) or [])
    try:
        parsed = OverridesParser.create().parse_overrides(task)
    except Exception:  # noqa: BLE001 - tags are a convenience; never fail a job over them
        return keys
    keys |= {o.get_key_element() for o in parsed if o.is_sweep_override()}
    return {k.lstrip("+~") for k in keys}


def swept_overrides(overrides: list[str], sweep_dir: str | Path | None) -> list[str]:
    """The job's overrides of swept keys (``loss.num_samples=8``): W&B tags. All overrides outside a sweep."""
    if not sweep_dir:
        return [o.lstrip("+~") for o in overrides]
    keys = declared_swept_keys(Path(sweep_dir))
    return [o.lstrip("+~") for o in overrides if o.lstrip("+~").split("=", 1)[0] in keys]


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job directory of a sweep: those Hydra created (``.hydra/``), whether or not the job wrote records."""
    found = {p.parent.parent for p in Path(sweep_dir).rglob(".hydra/overrides.yaml")}
    found |= {p.parent for p in Path(sweep_dir).rglob("run.json")}
    found.discard(Path(sweep_dir))  # the sweep dir's own multirun.yaml lives elsewhere; never a job
    # a multi-task job's other ranks keep their run.json inside the job dir (rank<r>/): part of that job
    found = {d for d in found if not any(p in found for p in d.parents)}

    def key(p: Path) -> tuple[int, str]:
        name = p.relative_to(sweep_dir).as_posix()
        return (int(name), name) if name.isdigit() else (sys.maxsize, name)

    return sorted(found, key=key)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def error_from_log(job_dir: Path) -> str | None:
    """The error a job printed before it died, from its ``run.log`` (vsd.records.RunLog): the last
    ``error: ...`` line, else the last line of a traceback; None when there is neither."""
    try:
        lines = [ln.strip() for ln in (Path(job_dir) / "run.log").read_text(errors="replace").splitlines()]
    except OSError:
        return None
    errors = [ln.removeprefix("error: ") for ln in lines if ln.startswith("error: ")]
    if errors:
        return errors[-1]
    if any(ln.startswith("Traceback (most recent call last)") for ln in lines):
        return next((ln for ln in reversed(lines) if ln), None)
    return None


def summarize(sweep_dir: Path) -> dict[str, Any]:
    """One row per job: dir, status (completed | failed | running | dead | missing), error, overrides, key
    metrics.

    ``missing`` means Hydra created the job dir but the job never wrote run.json (it died before starting,
    e.g. a config error or killed by the scheduler); its error comes from its run.log when it printed one.
    ``dead``: run.json says running but the process is gone or its heartbeat stopped
    (:func:`vsd.records.run_status`, which gives the reason as the error).
    """
    sweep_dir = Path(sweep_dir)
    swept = declared_swept_keys(sweep_dir)
    jobs = []
    for d in job_dirs(sweep_dir):
        run = _read_json(d / "run.json") or {}
        metrics = _read_json(d / "metrics.json") or {}
        overrides = (run.get("job") or {}).get("overrides")
        if overrides is None and (d / ".hydra" / "overrides.yaml").exists():
            overrides = list(OmegaConf.load(d / ".hydra" / "overrides.yaml"))
        status, error = run_status(run) if run else ("missing", error_from_log(d))
        jobs.append(
            {
                "dir": d.relative_to(sweep_dir).as_posix(),
                "status": status,
                "error": error,
                "overrides": overrides or [],
                "swept": [o for o in (overrides or []) if o.lstrip("+~").split("=", 1)[0] in swept],
                "wandb_run_id": run.get("wandb_run_id"),
                "metrics": {k: metrics[k] for k in KEY_METRICS if k in metrics},
            }
        )
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j["status"]] = counts.get(j["status"], 0) + 1
    return {
        "sweep_dir": str(sweep_dir),
        "written": now(),
        "num_jobs": len(jobs),
        "counts": counts,
        "jobs": jobs,
    }


def print_summary(summary: dict[str, Any], file: Any = None) -> None:
    file = file or sys.stdout
    print(f"[vsd] sweep {summary['sweep_dir']}: {summary['counts']}", file=file)
    for j in summary["jobs"]:
        ov = " ".join(j.get("swept") or j["overrides"])
        tau = j["metrics"].get("eval/tau")
        extra = f" eval/tau={tau:.3f}" if isinstance(tau, (int, float)) else ""
        err = f"  <- {j['error']}" if j["status"] != "completed" and j["error"] else ""
        print(f"  {j['dir']:>4} {j['status']:<9} {ov}{extra}{err}", file=file)


class SweepSummary(Callback):
    """Hydra callback: after the last job, write sweep_summary.json and fail the process if a job failed."""

    def __init__(self, exit_on_failure: bool = True) -> None:
        self.exit_on_failure = exit_on_failure

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        summary = summarize(sweep_dir)
        atomic_write_json(sweep_dir / SUMMARY_FILE, summary)
        print_summary(summary, file=sys.stderr)
        bad = summary["num_jobs"] - summary["counts"].get("completed", 0)
        if bad and self.exit_on_failure:
            print(
                f"[vsd] {bad} of {summary['num_jobs']} jobs did not complete; see {sweep_dir / SUMMARY_FILE}",
                file=sys.stderr,
                flush=True,
            )
            # SystemExit is not an Exception, so Hydra's callback wrapper lets it through: exit status 1.
            sys.exit(1)


# ------------------------------------------------------------------------------------------- sweep files
def sweep_files() -> list[Path]:
    """Hydra sweep files (``sweeps/*.yaml`` except the W&B agent's ``wandb_*.yaml``)."""
    return sorted(p for p in SWEEPS_DIR.glob("*.yaml") if not p.name.startswith("wandb_"))


def sweep_params(name: str) -> dict[str, str]:
    """``hydra.sweeper.params`` of ``sweeps/<name>.yaml`` as ``{key: sweep-string}``."""
    cfg = OmegaConf.load(SWEEPS_DIR / f"{name}.yaml")
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    return {str(k): str(v) for k, v in params.items()}


def header_command(path: Path) -> tuple[str, int]:
    """The command and job count that every sweep file states in its first comment lines.

    Format: after Hydra's ``# @package`` header, ``# <command>`` then ``# jobs: <N> ...``.
    """
    comments = []
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        if not line.lstrip("# ").startswith("@"):
            comments.append(line.lstrip("#").strip())
    cmd = comments[0] if comments else ""
    jobs = next((int(c.split()[1]) for c in comments if c.startswith("jobs:")), -1)
    return cmd, jobs
