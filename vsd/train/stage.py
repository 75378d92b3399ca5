"""Train stage: build (or warm-start) the EAGLE-3 head, the configured loss, and run the resumable trainer.

Sets ``ctx.artifacts["draft_dir"]`` = ``{run_dir}/draft``. Checkpoints live in
``{cache_dir}/checkpoints/<key>/`` where key hashes the training-relevant resolved config (model, dataset,
loss, train without logging/checkpoint cadence, seed, dtype) plus the draft vocab and training-set size, so
the same command resumes after ``kill -9`` even though Hydra gives it a new run dir.

Tests (and callers with their own data) may set ``ctx.artifacts["train_source"] = (train_ds, heldout_ds,
collate, vocab)`` to bypass vsd.features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from vsd.errors import UserError
from vsd.train.trainer import Trainer

CADENCE_KEYS = ("ckpt_every", "log_every", "heldout_every")  # do not change results: not in the key


def checkpoint_key(cfg, d2t: torch.Tensor, n_train: int, init_sha256: dict | None = None) -> str:
    """Hash of everything that changes the trained weights (not cadence, not where the run dir is). A warm
    start counts by its weights (``init_sha256``, from its config.json), not by its path."""
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in CADENCE_KEYS}
    if init_sha256:
        train["init_from"] = init_sha256
    blob = {
        "model": dataclasses.asdict(cfg.model),
        "dataset": dataclasses.asdict(cfg.dataset),
        "loss": dataclasses.asdict(cfg.loss),
        "train": train,
        "seed": cfg.seed,
        "dtype": cfg.dtype,
        "d2t": hashlib.sha256(d2t.cpu().numpy().tobytes()).hexdigest(),
        "n_train": n_train,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _source(ctx) -> tuple[Any, Any, Any, dict[str, torch.Tensor]]:
    if "train_source" in ctx.artifacts:
        return ctx.artifacts["train_source"]
    try:
        from vsd.features.dataset import collate, load_vocab, make_train_source
    except ModuleNotFoundError as e:
        raise UserError(f"stages: train needs vsd.features ({e})") from e
    if "vocab_path" not in ctx.artifacts:
        raise UserError("stages: train needs the data stage first (no draft vocab; add data and features)")
    train_ds, heldout_ds = make_train_source(ctx)
    # online features: the dataset's own collate runs one batched target forward per (micro-)batch
    return (
        train_ds,
        heldout_ds,
        getattr(train_ds, "collate", collate),
        load_vocab(ctx.artifacts["vocab_path"]),
    )


def run(ctx) -> dict[str, float]:
    from vsd.losses import build_loss
    from vsd.models.draft import build_head

    cfg = ctx.cfg
    info, device = ctx.dist, ctx.device  # joined and picked once, by vsd.pipeline
    target = ctx.target
    train_ds, heldout_ds, collate, vocab = _source(ctx)

    init_sha256 = None
    if cfg.train.init_from:
        from vsd.models.draft import resolve_draft_dir
        from vsd.models.formats import load_head

        init_dir = resolve_draft_dir(cfg.train.init_from, cfg.model, "train.init_from")
        if not init_dir.is_dir():
            raise UserError(f"train.init_from: draft directory {init_dir} does not exist")
        # any format vsd reads (vsd.models.formats); its weights count by the sha256 of its files
        head, ck = load_head(init_dir, target, device=device, key="train.init_from")
        init_sha256 = ck.sha256 or None
        # The draft keeps its own vocab map (an imported EAGLE-3 draft's d2t included): never rebuilt
        if not torch.equal(head.d2t.cpu(), torch.as_tensor(vocab["d2t"]).cpu()):
            print("[vsd] train.init_from: the draft's vocab differs from the data's; training on the draft's")
        vocab = {"d2t": head.d2t.cpu(), "t2d": head.t2d.cpu()}
    else:
        head = build_head(target, cfg.model.draft, vocab["d2t"], seed=cfg.seed).to(device)
    loss_fn = build_loss(cfg.loss, target, vocab, seed=cfg.seed, rank=info.rank)
    from vsd.losses.eagle3 import finalize_logs
    from vsd.losses.vsd import finalize_vsd_logs

    def finalize(sums: dict[str, float]) -> dict[str, float]:
        if not any(k.startswith("n_valid_") for k in sums):
            return {}
        return {**finalize_logs(sums, cfg.loss.ttt_steps, cfg.loss.step_decay), **finalize_vsd_logs(sums)}

    key = checkpoint_key(cfg, torch.as_tensor(vocab["d2t"]), len(train_ds), init_sha256)
    ckpt_dir = ctx.cache_dir / "checkpoints" / key
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(
        cfg.train,
        head,
        loss_fn,
        train_ds,
        heldout_ds,
        collate,
        seed=cfg.seed,
        device=device,
        ckpt_dir=ckpt_dir,
        run_dir=ctx.run_dir,
        tracker=ctx.tracker if info.main else None,
        dist_info=info,
        finalize=finalize,
    )
    t0 = time.time()
    lock = FileLock(str(ckpt_dir / ".lock")) if info.main else None
    if lock is not None:
        try:
            lock.acquire(timeout=1)
        except TimeoutError:
            print(f"[vsd] another job trains the same config in {ckpt_dir}; waiting for it", flush=True)
            lock.acquire()
    try:
        metrics = trainer.fit()
    finally:
        if lock is not None:
            lock.release()
    out_dir = Path(ctx.run_dir) / "draft"
    if info.main:
        head.save(out_dir)
        if cfg.tracker.log_checkpoint:
            ctx.tracker.artifact(out_dir, f"draft-{cfg.run_name}", "model")
    ctx.artifacts["draft_dir"] = str(out_dir)
    metrics["train/params"] = float(head.num_trainable_parameters())
    metrics["train/seconds"] = round(time.time() - t0, 3)
    metrics["train/world_size"] = float(info.world)
    ctx.record.update(train_checkpoint_dir=str(ckpt_dir))
    return metrics
