"""EAGLE-3 loss: equals a hand computation (python loops over positions) and masks correctly."""

import math

import pytest
import torch

from vsd.config import compose
from vsd.data.vocab import build_vocab
from vsd.losses import build_loss
from vsd.losses.eagle3 import finalize_logs
from vsd.models.draft import build_head
from vsd.models.target import load_target


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    _, cfg = compose(["model=tiny_random", "loss=eagle3", "loss.ttt_steps=2", "loss.step_decay=0.5"])[0]
    target = load_target(cfg.model, tmp_path_factory.mktemp("c"), "cpu", "float32")
    vocab = build_vocab(torch.arange(target.vocab_size).float() % 5, 40)
    head = build_head(target, cfg.model.draft, vocab["d2t"], seed=0)
    return cfg, target, vocab, head


def _batch(target, vocab):
    torch.manual_seed(1)
    B, T, H = 2, 8, target.hidden_size
    E = target.model.get_input_embeddings().weight
    # target_hidden = embedding rows: mixes positions whose target argmax is inside / outside the draft vocab
    hid_tok = torch.tensor([[3, 4, 9, 14, 19, 1, 24, 29], [4, 9, 2, 7, 14, 19, 24, 8]])
    th = E[hid_tok].detach().clone() * 3
    ids = torch.randint(0, 200, (B, T))
    am = torch.ones(B, T, dtype=torch.bool)
    am[1, 6:] = False  # padding
    lm = torch.zeros(B, T, dtype=torch.bool)
    lm[:, 2:] = True
    lm[1, 6:] = False
    return {
        "input_ids": ids,
        "attention_mask": am,
        "loss_mask": lm,
        "features": torch.randn(B, T, 3 * H),
        "target_hidden": th,
    }


def test_loss_matches_hand_computation(setup):
    cfg, target, vocab, head = setup
    batch = _batch(target, vocab)
    loss_fn = build_loss(cfg.loss, target, vocab)
    loss, logs = loss_fn(head, batch, 0)

    W = target.model.get_output_embeddings().weight
    d2t = vocab["d2t"].tolist()
    B, T = batch["input_ids"].shape
    # draft logits per step, via the head's step API (step 1 feeds back step 0's hidden, tokens shifted)
    pos = torch.arange(T)[None]
    ids1 = torch.cat([batch["input_ids"][:, 2:], torch.zeros(B, 2, dtype=torch.long)], 1)
    ids0 = torch.cat([batch["input_ids"][:, 1:], torch.zeros(B, 1, dtype=torch.long)], 1)
    h0, l0 = head.step(head.fuse(batch["features"]), ids0, pos, head.new_ttt_cache(batch["attention_mask"]))
    cache = head.new_ttt_cache(batch["attention_mask"])
    h0b, _ = head.step(head.fuse(batch["features"]), ids0, pos, cache)
    _, l1 = head.step(h0b, ids1, pos + 1, cache)
    draft = [l0, l1]
    n_resp = int((batch["loss_mask"] & batch["attention_mask"]).sum())
    total, counted, masked_out_vocab = 0.0, [0, 0], 0
    for k in range(2):
        for b in range(B):
            for t in range(T):
                j = t + k + 1  # target position whose distribution is the label
                if j + 1 >= T or not (batch["loss_mask"][b, j + 1] and batch["attention_mask"][b, j + 1]):
                    continue
                full = batch["target_hidden"][b, j] @ W.T
                if int(full.argmax()) not in d2t:
                    masked_out_vocab += 1
                    continue
                p = torch.softmax(full[d2t], -1)
                logq = torch.log_softmax(draft[k][b, t], -1)
                total += 0.5**k * float(-(p * logq).sum().detach()) / n_resp
                counted[k] += 1
    assert masked_out_vocab > 0 and counted[0] > 0 and counted[1] > 0  # the case exercises both branches
    assert logs["n_valid_0"] == counted[0] and logs["n_valid_1"] == counted[1]
    assert logs["n_resp"] == n_resp
    assert float(loss.detach()) == pytest.approx(total, rel=1e-5)
    assert logs["loss"] == pytest.approx(total, rel=1e-5)


def test_padding_and_prompt_positions_do_not_matter(setup):
    """Changing tokens' labels at masked positions (prompt targets, padding) leaves the loss unchanged."""
    cfg, target, vocab, head = setup
    loss_fn = build_loss(cfg.loss, target, vocab)
    batch = _batch(target, vocab)
    l_a, _ = loss_fn(head, batch, 0)
    b2 = {k: v.clone() for k, v in batch.items()}
    b2["target_hidden"][1, 6:] = torch.randn_like(b2["target_hidden"][1, 6:])  # padding
    b2["features"][1, 6:] = torch.randn_like(b2["features"][1, 6:])
    b2["target_hidden"][:, 0] = torch.randn_like(b2["target_hidden"][:, 0])  # predicts x_1: a prompt token
    l_b, _ = loss_fn(head, b2, 0)
    assert float(l_a.detach()) == pytest.approx(float(l_b.detach()), rel=1e-6)
    b, j = loss_fn.labels(batch)[1].nonzero()[0].tolist()  # a counted label position: must change
    b2["target_hidden"][b, j] *= 0.01  # a much softer label distribution
    l_c, _ = loss_fn(head, b2, 0)
    assert float(l_c.detach()) != pytest.approx(float(l_a.detach()), rel=1e-6)


def test_finalize_logs_sim_tau():
    sums = {
        "n_resp": 10.0,
        "n_valid_0": 4.0,
        "n_correct_0": 2.0,
        "n_valid_1": 4.0,
        "n_correct_1": 1.0,
        "s_ce_0": 3.0,
        "s_ce_1": 5.0,
    }
    out = finalize_logs(sums, 2, 0.8)
    assert out["acc_0"] == 0.5 and out["acc_1"] == 0.25
    assert out["sim_tau"] == pytest.approx(1 + 0.5 + 0.5 * 0.25)
    assert out["loss"] == pytest.approx((3.0 + 0.8 * 5.0) / 10.0)
    assert math.isclose(out["loss_1"], 5.0 / 4.0)
