"""VSD's random streams: seeded by the run seed and rank, saved with checkpoints, held-out draws kept apart.

A resumed VSD run (after SIGTERM, or after a crash between checkpoints) must equal the straight run bit for
bit; two seeds must draw different E-step samples; held-out evaluation must not change the trained weights.
"""

import dataclasses
import os
import signal

import pytest
import torch

from vsd.config import compose
from vsd.data.vocab import build_vocab, token_counts
from vsd.features.dataset import collate
from vsd.losses import build_loss
from vsd.losses.eagle3 import finalize_logs
from vsd.losses.vsd import finalize_vsd_logs, select_anchors
from vsd.models.draft import build_head
from vsd.models.target import load_target
from vsd.train.toy_data import make_toy_items
from vsd.train.trainer import Trainer

OV = [
    "model=tiny_random",
    "train=tiny",
    "loss=vsd",
    "loss.ttt_steps=2",
    "loss.num_samples=2",
    "loss.anchors_per_seq=3",
    "loss.depth=3",
    "loss.verify_temperature=1.0",  # sampled acceptance: one more draw per step from the stream
    "train.init_from=/nonexistent",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    _, cfg = compose(OV)[0]
    target = load_target(cfg.model, tmp_path_factory.mktemp("c"), "cpu", "float32")
    items = make_toy_items(target, 10, prompt_len=6, new_tokens=14, greedy=False, seed=0)
    vocab = build_vocab(token_counts(items, target.vocab_size) + 1, 128)
    return cfg, target, items, vocab


def make_trainer(setup, tmp, seed=0, **train_over):
    cfg, target, items, vocab = setup
    tcfg = dataclasses.replace(cfg.train, **train_over)
    head = build_head(target, cfg.model.draft, vocab["d2t"], seed=0)

    def fin(s):
        return {**finalize_logs(s, cfg.loss.ttt_steps, cfg.loss.step_decay), **finalize_vsd_logs(s)}

    return Trainer(
        tcfg,
        head,
        build_loss(cfg.loss, target, vocab, seed=seed),
        items[:8],
        items[8:],
        collate,
        seed=seed,
        device="cpu",
        ckpt_dir=tmp / "ckpt",
        run_dir=tmp / "run",
        finalize=fin,
        progress=False,
    )


def same_weights(a: Trainer, b: Trainer) -> None:
    for (n, p), (_, q) in zip(a.head.state_dict().items(), b.head.state_dict().items()):
        assert torch.equal(p, q), n


def strip(rows):
    return [{k: v for k, v in r.items() if "tokens_per_s" not in k and "estep_s" not in k} for r in rows]


KW = dict(steps=6, lr=3e-3, log_every=1, heldout_every=2)


def test_crash_between_checkpoints_resumes_bit_for_bit(setup, tmp_path):
    straight = make_trainer(setup, tmp_path / "a", ckpt_every=2, **KW)
    straight.fit()
    first = make_trainer(setup, tmp_path / "b", ckpt_every=2, **KW)
    first.fit(stop_at=3)  # "killed" after step 3: steps 3.. are redone from the step-2 checkpoint
    resumed = make_trainer(setup, tmp_path / "b", ckpt_every=2, **KW)
    resumed.fit()
    same_weights(straight, resumed)
    assert strip(straight.log_rows) == strip(resumed.log_rows)
    assert {"train/vsd/novel_frac", "heldout/vsd/novel_frac"} <= set(straight.log_rows[-1])


def test_sigterm_resumes_bit_for_bit(setup, tmp_path):
    straight = make_trainer(setup, tmp_path / "a", ckpt_every=100, **KW)
    straight.fit()
    first = make_trainer(setup, tmp_path / "b", ckpt_every=100, **KW)
    step = first.train_step

    def step_then_signal():
        out = step()
        if first.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    first.train_step = step_then_signal
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert first.step == 3
    resumed = make_trainer(setup, tmp_path / "b", ckpt_every=100, **KW)
    resumed.fit()
    same_weights(straight, resumed)
    assert strip(straight.log_rows) == strip(resumed.log_rows)


def test_heldout_evaluation_does_not_change_training(setup, tmp_path):
    often = make_trainer(setup, tmp_path / "a", ckpt_every=100, **{**KW, "heldout_every": 1})
    rarely = make_trainer(setup, tmp_path / "b", ckpt_every=100, **{**KW, "heldout_every": 100})
    often.fit()
    rarely.fit()
    same_weights(often, rarely)
    # the held-out stream restarts at every evaluation: the same draft scores the same
    loss = often.loss_fn
    batch = collate(setup[2][8:])
    with loss.heldout_mode():
        a = select_anchors(batch, 3, loss.generator)[0]
    with loss.heldout_mode():
        b = select_anchors(batch, 3, loss.generator)[0]
    assert torch.equal(a, b)


def test_seeds_and_ranks_draw_different_estep_samples(setup):
    cfg, target, items, vocab = setup
    head = build_head(target, cfg.model.draft, vocab["d2t"], seed=0)
    batch = collate(items[:4])

    def draws(seed, rank=0):
        loss = build_loss(cfg.loss, target, vocab, seed=seed, rank=rank)
        anchors, valid = select_anchors(batch, 3, loss.generator)
        return anchors, loss.estep(head, batch, anchors, valid)["z"]

    a0, z0 = draws(0)
    a0b, z0b = draws(0)
    assert torch.equal(a0, a0b) and torch.equal(z0, z0b)  # a seed is a seed
    for other in (draws(7), draws(0, rank=1)):
        assert not (torch.equal(a0, other[0]) and torch.equal(z0, other[1]))


def test_gradient_cosine_reaches_the_train_log(setup, tmp_path):
    cfg, target, items, vocab = setup
    lcfg = dataclasses.replace(cfg.loss, grad_cosine_every=2)
    tr = make_trainer(setup, tmp_path, ckpt_every=100, **{**KW, "log_every": 2})
    tr.loss_fn = build_loss(lcfg, target, vocab, seed=0)
    tr.fit()
    cos = [r["train/vsd/grad_cos"] for r in tr.log_rows if "train/vsd/grad_cos" in r]
    assert len(cos) == 3 and all(-1.0 <= c <= 1.0 for c in cos)
    assert all("heldout/vsd/grad_cos" not in r for r in tr.log_rows)  # not in eval mode
