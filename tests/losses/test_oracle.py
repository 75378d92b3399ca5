"""The VSD oracle (one batched target forward over all paths) against a separate forward per path."""

from __future__ import annotations

import pytest
import torch

from vsd.config import compose
from vsd.losses.oracle import run_oracle
from vsd.models.target import load_target


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    _, cfg = compose(["model=tiny_random"])[0]
    return load_target(cfg.model, str(tmp_path_factory.mktemp("cache")), "cpu", "float32")


def _batch(vocab: int, B: int = 2, T: int = 14, A: int = 3, S: int = 3, D: int = 4):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    am = torch.ones(B, T, dtype=torch.long)
    am[1, 10:] = 0  # right padding on the second row
    anchors = torch.tensor([[2, 7, 12], [1, 5, 9]])
    paths = torch.randint(0, vocab, (B, A, S, D), generator=g)
    return ids, am, anchors, paths


def _brute(model, ids, anchors, paths, T):
    B, A, S, D = paths.shape
    logp = torch.empty(B, A, S, D)
    greedy = torch.empty(B, A, S, D, dtype=torch.long)
    for b in range(B):
        for a in range(A):
            i = int(anchors[b, a])
            for s in range(S):
                x = torch.cat([ids[b, : i + 1], paths[b, a, s]])[None]
                logits = model(input_ids=x).logits[0, i : i + D].float()
                greedy[b, a, s] = logits.argmax(-1)
                logp[b, a, s] = torch.log_softmax(logits / T, -1).gather(-1, paths[b, a, s, :, None])[:, 0]
    return logp, greedy


def test_oracle_matches_per_path_forwards(target):
    ids, am, anchors, paths = _batch(target.vocab_size)
    with torch.no_grad():
        out = run_oracle(target.model, ids, am, anchors, paths, verify_temperature=0.0)
        ref_lp, ref_g = _brute(target.model, ids, anchors, paths, 1.0)
    assert torch.allclose(out.logp, ref_lp, atol=1e-4, rtol=0)
    assert torch.equal(out.greedy, ref_g)
    assert torch.equal(out.accept_prob, (paths == ref_g).float())


def test_oracle_greedy_paths_fully_accepted_and_stochastic_ratio(target):
    ids, am, anchors, paths = _batch(target.vocab_size, S=2)
    with torch.no_grad():
        first = run_oracle(target.model, ids, am, anchors, paths, verify_temperature=0.0)
        # rebuild each path greedily token by token: then every token must be accepted
        greedy_paths = paths.clone()
        for t in range(paths.shape[-1]):
            o = run_oracle(target.model, ids, am, anchors, greedy_paths, verify_temperature=0.0)
            greedy_paths[..., t] = o.greedy[..., t]
        o = run_oracle(target.model, ids, am, anchors, greedy_paths, verify_temperature=0.0)
        assert o.accept_prob.min() == 1.0
        assert first.accept_prob.mean() < 1.0  # random paths are not all accepted: the check can fail
        T = 0.7
        logq = torch.full(paths.shape, -3.0)
        st = run_oracle(target.model, ids, am, anchors, paths, verify_temperature=T, proposal_logq=logq)
        ref_lp, _ = _brute(target.model, ids, anchors, paths, T)
    assert torch.allclose(st.logp, ref_lp, atol=1e-4, rtol=0)
    assert torch.allclose(st.accept_prob, (ref_lp + 3.0).clamp_max(0).exp(), atol=1e-4)
