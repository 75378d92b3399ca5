"""Resumable draft trainer: AdamW, warmup + cosine, grad clip, bf16 autocast, grad accumulation, DDP.

Determinism and resume. The data order is a pure function of (seed, global step): global step s takes
positions [s*B, (s+1)*B) of an endless stream of per-epoch permutations (epoch e uses
``randperm(n, seed*1_000_003 + e)``). A checkpoint therefore needs only the step plus model, optimizer,
scheduler and RNG states (and the log rows written so far). Checkpoints are written atomically (temp dir,
then rename) into a directory keyed by the training config, so re-running the same command, which makes a new
Hydra run dir, finds and resumes the latest valid one.

Distributed (torchrun, WORLD_SIZE > 1): rank r takes the r-th contiguous slice of every global batch; each
micro-batch loss is weighted by (its response tokens / the global batch's response tokens) so the summed
gradient equals the single-process gradient; gradients are summed with one all_reduce (a flat buffer)
before clipping. No DDP wrapper: the losses call ``head.step``/``head.fuse`` rather than ``forward``.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from vsd.config.schema import TrainConfig
from vsd.errors import UserError
from vsd.records import append_jsonl
from vsd.runtime import DistInfo

STATE_FILE = "state.pt"
DONE_MARK = "COMPLETE"


# ------------------------------------------------------------------------------------- schedule
def lr_lambda(tcfg: TrainConfig) -> Callable[[int], float]:
    """Linear warmup to 1, then cosine to ``min_lr_ratio`` at ``steps``."""

    def f(step: int) -> float:
        if tcfg.warmup_steps and step < tcfg.warmup_steps:
            return (step + 1) / tcfg.warmup_steps
        span = max(tcfg.steps - tcfg.warmup_steps, 1)
        prog = min(max(step - tcfg.warmup_steps, 0) / span, 1.0)
        return tcfg.min_lr_ratio + (1 - tcfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog))

    return f


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Dataset indices of global batch ``step`` (deterministic; epochs reshuffle)."""
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, off = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        take = min(batch_size - len(out), n - off)
        out.extend(perm[off : off + take].tolist())
        pos += take
    return out


