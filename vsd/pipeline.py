"""One run: validated config -> seed -> build -> stages (data, features, train, eval) -> records.

Stages are plain functions ``run(ctx) -> dict[str, float]`` living beside the code they drive; the metrics
they return are merged into ``metrics.json``. Artifacts passed between stages go through ``ctx.artifacts``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vsd.config import Config, to_config
from vsd.errors import UserError
from vsd.records import RunLog, RunRecord
from vsd.runtime import (
    DistInfo,
    init_distributed,
    local_device,
    resolve_device,
    resolve_precision,
    set_seed,
    set_threads,
    usable_cpus,
)
from vsd.sweep import launcher_threads, swept_overrides
from vsd.tracking import Tracker, make_tracker

STAGE_FUNCS = {
    "data": "vsd.data.stage:run",
    "features": "vsd.features.stage:run",
    "train": "vsd.train.stage:run",
    "eval": "vsd.evaluation.stage:run",
}


@dataclass
class RunContext:
    cfg: Config
    run_dir: Path
    cache_dir: Path
    device: str
    tracker: Tracker
    record: RunRecord
    dist: DistInfo = field(default_factory=DistInfo)  # this process's rank (``device`` is its own device)
    artifacts: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    _target: Any = None

    @property
    def target(self):
        """The frozen target, loaded on first use (stages that need no model never pay for it)."""
        if self._target is None:
            from vsd.models.target import load_target

            t0 = time.time()
            self._target = load_target(self.cfg.model, self.cache_dir, self.device, self.cfg.dtype)
            self.record.update(target_load_seconds=round(time.time() - t0, 3))
        return self._target


def stage_function(name: str) -> Callable[[RunContext], dict[str, Any]]:
    mod, fn = STAGE_FUNCS[name].split(":")
    return getattr(importlib.import_module(mod), fn)


def _job_info() -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    mode = str(hc.mode).split(".")[-1].lower() if hc.mode is not None else "run"
    info = {"mode": mode, "num": hc.job.get("num"), "overrides": list(hc.overrides.task)}
    if mode == "multirun":
        info["sweep_dir"] = hc.sweep.dir
    return info


def _swept_tags(job: dict[str, Any]) -> list[str]:
    # In a multirun only the swept keys' values (vsd/sweep.py); a single run is tagged with its overrides.
    return swept_overrides(job.get("overrides", []), job.get("sweep_dir"))


def execute(dcfg: DictConfig, run_dir: Path | None = None, log: RunLog | None = None) -> dict[str, Any]:
    """Run the configured stages; returns the final metrics. Records failure before re-raising.

    ``log``: the process's output copy (run.log); a rank other than 0 moves it into its own folder.
    """
    cfg = to_config(dcfg)
    run_dir = Path(run_dir or cfg.paths.output_dir or ".")
    job = _job_info()
    # Under torchrun every rank runs this function: rank 0 owns the records, the tracker and evaluation;
    # the other ranks keep their own run.json in a sub-folder (analysis ignores folders inside a run). The
    # process group is joined here, once; the stages read the rank and device from the run context.
    dist_info = init_distributed(resolve_device(cfg.device))
    if not dist_info.main:
        run_dir = run_dir / f"rank{dist_info.rank}"
        if log is not None:
            log.retarget(run_dir / "run.log")
    # A multirun job takes the CPUs its launcher gave it (cpus_per_task), not every core (vsd/sweep.py).
    threads = set_threads(cfg.threads if cfg.threads is not None else launcher_threads())
    seed = set_seed(cfg.seed)
    resolved = OmegaConf.to_container(dcfg, resolve=True)
    record = RunRecord(run_dir, seed, resolved, job)
    tracker: Tracker | None = None
    ok = False
    try:
        record.update(threads=threads, usable_cpus=usable_cpus())
        device = local_device(resolve_device(cfg.device), dist_info)
        record.update(device=device, world_size=dist_info.world, rank=dist_info.rank)
        # dtype=auto and train.bf16_autocast=auto become values here, once: every stage (and every cache key)
        # sees what this hardware runs, and run.json says why
        precision = resolve_precision(cfg.dtype, cfg.train.bf16_autocast, cfg.model.source, device)
        cfg = dataclasses.replace(
            cfg,
            dtype=precision.dtype,
            train=dataclasses.replace(cfg.train, bf16_autocast=precision.bf16_autocast),
        )
        record.update(precision=dataclasses.asdict(precision))
        print(f"[vsd] {precision.line()}; {threads} threads of {usable_cpus()} usable cores", flush=True)
        group = Path(job["sweep_dir"]).name if job.get("sweep_dir") else None
        tracker = make_tracker(
            cfg.tracker if dist_info.main else dataclasses.replace(cfg.tracker, kind="none"),
            run_dir,
            resolved,
            name=f"{cfg.run_name}-{run_dir.name}",
            group=group,
            tags=_swept_tags(job),
            provenance={k: record.data[k] for k in ("git_sha", "git_dirty", "versions", "seed")},
        )
        record.update(wandb_run_id=tracker.run_id)
        ctx = RunContext(
            cfg, run_dir, Path(cfg.paths.cache_dir).expanduser(), device, tracker, record, dist_info
        )
        for name in cfg.stages:
            if name == "eval" and not dist_info.main:
                continue  # one evaluation per run, on rank 0
            fn = stage_function(name)
            t0 = time.time()
            print(f"[vsd] stage {name} ...", flush=True)
            out = fn(ctx) or {}
            ctx.metrics.update(out)
            record.stage(name, time.time() - t0)
            print(f"[vsd] stage {name} done in {time.time() - t0:.1f}s", flush=True)
        ctx.metrics["run/seconds"] = round(sum(s["seconds"] for s in record.data["stages"].values()), 3)
        tracker.summary(ctx.metrics)
        record.succeed(ctx.metrics)
        ok = True
        print_summary(ctx.metrics, record)
        return ctx.metrics
    except BaseException as e:
        record.fail(e)
        raise
    finally:
        if tracker is not None:
            tracker.finish(ok)
        record.close()


# The end-of-run table: what a run says about the draft (every metric is in metrics.json and W&B).
HEADLINE = (
    ("eval/tau", "τ: tokens per target forward", "{:.3f}"),
    ("eval/speedup", "speedup over plain AR (same prompts, same process)", "{:.2f}×"),
    ("eval/peer/hf_prompt_lookup/speedup", "HF prompt lookup's speedup (the peer)", "{:.2f}×"),
    ("eval/speedup_bound", "bound τ / (c_verify + Σ c_draft)", "{:.2f}×"),
    ("eval/lossless_match", "T=0 outputs equal to plain AR (fraction of turns)", "{:.2f}"),
    ("eval/accepted_not_top1", "steps whose accepted path leaves the draft's top-1", "{:.2f}"),
    ("eval/tokens_per_s", "tokens/s (speculative)", "{:.1f}"),
    ("eval/ar_tokens_per_s", "tokens/s (plain AR)", "{:.1f}"),
    ("heldout/sim_tau", "held-out simulated τ after training", "{:.3f}"),
    ("heldout/vsd/novel_frac", "VSD: kept E-step tokens the data lacks (held-out)", "{:.3f}"),
    ("eval/num_turns", "eval prompt turns", "{:.0f}"),
)


def print_summary(metrics: dict[str, Any], record: RunRecord) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"vsd run {record.dir}", show_lines=False)
    t.add_column("")
    t.add_column("value", justify="right")
    if "eval/shape_depth" in metrics:
        shape = record.data.get("shape") or {}
        how = f" ({shape['mode']})" if shape.get("mode") else ""
        dims = (metrics["eval/shape_depth"], metrics["eval/shape_top_k"], metrics["eval/shape_nodes"])
        t.add_row("tree shape: depth × top-k × nodes", "×".join(f"{d:.0f}" for d in dims) + how)
    if record.data.get("precision"):
        p = record.data["precision"]
        t.add_row(
            "precision: target dtype, training bf16 autocast",
            f"{p['dtype']}, {'on' if p['bf16_autocast'] else 'off'}",
        )
    if record.data.get("target_kernel"):
        k = record.data["target_kernel"]
        t.add_row("eval target kernel (every method), threads", f"{k['kernel']}, {k.get('threads', '-')}")
    for key, label, fmt in HEADLINE:
        v = metrics.get(key)
        if isinstance(v, (int, float)) and v == v:
            t.add_row(f"{label}  {escape('[' + key + ']')}", fmt.format(v))
    for name, s in record.data["stages"].items():
        t.add_row(f"time: {name} (s)", f"{s['seconds']:.1f}")
    Console(width=110).print(t)
    print(f"[vsd] every metric: {record.dir / 'metrics.json'}", flush=True)


def _log_path() -> Path:
    """Hydra's job log file (``<run dir>/run.log``): the output of the run is copied there too."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    return Path(hc.runtime.output_dir) / f"{hc.job.name}.log"


