"""Trainer: loss goes down, resume after interruption reproduces the uninterrupted run, grad accumulation."""

import dataclasses
import json
import os
import signal

import pytest
import torch

from vsd.config import compose
from vsd.data.vocab import build_vocab, token_counts
from vsd.features.dataset import collate
from vsd.losses import build_loss
from vsd.losses.eagle3 import finalize_logs
from vsd.models.draft import build_head
from vsd.models.target import load_target
from vsd.train.toy_data import make_toy_items
from vsd.train.trainer import Trainer, batch_indices, lr_lambda


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    _, cfg = compose(["model=tiny_random", "train=tiny", "loss=eagle3", "loss.ttt_steps=3"])[0]
    target = load_target(cfg.model, tmp_path_factory.mktemp("c"), "cpu", "float32")
    items = make_toy_items(target, 12, new_tokens=16, greedy=False, seed=0)
    vocab = build_vocab(token_counts(items, target.vocab_size), 128)
    return cfg, target, items, vocab


def make_trainer(setup, tmp, **train_over):
    cfg, target, items, vocab = setup
    tcfg = dataclasses.replace(cfg.train, **train_over)
    head = build_head(target, cfg.model.draft, vocab["d2t"], seed=0)
    fin = lambda s: finalize_logs(s, cfg.loss.ttt_steps, cfg.loss.step_decay)  # noqa: E731
    return Trainer(
        tcfg,
        head,
        build_loss(cfg.loss, target, vocab),
        items[:10],
        items[10:],
        collate,
        seed=0,
        device="cpu",
        ckpt_dir=tmp / "ckpt",
        run_dir=tmp / "run",
        finalize=fin,
        progress=False,
    )


def test_lr_schedule_and_data_order():
    _, cfg = compose(
        ["train=tiny", "loss=eagle3", "train.steps=10", "train.warmup_steps=2", "train.min_lr_ratio=0.1"]
    )[0]
    f = lr_lambda(cfg.train)
    assert f(0) == 0.5 and f(1) == 1.0 and f(2) == pytest.approx(1.0) and f(10) == pytest.approx(0.1)
    assert all(f(i) >= f(i + 1) for i in range(2, 12))
    # every epoch is a permutation; the order is a function of (seed, step) only
    idx = [i for s in range(5) for i in batch_indices(s, 4, 10, seed=3)]
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:20]) == list(range(10))
    assert batch_indices(3, 4, 10, 3) == batch_indices(3, 4, 10, 3) != batch_indices(3, 4, 10, 4)


def test_a_few_steps_lower_the_loss(setup, tmp_path):
    tr = make_trainer(setup, tmp_path, steps=12, lr=3e-3, warmup_steps=1, log_every=1, heldout_every=12)
    m = tr.fit()
    rows = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and rows[-1]["step"] == 12
    first, last = rows[0]["train/loss"], rows[-1]["train/loss"]
    assert last < 0.8 * first, (first, last)
    assert {"train/acc_0", "train/sim_tau", "train/lr", "train/tokens_per_s", "heldout/loss"} <= set(rows[-1])
    assert m["train/steps"] == 12 and "heldout/sim_tau" in m


def test_resume_reproduces_uninterrupted_run(setup, tmp_path):
    kw = dict(steps=6, ckpt_every=2, log_every=1, heldout_every=3, lr=3e-3)
    straight = make_trainer(setup, tmp_path / "a", **kw)
    m_a = straight.fit()
    first = make_trainer(setup, tmp_path / "b", **kw)
    first.fit(stop_at=3)  # "killed" after step 3: the last checkpoint is step 2
    assert (tmp_path / "b" / "ckpt" / "step_00000002").exists()
    resumed = make_trainer(setup, tmp_path / "b", **kw)  # a fresh process would build exactly this
    m_b = resumed.fit()
    assert resumed.step == 6
    for (n, p), (_, q) in zip(straight.head.state_dict().items(), resumed.head.state_dict().items()):
        assert torch.equal(p, q), n
    keys = [k for k in m_a if "tokens_per_s" not in k]
    assert {k: m_a[k] for k in keys} == {k: m_b[k] for k in keys}
    # the log rows (restored from the checkpoint, then continued) match the straight run's
    strip = lambda r: {k: v for k, v in r.items() if "tokens_per_s" not in k}  # noqa: E731
    assert [strip(r) for r in straight.log_rows] == [strip(r) for r in resumed.log_rows]


def test_a_stop_signal_saves_a_checkpoint_and_resume_matches(setup, tmp_path):
    # `timeout -s INT`, Ctrl-C or Slurm's SIGTERM mid-run: the step finishes, a checkpoint is written at that
    # step (not only at ckpt_every), KeyboardInterrupt propagates; rerunning reproduces the straight run.
    kw = dict(steps=6, ckpt_every=100, log_every=1, heldout_every=3, lr=3e-3)
    straight = make_trainer(setup, tmp_path / "a", **kw)
    straight.fit()
    first = make_trainer(setup, tmp_path / "b", **kw)
    step = first.train_step

    def step_then_signal():
        out = step()
        if first.step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    first.train_step = step_then_signal
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert first.step == 4 and (tmp_path / "b" / "ckpt" / "step_00000004").exists()
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is removed again
    resumed = make_trainer(setup, tmp_path / "b", **kw)
    resumed.fit()
    for (n, p), (_, q) in zip(straight.head.state_dict().items(), resumed.head.state_dict().items()):
        assert torch.equal(p, q), n


def test_grad_accumulation_matches_full_batch(setup, tmp_path):
    a = make_trainer(setup, tmp_path / "a", steps=2, grad_accum=1, batch_size=4, ckpt_every=100)
    b = make_trainer(setup, tmp_path / "b", steps=2, grad_accum=2, batch_size=4, ckpt_every=100)
    la, lb = a.train_step(), b.train_step()
    assert la["loss"] == pytest.approx(lb["loss"], rel=1e-5)
    # Compare the step's (clipped) gradients, not the parameters after AdamW: Adam's first updates are
    # ~lr * sign(g), so a float-rounding difference in a near-zero gradient flips a whole lr-sized update.
    for (n, p), (_, q) in zip(a.head.named_parameters(), b.head.named_parameters()):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), n
    assert a.train_step()["loss"] == pytest.approx(b.train_step()["loss"], rel=1e-4)


def test_items_on_device_collate_stays_on_device():
    """train.data_on_device: items moved once; collation then builds the batch on that device (no host copy)."""
    from vsd.features.dataset import collate
    from vsd.train.trainer import items_on_device

    items = [
        {
            "input_ids": torch.arange(n),
            "loss_mask": torch.ones(n, dtype=torch.bool),
            "features": torch.randn(n, 6),
        }
        for n in (3, 5)
    ]
    moved = items_on_device(items, "meta")
    batch = collate(moved)
    assert all(v.device.type == "meta" for v in batch.values())
    assert batch["features"].shape == (2, 5, 6) and batch["attention_mask"].shape == (2, 5)
    cpu = collate(items)
    assert cpu["attention_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
