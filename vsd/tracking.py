"""Experiment trackers: one protocol, a W&B implementation and a null one (call sites never branch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from vsd.config.schema import TrackerConfig

# Config keys whose values must never reach a tracker.
_SECRET_HINTS = ("key", "token", "secret", "password")


class Tracker(Protocol):
    run_id: str | None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None: ...
    def summary(self, metrics: dict[str, Any]) -> None: ...
    def figure(self, name: str, fig: Any) -> None: ...
    def artifact(self, path: Path, name: str, kind: str) -> None: ...
    def finish(self, ok: bool) -> None: ...


class NullTracker:
    run_id: str | None = None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        pass

    def summary(self, metrics: dict[str, Any]) -> None:
        pass

    def figure(self, name: str, fig: Any) -> None:
        pass

    def artifact(self, path: Path, name: str, kind: str) -> None:
        pass

    def finish(self, ok: bool) -> None:
        pass


def scrub(obj: Any) -> Any:
    """Drop values whose key looks like a secret."""
    if isinstance(obj, dict):
        return {
            k: ("<redacted>" if any(h in str(k).lower() for h in _SECRET_HINTS) else scrub(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    return obj


class WandbTracker:
    """A W&B run, offline unless ``tracker.mode`` or ``WANDB_MODE`` says otherwise."""

    def __init__(
        self,
        tcfg: TrackerConfig,
        run_dir: Path,
        config: dict[str, Any],
        name: str,
        group: str | None,
        tags: list[str],
        provenance: dict[str, Any],
    ):
        import wandb

        self._wandb = wandb
        mode = tcfg.mode or os.environ.get("WANDB_MODE") or "offline"
        self.run = wandb.init(
            project=tcfg.project,
            entity=tcfg.entity or os.environ.get("WANDB_ENTITY") or None,
            mode=mode,
            dir=str(run_dir),
            name=name,
            group=tcfg.group or group,
            tags=[t[:64] for t in (list(tcfg.tags) + tags)],
            config=scrub({**config, "_provenance": provenance}),
            reinit="finish_previous",  # one W&B run per job, also when a multirun reuses the process
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )
        self.run_id = self.run.id
        self.run.define_metric("train/step")
        for ns in ("train", "heldout"):
            self.run.define_metric(f"{ns}/*", step_metric="train/step")
        self.log_checkpoint = tcfg.log_checkpoint

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = dict(metrics)
        if step is not None:
            row["train/step"] = step
        self.run.log(row)

    def summary(self, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            self.run.summary[k] = v

    def figure(self, name: str, fig: Any) -> None:
        self.run.log({name: self._wandb.Image(fig)})

    def artifact(self, path: Path, name: str, kind: str) -> None:
        if kind == "model" and not self.log_checkpoint:
            return
        art = self._wandb.Artifact(name=name, type=kind)
        p = Path(path)
        art.add_dir(str(p)) if p.is_dir() else art.add_file(str(p))
        self.run.log_artifact(art)

    def finish(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


def make_tracker(
    tcfg: TrackerConfig,
    run_dir: Path,
    config: dict[str, Any],
    name: str,
    group: str | None,
    tags: list[str],
    provenance: dict[str, Any],
) -> Tracker:
    if tcfg.kind == "none" or (tcfg.mode or os.environ.get("WANDB_MODE")) == "disabled":
        return NullTracker()
    return WandbTracker(tcfg, run_dir, config, name, group, tags, provenance)