def hydra_task(dcfg: DictConfig) -> float | None:
    """Entry called by @hydra.main: one line for user errors; a failed multirun job does not stop the sweep.
    Everything the run prints (stage lines, progress, errors, the summary) also goes to run.log."""
    job = _job_info()
    with RunLog(_log_path()) as log:
        try:
            metrics = execute(dcfg, log=log)
            return metrics.get("eval/tau")
        except UserError as e:  # ConfigError too: one line, no traceback
            print(f"error: {e}", file=sys.stderr, flush=True)
            if job.get("mode") != "multirun":
                sys.exit(1)
        except KeyboardInterrupt:
            print(
                "interrupted: the run is recorded as failed; rerun the same command to resume",
                file=sys.stderr,
            )
            sys.exit(130)
        except Exception:
            traceback.print_exc()
            if job.get("mode") != "multirun":
                sys.exit(1)
    return None


def preflight(argv: list[str]) -> None:
    """Compose and validate before Hydra starts (so bad config is one line and leaves no run or sweep dir).

    A multirun (``-m``) validates every job it would launch (:func:`vsd.config.validate_multirun`). A run dir
    (or a sweep's job dir) that a live run holds is refused here too, before Hydra writes into it.
    """
    from vsd.config import compose, format_error, validate_multirun

    multirun = any(a in ("-m", "--multirun") for a in argv) or "hydra.mode=MULTIRUN" in argv
    overrides = [a for a in argv if not a.startswith("-") and "=" in a and not a.startswith("hydra.")]
    overrides = [a for a in overrides if not a.startswith(("hydra/", "+hydra"))]
    params = [a.removeprefix("hydra.sweeper.params.") for a in argv if a.startswith("hydra.sweeper.params.")]
    dirs = [a for a in argv if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    try:
        if multirun:
            validate_multirun(overrides, params)
        else:
            compose(overrides)
    except Exception as e:  # noqa: BLE001 - every composition error becomes one line
        print(format_error(e), file=sys.stderr)
        sys.exit(2)
    if os.environ.get("RANK", "0") == "0":  # torchrun's other ranks may start after rank 0 took the dir
        try:
            _refuse_dir_in_use([*overrides, *dirs], multirun)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)


def _refuse_dir_in_use(overrides: list[str], multirun: bool) -> None:
    from vsd.config import hydra_dirs
    from vsd.records import holder

    run_dir, sweep_dir = hydra_dirs(overrides)
    key, root = ("hydra.sweep.dir", sweep_dir) if multirun else ("hydra.run.dir", run_dir)
    if not root:
        return
    for d in [Path(root), *(sorted(Path(root).iterdir()) if multirun and Path(root).is_dir() else [])]:
        who = holder(d)
        if who:
            raise UserError(
                f"{key}: {d} is in use by a running run ({who}); wait for it or choose another dir"
            )
