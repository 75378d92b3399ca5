"""loss=vsd on the tiny random target: draft path computation, exact EAGLE-3 reduction, gradients, learning."""

from __future__ import annotations

import copy

import pytest
import torch

from vsd.config import compose
from vsd.data.vocab import build_vocab, token_counts
from vsd.features.dataset import collate
from vsd.losses import build_loss
from vsd.losses.vsd import select_anchors
from vsd.models.draft import build_head
from vsd.train.toy_data import make_toy_items


def _cfg(*over: str):
    return compose(["model=tiny_random", "loss=vsd", "train.init_from=/nonexistent", *over])[0][1]


@pytest.fixture(scope="module")
def setup(tiny_target):
    torch.manual_seed(0)
    cfg = _cfg()
    items = make_toy_items(tiny_target, 8, prompt_len=8, new_tokens=24, seed=0)
    # the whole byte range in the draft vocab, so ground-truth paths are representable
    vocab = build_vocab(token_counts(items, tiny_target.vocab_size) + 1, cfg.model.draft.vocab_size)
    head = build_head(tiny_target, cfg.model.draft, vocab["d2t"], seed=0)
    return tiny_target, vocab, head, collate(items)


def _mean_U(loss, head, batch, seed: int = 0) -> float:
    loss.generator.manual_seed(seed)
    anchors, valid = select_anchors(batch, loss.cfg.anchors_per_seq, loss.generator)
    e = loss.estep(head, batch, anchors, valid)
    return float(e["U"].float()[valid].mean())


def test_draft_paths_match_ttt_unroll_on_ground_truth(setup):
    """A sampled-path step k after anchor i must equal TTT step k at position i-1 for the same tokens."""
    target, vocab, head, batch = setup
    cfg = _cfg("loss.depth=4", "loss.num_samples=1", "loss.anchors_per_seq=3")
    loss = build_loss(cfg.loss, target, vocab)
    anchors = torch.tensor([[9, 14, 20]] * batch["input_ids"].shape[0])
    gt = torch.stack([batch["input_ids"][:, anchors[0] + t] for t in range(1, 5)], dim=-1)  # (B, A, D)
    z = vocab["t2d"][gt]
    assert (z >= 0).all()
    with torch.no_grad():
        _, _, outs = loss._draft_paths(head, batch, anchors, z.view(z.shape[0], 3, 4))
        d_out, _, _ = loss.unroll(head, batch)
    for t in range(4):
        ref = d_out[t][:, anchors[0] - 1]  # (B, A, V_d)
        assert torch.allclose(outs[1 + t], ref, atol=1e-4), t


def test_vsd_weight_zero_car_off_is_eagle3_exactly(setup):
    target, vocab, head, batch = setup
    e3 = build_loss(compose(["model=tiny_random", "loss=eagle3"])[0][1].loss, target, vocab)
    vsd = build_loss(_cfg("loss.vsd_weight=0", "loss.car=false").loss, target, vocab)
    grads = []
    for loss in (e3, vsd):
        head.zero_grad()
        val, logs = loss(head, batch, 5)
        val.backward()
        grads.append((val.detach(), [p.grad.clone() for p in head.parameters() if p.requires_grad]))
        assert not any(k.startswith("vsd/") for k in logs)
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1]))


def test_vsd_start_step_and_gradients_only_into_draft(setup):
    target, vocab, head, batch = setup
    e3 = build_loss(compose(["model=tiny_random", "loss=eagle3"])[0][1].loss, target, vocab)
    loss = build_loss(_cfg("loss.vsd_start_step=3", "loss.car=true").loss, target, vocab)
    before, logs0 = loss(head, batch, 2)
    assert torch.equal(before.detach(), e3(head, batch, 2)[0].detach()) and "vsd/mean_U" not in logs0
    head.zero_grad()
    val, logs = loss(head, batch, 3)
    for k in (
        "vsd/mean_U",
        "vsd/kept_frac",
        "vsd/ess",
        "vsd/arw_beta",
        "vsd/car",
        "vsd/m_loss",
        "vsd/estep_s",
    ):
        assert k in logs
    assert logs["vsd/car"] > 0 and logs["loss"] != before.item()
    val.backward()
    assert all(p.grad is None for p in target.model.parameters())
    assert head.embed_tokens.weight.grad is None
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)
    anchors, valid = select_anchors(batch, 4, loss.generator)
    e = loss.estep(head, batch, anchors, valid)
    for x in (e["z"], e["U"], e["tw"], e["w"].w, e["hidden"], e["greedy"]):
        assert not x.requires_grad


def test_stochastic_verification_runs(setup):
    target, vocab, head, batch = setup
    loss = build_loss(_cfg("loss.verify_temperature=1.0", "loss.proposal_top_k=20").loss, target, vocab)
    val, logs = loss(head, batch, 0)
    assert torch.isfinite(val) and 0 <= logs["vsd/kept_frac"] <= 1 and logs["vsd/mean_U"] <= 5


@pytest.mark.slow  # ~15 s idle, ~100 s on the shared 2-core box
def test_vsd_steps_raise_mean_accepted_length(setup):
    target, vocab, head0, batch = setup
    head = copy.deepcopy(head0)
    params = [p for p in head.parameters() if p.requires_grad]
    e3 = build_loss(compose(["model=tiny_random", "loss=eagle3"])[0][1].loss, target, vocab)
    opt = torch.optim.AdamW(params, lr=3e-3)
    for s in range(10):  # warm start: a briefly EAGLE-3-trained draft (mean U ~ 2 of 5)
        opt.zero_grad()
        e3(head, batch, s)[0].backward()
        opt.step()
    cfg = _cfg("loss.num_samples=8", "loss.anchors_per_seq=8", "loss.vsd_weight=1.0", "loss.car=false")
    vsd = build_loss(cfg.loss, target, vocab)
    u0 = _mean_U(vsd, head, batch)
    opt = torch.optim.AdamW(params, lr=3e-3)
    for s in range(5):
        opt.zero_grad()
        val, logs = vsd(head, batch, s)
        val.backward()
        opt.step()
    u1 = _mean_U(vsd, head, batch)
    assert u0 > 0.1, u0  # the warm start accepts something: VSD has signal
    assert u1 > u0 + 0.3, (u0, u1)
