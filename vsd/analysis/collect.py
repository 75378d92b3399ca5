"""Run records -> tidy pandas DataFrames (one row per run, per prompt turn, per training log step).

A run directory is any folder holding ``run.json`` (see vsd/records.py); single runs live under
``outputs/<run_name>/<timestamp>/`` and multirun jobs under ``multirun/<timestamp>/<job_num>/``; both are found
by a recursive search, and so are compacted runs (lines of a part's ``runs.jsonl.gz``, the form docs/records keeps
them in: vsd/analysis/record_store.py), which give the same rows. Folders that look like a run but cannot be
read (no or corrupt ``run.json`` / ``config.json``, a completed run without a readable ``metrics.json``) are
reported by name, as a warning and in ``df.attrs["problems"]``, and skipped. Failed and unfinished runs are
kept, marked by ``status``/``error``; a run whose run.json says ``running`` but whose process is gone or whose
heartbeat stopped is ``dead`` (vsd.records.run_status).

Columns of :func:`collect_runs`: the flattened resolved config (``loss.num_samples``, ``decoding.mode``, ...),
the run fields in :data:`RUN_COLUMNS`, and every metric of ``metrics.json`` (``eval/tau``, ...). Config
columns are the ones neither in :data:`RUN_COLUMNS` nor containing ``/``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from vsd.analysis.record_store import (  # noqa: F401  (RECORD_FILES, find_run_dirs: re-exported)
    RECORD_FILES,
    Problem,
    StoredRun,
    _as_paths,
    find_run_dirs,
    find_runs,
    open_run,
)
from vsd.records import run_status

RUN_COLUMNS = (
    "run_id",
    "run_dir",
    "status",
    "error",
    "seed",
    "git_sha",
    "git_dirty",
    "start",
    "end",
    "job_mode",
    "job_num",
    "job_overrides",
    "sweep_dir",
    "sweep",
    "device",
    "wandb_run_id",
    "method",
    "run_seconds",
)

# Loss keys that only matter for VSD: an EAGLE-3 run's values are inert defaults, so labels omit them.
VSD_ONLY_PREFIX = "loss."
EAGLE3_LOSS_KEYS = ("loss.name", "loss.ttt_steps", "loss.step_decay")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value}. Lists become JSON strings so that columns stay hashable."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            if v:
                out.update(flatten(v, key + "."))
            else:
                out[key] = None
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(list(v))
        else:
            out[key] = v
    return out


def method_label(cfg: Mapping[str, Any]) -> str:
    """Human method name from flattened config: "EAGLE-3", "VSD", "VSD −ARW −CAR", "n-gram", ...

    VSD's ablation flags (ARW, CAR, oracle filter, importance weights) appear only when switched off.
    """
    if cfg.get("decoding.drafter") == "ngram":
        return "n-gram"
    name = cfg.get("loss.name")
    if name == "eagle3":
        return "EAGLE-3"
    if name != "vsd":
        return str(name)
    off = [
        label
        for key, label in (
            ("loss.arw", "ARW"),
            ("loss.car", "CAR"),
            ("loss.oracle_filter", "filter"),
            ("loss.importance", "IS"),
        )
        if cfg.get(key) is False
    ]
    return " ".join(["VSD", *[f"−{o}" for o in off]])


def _run_id(run_dir: Path, roots: list[Path]) -> str:
    for r in roots:
        try:
            rel = run_dir.resolve().relative_to(r.resolve())
        except ValueError:
            continue
        return str(Path(r.name) / rel) if str(rel) != "." else r.name
    return str(run_dir)


def _load_run(src: StoredRun, roots: list[Path], problems: list[Problem]) -> dict[str, Any] | None:
    """One run's row, or None (and a Problem) when its records are corrupt or partial."""
    run_dir, name = src.run_dir, str(src.run_dir)
    if not src.has("run.json"):
        problems.append(Problem(name, "partial run folder: no run.json"))
        return None
    try:
        run = src.read_json("run.json")
        if not isinstance(run, dict) or "status" not in run:
            raise ValueError("run.json has no 'status'")
    except (OSError, ValueError) as e:
        problems.append(Problem(name, f"corrupt run.json ({e})"))
        return None
    try:
        config = src.read_json("config.json")
        if not isinstance(config, dict):
            raise ValueError("config.json is not an object")
    except (OSError, ValueError) as e:
        problems.append(Problem(name, f"missing or corrupt config.json ({e})"))
        return None
    metrics: dict[str, Any] = {}
    if src.has("metrics.json") or run["status"] == "completed":
        try:
            metrics = src.read_json("metrics.json")
            if not isinstance(metrics, dict):
                raise ValueError("metrics.json is not an object")
        except (OSError, ValueError) as e:
            problems.append(Problem(name, f"missing or corrupt metrics.json ({e})"))
            return None
    row = flatten(config)
    job = run.get("job") or {}
    status, error = run_status(run)  # "dead" (with the reason) for a run that died without recording it
    row.update(
        run_id=_run_id(run_dir, roots),
        run_dir=str(run_dir),
        status=status,
        error=error,
        seed=run.get("seed", config.get("seed")),
        git_sha=run.get("git_sha"),
        git_dirty=run.get("git_dirty"),
        start=run.get("start"),
        end=run.get("end"),
        job_mode=job.get("mode"),
        job_num=job.get("num"),
        job_overrides=" ".join(job.get("overrides") or []),
        sweep_dir=job.get("sweep_dir"),
        sweep=Path(job["sweep_dir"]).name if job.get("sweep_dir") else None,
        device=run.get("device"),
        wandb_run_id=run.get("wandb_run_id"),
        run_seconds=sum(float(s.get("seconds", 0)) for s in (run.get("stages") or {}).values()),
    )
    row["method"] = method_label(row)
    row.update({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))})
    return row