# ------------------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def latest_checkpoint(ckpt_dir: Path) -> tuple[Path, dict] | None:
    """The newest complete, loadable checkpoint (a corrupt newest one is reported and skipped)."""
    if not ckpt_dir.exists():
        return None
    for d in sorted(ckpt_dir.glob("step_*"), reverse=True):
        if not (d / DONE_MARK).exists():
            continue
        try:
            return d, torch.load(d / STATE_FILE, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: fall back to the previous one
            print(f"[vsd] checkpoint {d} is unreadable ({type(e).__name__}: {e}); trying an older one")
    return None


def _save_checkpoint(ckpt_dir: Path, step: int, state: dict, keep: int = 2) -> Path:
    final = ckpt_dir / f"step_{step:08d}"
    tmp = ckpt_dir / f".tmp_step_{step:08d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(state, tmp / STATE_FILE)
    (tmp / DONE_MARK).write_text("ok\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(ckpt_dir.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def items_on_device(ds: Sequence, device: str) -> list[dict[str, torch.Tensor]]:
    """``train.data_on_device``: every item copied to ``device`` once. Per-step host collation and copies
    otherwise keep a GPU rank waiting on its CPU (what limited DDP scaling, docs/bench_gpu.md)."""
    return [{k: v.to(device) for k, v in ds[i].items()} for i in range(len(ds))]


# ------------------------------------------------------------------------------------- trainer
class Trainer:
    """Trains ``head`` with ``loss_fn(head, batch, step) -> (scalar, logs)``; see the module docstring."""

    def __init__(
        self,
        tcfg: TrainConfig,
        head: torch.nn.Module,
        loss_fn: Callable,
        train_ds: Sequence,
        heldout_ds: Sequence | None,
        collate: Callable[[list], dict[str, torch.Tensor]],
        *,
        seed: int,
        device: str,
        ckpt_dir: Path | None,
        run_dir: Path | None,
        tracker=None,
        dist_info: DistInfo | None = None,
        finalize: Callable[[dict[str, float]], dict[str, float]] | None = None,
        progress: bool = True,
    ):
        self.t = tcfg
        self.head = head
        self.loss_fn = loss_fn
        self.train_ds, self.heldout_ds, self.collate = train_ds, heldout_ds, collate
        self.seed, self.device = seed, device
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
        self.run_dir = Path(run_dir) if run_dir else None
        self.tracker = tracker
        self.d = dist_info or DistInfo()
        self.finalize = finalize
        self.progress = progress
        if len(train_ds) == 0:
            raise UserError("train: the training set is empty")
        if tcfg.data_on_device and torch.device(device).type != "cpu":
            self.train_ds = items_on_device(train_ds, device)
            self.heldout_ds = items_on_device(heldout_ds, device) if heldout_ds is not None else None
        per_rank, rem = divmod(tcfg.batch_size, self.d.world)
        if rem or per_rank % tcfg.grad_accum:
            raise UserError(
                f"train.batch_size: {tcfg.batch_size} must be divisible by WORLD_SIZE ({self.d.world}) "
                f"x train.grad_accum ({tcfg.grad_accum})"
            )
        self.micro = per_rank // tcfg.grad_accum
        self.params = [p for p in head.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            self.params, lr=tcfg.lr, betas=tuple(tcfg.betas), weight_decay=tcfg.weight_decay
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(tcfg))
        self.step = 0
        self.log_rows: list[dict] = []
        self.last: dict[str, float] = {}
        self.heldout: dict[str, float] = {}

    # ---------------------------------------------------------------- helpers
    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _all_sum(self, values: dict[str, float]) -> dict[str, float]:
        if self.d.world == 1:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def _autocast(self):
        from vsd.runtime import (
            bf16_autocast_on,  # a run resolved "auto" already; a Trainer built alone does here
        )

        dev = "cuda" if str(self.device).startswith("cuda") else "cpu"
        return torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16_autocast_on(self.t.bf16_autocast, dev))

    def _merge_logs(self, parts: list[tuple[float, dict]], n_total: float) -> dict[str, float]:
        """parts: (weight numerator n_resp, logs) per micro-batch of this rank -> global logs."""
        acc: dict[str, float] = {}
        for n, logs in parts:
            for k, v in logs.items():
                if k.startswith(("n_", "s_")):
                    acc[k] = acc.get(k, 0.0) + v
                else:
                    acc[k] = acc.get(k, 0.0) + v * n / max(n_total, 1.0)
        out = self._all_sum(acc)
        if self.finalize is not None:
            out.update(self.finalize(out))
        return out

    # ---------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": {k: v for k, v in self.head.state_dict().items() if not k.startswith("embed_tokens.")},
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": _rng_state(),
            "data": {
                "seed": self.seed,
                "samples_seen": self.step * self.t.batch_size,
                "n": len(self.train_ds),
            },
            "log_rows": self.log_rows,
            "last": self.last,
            "heldout": self.heldout,
            "loss": self.loss_fn.state_dict() if hasattr(self.loss_fn, "state_dict") else None,
        }

    def load_state(self, st: dict[str, Any]) -> None:
        if st["data"]["n"] != len(self.train_ds):
            raise UserError(
                f"checkpoint: the training set changed size ({st['data']['n']} -> {len(self.train_ds)}); "
                "delete the checkpoint dir or change the config"
            )
        self.head.load_state_dict(st["model"], strict=False)
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        _set_rng_state(st["rng"])
        if self.d.rank:  # ranks > 0: own stream, still a function of (seed, rank, step)
            torch.manual_seed(self.seed + 1000 * self.d.rank + st["step"])
        self.step = st["step"]
        self.log_rows, self.last, self.heldout = list(st["log_rows"]), st["last"], st["heldout"]
        if st.get("loss") is not None and hasattr(self.loss_fn, "load_state_dict"):
            self.loss_fn.load_state_dict(st["loss"])

    def save_checkpoint(self) -> None:
        if self.ckpt_dir is not None and self.d.main:
            _save_checkpoint(self.ckpt_dir, self.step, self.state())
        if self.d.world > 1:
            dist.barrier()

    # ---------------------------------------------------------------- loop
    def train_step(self) -> dict[str, float]:
        idx = batch_indices(self.step, self.t.batch_size, len(self.train_ds), self.seed)
        mine = idx[
            self.d.rank * self.micro * self.t.grad_accum : (self.d.rank + 1) * self.micro * self.t.grad_accum
        ]
        batches = [
            self.collate([self.train_ds[i] for i in mine[j : j + self.micro]])
            for j in range(0, len(mine), self.micro)
        ]
        n_local = [float((b["loss_mask"].bool() & b["attention_mask"].bool()).sum()) for b in batches]
        tok_local = float(sum(b["attention_mask"].sum() for b in batches))
        tot = self._all_sum({"n": sum(n_local), "tok": tok_local})
        n_total = tot["n"]
        self.opt.zero_grad(set_to_none=True)
        parts = []
        for b, n in zip(batches, n_local):
            with self._autocast():
                loss, logs = self.loss_fn(self.head, self._to_device(b), self.step)
            # weight by response tokens: the sum over micro-batches and ranks is the global-batch loss
            (loss * (n / max(n_total, 1.0))).backward()
            parts.append((n, {**logs, "loss": float(loss.detach())}))
        if self.d.world > 1:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            off = 0
            for p in self.params:
                p.grad = flat[off : off + p.numel()].view_as(p).clone()
                off += p.numel()
        gnorm = torch.nn.utils.clip_grad_norm_(
            self.params, self.t.grad_clip if self.t.grad_clip > 0 else 1e30
        )
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.step += 1
        out = self._merge_logs(parts, n_total)
        out.update(lr=lr, grad_norm=float(gnorm), tokens=tot["tok"])
        return out

    @torch.no_grad()
    def evaluate_heldout(self) -> dict[str, float]:
        """Loss/acc/sim_tau over the whole held-out set (split across ranks), no grad."""
        if not self.heldout_ds or len(self.heldout_ds) == 0:
            return {}
        self.head.eval()
        idx = list(range(self.d.rank, len(self.heldout_ds), self.d.world))
        parts, n_all = [], 0.0
        own_stream = getattr(self.loss_fn, "heldout_mode", contextlib.nullcontext)
        with own_stream():  # held-out draws never move the training stream
            for j in range(0, len(idx), max(self.micro, 1)):
                b = self.collate([self.heldout_ds[i] for i in idx[j : j + self.micro]])
                n = float((b["loss_mask"].bool() & b["attention_mask"].bool()).sum())
                with self._autocast():
                    loss, logs = self.loss_fn(self.head, self._to_device(b), self.step)
                parts.append((n, {**logs, "loss": float(loss)}))
                n_all += n
        self.head.train()
        n_total = self._all_sum({"n": n_all})["n"]
        out = self._merge_logs(parts, n_total)
        return {f"heldout/{k}": v for k, v in out.items() if not k.startswith(("n_", "s_"))}

    def _emit(self, row: dict[str, float]) -> None:
        if not self.d.main:
            return
        self.log_rows.append(row)
        if self.run_dir is not None:
            append_jsonl(self.run_dir / "train_log.jsonl", row)
        if self.tracker is not None:
            self.tracker.log({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))

    def fit(self, stop_at: int | None = None) -> dict[str, float]:
        """Resume if a checkpoint exists, train to ``train.steps``, return the final metrics.

        ``stop_at``: return after that global step, as if killed there (tests of resume).
        SIGINT/SIGTERM (Ctrl-C, ``timeout``, Slurm's time limit) finish the current step, save a checkpoint
        and raise KeyboardInterrupt, so the same command resumes with nothing lost (a second signal stops at
        once). Single-process only: DDP ranks could stop at different steps, so they rely on ckpt_every.
        """
        with _graceful_stop(self.d.world == 1 and self.ckpt_dir is not None) as stop:
            return self._fit(stop_at, stop)

    def _fit(self, stop_at: int | None, stop: _StopFlag) -> dict[str, float]:
        if self.ckpt_dir is not None:
            found = latest_checkpoint(self.ckpt_dir)
            if found is not None:
                self.load_state(found[1])
                if self.d.main:
                    print(f"[vsd] resuming from {found[0]} (step {self.step}/{self.t.steps})", flush=True)
        if self.d.main and self.run_dir is not None:  # the new run dir gets the full log so far
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "train_log.jsonl").unlink(missing_ok=True)
            for r in self.log_rows:
                append_jsonl(self.run_dir / "train_log.jsonl", r)
        self.head.train()
        bar = None
        if self.progress and self.d.main and self.step < self.t.steps:
            from tqdm import tqdm

            bar = tqdm(total=self.t.steps, initial=self.step, desc="train", dynamic_ncols=True)
        t_win, tok_win, t_all, tok_all = time.perf_counter(), 0.0, 0.0, 0.0
        while self.step < self.t.steps and (stop_at is None or self.step < stop_at):
            t0 = time.perf_counter()
            out = self.train_step()
            dt = time.perf_counter() - t0
            t_all, tok_all, tok_win = t_all + dt, tok_all + out["tokens"], tok_win + out["tokens"]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{out['loss']:.3f}", tau=f"{out.get('sim_tau', 0):.2f}")
            if self.step % self.t.log_every == 0 or self.step == self.t.steps:
                now = time.perf_counter()
                row = {"step": self.step}
                row.update({f"train/{k}": v for k, v in out.items() if not k.startswith(("n_", "s_", "tok"))})
                row["train/tokens_per_s"] = tok_win / max(now - t_win, 1e-9)
                t_win, tok_win = now, 0.0
                self.last = row
                if self.step % self.t.heldout_every == 0 or self.step == self.t.steps:
                    self.heldout = self.evaluate_heldout()
                    row.update(self.heldout)
                    t_win = time.perf_counter()  # held-out time is not training throughput
                self._emit(row)
            if self.step % self.t.ckpt_every == 0 or self.step == self.t.steps or stop.requested:
                self.save_checkpoint()
            if stop.requested:
                if bar is not None:
                    bar.close()
                print(f"[vsd] stopped at step {self.step}/{self.t.steps}; checkpoint saved", flush=True)
                raise KeyboardInterrupt
        if bar is not None:
            bar.close()
        metrics = {k: v for k, v in self.last.items() if k != "step" and not k.startswith("heldout/")}
        metrics.update(self.heldout)
        if tok_all:  # whole-run throughput (this process's part of it, after a resume)
            metrics["train/tokens_per_s"] = tok_all / t_all
        metrics["train/steps"] = float(self.step)
        return metrics


class _StopFlag:
    requested = False


@contextlib.contextmanager
def _graceful_stop(enabled: bool) -> Iterator[_StopFlag]:
    """While active, the first SIGINT/SIGTERM only sets ``requested``; the second one acts as usual."""
    flag = _StopFlag()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        if flag.requested:  # second signal: restore and re-deliver
            for s_, h in old.items():
                if h is not None:
                    signal.signal(s_, h)
            signal.raise_signal(signum)
            return
        flag.requested = True
        print(
            "[vsd] stop requested: finishing this step and saving a checkpoint", file=sys.stderr, flush=True
        )

    for sig in old:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig, h in old.items():
            if h is not None:
                signal.signal(sig, h)


__all__ = ["Trainer", "batch_indices", "latest_checkpoint", "lr_lambda"]