def _report(problems: list[Problem]) -> None:
    for p in problems:
        warnings.warn(f"skipped {p}", stacklevel=3)


def _frame(rows: list[dict[str, Any]], problems: list[Problem]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df.attrs["problems"] = list(problems)
    return df


def collect_runs(paths: str | Path | Iterable[str | Path], warn: bool = True) -> pd.DataFrame:
    """One row per run found under ``paths``: flattened config + run.json fields + metrics.json.

    Runs are sorted by run_id. Unreadable folders are skipped and listed in ``df.attrs["problems"]``
    (a list of :class:`Problem`), and warned about unless ``warn=False``.
    """
    roots = _as_paths(paths)
    problems: list[Problem] = []
    rows = [r for src in find_runs(roots, problems) if (r := _load_run(src, roots, problems)) is not None]
    if warn:
        _report(problems)
    df = _frame(rows, problems)
    return df.sort_values("run_id", ignore_index=True) if len(df) else df


def config_columns(df: pd.DataFrame) -> list[str]:
    """Columns that come from the resolved config."""
    return [c for c in df.columns if c not in RUN_COLUMNS and "/" not in c]


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Numeric metric columns (namespaced keys such as ``eval/tau``)."""
    return [c for c in df.columns if "/" in c and pd.api.types.is_numeric_dtype(df[c])]


# Keys that differ between runs of one sweep without being a condition of the experiment.
NOT_SWEPT = ("seed", "run_name", "notes", "threads", "device")
NOT_SWEPT_PREFIX = ("paths.", "tracker.", "extra.")


def varying_keys(df: pd.DataFrame) -> list[str]:
    """Config columns whose value varies between runs (seeds and paths excluded): the experiment's factors, as
    the records show them (:func:`vsd.sweep.declared_swept_keys` reads what a sweep declared).
    A key missing from some records (added to the config after they were written) varies only if the runs
    that have it disagree."""
    keys = []
    for c in config_columns(df):
        if c in NOT_SWEPT or c.startswith(NOT_SWEPT_PREFIX):
            continue
        if df[c].dropna().astype(str).nunique() > 1:
            keys.append(c)
    return keys


def _side_rows(
    paths: str | Path | Iterable[str | Path], filename: str, warn: bool, key_cols: Iterable[str] | None
) -> pd.DataFrame:
    runs = collect_runs(paths, warn=False)
    problems: list[Problem] = list(runs.attrs.get("problems", []))
    if not len(runs):
        if warn:
            _report(problems)
        return _frame([], problems)
    cols = ["run_id", "method", "seed", "status", *(key_cols if key_cols is not None else varying_keys(runs))]
    rows: list[dict[str, Any]] = []
    for _, run in runs.iterrows():
        src = open_run(run["run_dir"])
        if not src.has(filename):
            continue
        ident = {c: run[c] for c in cols if c in runs.columns}
        for i, r in enumerate(src.read_jsonl(filename, problems)):
            rows.append({**ident, "line": i, **flatten(r)})
    if warn:
        _report(problems)
    return _frame(rows, problems)


def collect_prompts(
    paths: str | Path | Iterable[str | Path], warn: bool = True, keys: Iterable[str] | None = None
) -> pd.DataFrame:
    """One row per prompt turn from every run's ``eval.jsonl`` (nested fields flattened: ``spec.new_tokens``).

    Each row carries run_id, method, seed, status and the run's config ``keys`` (default: the swept keys).
    """
    return _side_rows(paths, "eval.jsonl", warn, keys)


def collect_train_logs(
    paths: str | Path | Iterable[str | Path], warn: bool = True, keys: Iterable[str] | None = None
) -> pd.DataFrame:
    """One row per logged training step from every run's ``train_log.jsonl`` (``step``, ``train/loss``, ...)."""
    return _side_rows(paths, "train_log.jsonl", warn, keys)


def collect_wandb(project: str, group: str | None = None, tags: Iterable[str] | None = None) -> pd.DataFrame:
    """The same per-run columns as :func:`collect_runs`, read through ``wandb.Api()`` (online users only).

    ``project`` is ``"entity/project"`` or ``"project"`` (then $WANDB_ENTITY / your default entity).
    Runs are filtered by W&B group and by tags (all must match). NOTE: untested offline (no network in CI);
    the local-records path is the tested one. Config, summary metrics, state and commit map onto the
    local columns; W&B states finished/failed/crashed/running become completed/failed/failed/running.
    """
    import wandb

    filters: dict[str, Any] = {}
    if group:
        filters["group"] = group
    if tags:
        filters["tags"] = {"$all": list(tags)}
    status = {"finished": "completed", "failed": "failed", "crashed": "failed", "killed": "failed"}
    rows = []
    for r in wandb.Api().runs(project, filters=filters):
        row = flatten({k: v for k, v in r.config.items() if not k.startswith("_")})
        row.update(
            run_id=f"wandb:{r.path[-1] if isinstance(r.path, list) else r.id}",
            run_dir=r.url,
            status=status.get(r.state, r.state),
            error=None,
            seed=row.get("seed"),
            git_sha=getattr(r, "commit", None),
            sweep=r.group,
            wandb_run_id=r.id,
        )
        row["method"] = method_label(row)
        summary = dict(r.summary._json_dict) if hasattr(r.summary, "_json_dict") else dict(r.summary)
        row.update({k: v for k, v in summary.items() if "/" in k and isinstance(v, (int, float))})
        rows.append(row)
    return _frame(rows, [])
