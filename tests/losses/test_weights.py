"""VSD E-step arithmetic on hand-computed cases: U, the oracle filter, importance weights, ESS, ARW, CAR."""

from __future__ import annotations

import math

import torch

from vsd.losses.car import car_loss, target_confidence
from vsd.losses.weights import (
    accepted_lengths,
    arw_weights,
    estep_weights,
    expected_utility,
    group_ess,
    importance_log_weights,
    kept_token_mask,
    normalise_groups,
)


def test_accepted_lengths_and_filter():
    acc = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    U = accepted_lengths(acc)
    assert U.tolist() == [2, 0, 4]
    kept = kept_token_mask(U, 4, oracle_filter=True)
    assert kept.tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
    assert kept_token_mask(U, 4, oracle_filter=False).all()
    # expected utility of stochastic acceptance: 0.5 + 0.5*0.5 + 0 = 0.75
    assert math.isclose(float(expected_utility(torch.tensor([0.5, 0.5, 0.0]))), 0.75)


def test_importance_log_weights_clip_and_normalise():
    logp = torch.tensor([[[-1.0, -2.0, -0.5], [-0.1, -0.1, -9.0]]])  # (G=1, S=2, D=3)
    logq = torch.tensor([[[-2.0, -1.0, -3.0], [-3.0, -4.0, -0.1]]])
    kept = torch.tensor([[[1, 1, 0], [1, 1, 1]]], dtype=torch.bool)
    lw = importance_log_weights(logp, logq, kept, clip=5.0)
    # sample 0: (1) + (-1) = 0; sample 1: 2.9 + 3.9 - 8.9 = -2.1
    assert torch.allclose(lw, torch.tensor([[0.0, -2.1]]), atol=1e-6)
    assert torch.allclose(importance_log_weights(logp, logq, kept, clip=1.0), torch.tensor([[0.0, -1.0]]))
    w = normalise_groups(lw, torch.tensor([[True, True]]))
    e = math.exp(-2.1)
    assert torch.allclose(w, torch.tensor([[1 / (1 + e), e / (1 + e)]]), atol=1e-6)


def test_ess_hand_values():
    w = torch.tensor([[0.5, 0.25, 0.25], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(group_ess(w), torch.tensor([1 / 0.375, 1.0, 0.0]))


def test_arw_bisection_hand_value():
    # one group, U = [1, 2], D = 2: w = [e^{b/2}, e^{b}] normalised; ESS = 0.8 * 2 = 1.6 <=> w_2 = 0.75
    # <=> e^{-b/2} = 1/3 <=> b = 2 ln 3
    w, beta = arw_weights(
        torch.zeros(1, 2), torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.bool), 2, 0.8
    )
    assert math.isclose(beta, 2 * math.log(3), rel_tol=1e-5)
    assert torch.allclose(w, torch.tensor([[0.25, 0.75]]), atol=1e-5)


def test_arw_reaches_target_ess_nonnegative_normalised():
    g = torch.Generator().manual_seed(0)
    G, S, D = 6, 8, 5
    U = torch.randint(0, D + 1, (G, S), generator=g)
    U[1:, 0], U[1:, 1] = 0, 4  # spread U in groups 1..
    U[0] = 3  # one group with all-equal U: beta cannot change it, it is excluded from the ESS target
    kept = kept_token_mask(U, D, oracle_filter=True)
    logp, logq = -torch.rand(G, S, D, generator=g), -torch.rand(G, S, D, generator=g)
    base = estep_weights(
        U, kept, logp, logq, importance=True, log_weight_clip=5.0, arw=False, arw_target_ess=1
    )
    ess_base = float(group_ess(base.w)[1:].sum())  # groups 1.. all have spread U here
    for target in (0.3, 0.6, 0.9):
        out = estep_weights(
            U, kept, logp, logq, importance=True, log_weight_clip=5.0, arw=True, arw_target_ess=target
        )
        valid = kept.any(-1)
        assert (out.w >= 0).all() and (out.w[~valid] == 0).all()
        assert torch.allclose(out.w.sum(-1)[valid.any(-1)], torch.ones(int(valid.any(-1).sum())), atol=1e-5)
        lo, hi = U.float().where(valid, 99).amin(-1), U.float().where(valid, -1).amax(-1)
        adapt = valid.any(-1) & (hi > lo)
        ess = float(group_ess(out.w)[adapt].sum())
        want = target * float(valid[adapt].sum())
        if ess_base > want:  # ARW sharpens until the ESS target is met exactly
            assert out.beta > 0
            assert math.isclose(ess, want, rel_tol=1e-4), (target, ess)
        else:  # the importance weights alone are already below the target: ARW leaves them (beta = 0)
            assert out.beta == 0.0 and torch.allclose(out.w, base.w)
    # larger target ESS -> smaller beta (flatter weights)
    b = [
        estep_weights(
            U, kept, logp, logq, importance=True, log_weight_clip=5.0, arw=True, arw_target_ess=t
        ).beta
        for t in (0.3, 0.6)
    ]
    assert b[0] > b[1]


def test_arw_uniform_when_all_U_equal():
    U = torch.full((3, 4), 2)
    kept = kept_token_mask(U, 4, oracle_filter=True)
    out = estep_weights(
        U, kept, None, None, importance=False, log_weight_clip=5.0, arw=True, arw_target_ess=0.5
    )
    assert out.beta == 0.0
    assert torch.allclose(out.w, torch.full((3, 4), 0.25))
    assert math.isclose(out.ess_frac, 1.0)
    # filter drops U = 0 paths: the rest stay uniform among themselves
    U2 = torch.tensor([[0, 2, 2, 0]])
    out2 = estep_weights(
        U2,
        kept_token_mask(U2, 4, True),
        None,
        None,
        importance=False,
        log_weight_clip=5.0,
        arw=True,
        arw_target_ess=0.5,
    )
    assert out2.w.tolist() == [[0.0, 0.5, 0.5, 0.0]] and out2.num_kept == 2


def test_car_zero_when_equal_positive_otherwise_weighted_by_confidence():
    torch.manual_seed(0)
    p = torch.randn(4, 10) * 3
    assert float(car_loss(p.clone(), p)) < 1e-6
    q = torch.randn(4, 10, requires_grad=True)
    val = car_loss(q, p)
    assert val.item() > 0
    val.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    # weighting: c_t * KL(q||p), c_t = 1 - H(p)/log V
    lq, lp = q.detach().log_softmax(-1), p.log_softmax(-1)
    kl = (lq.exp() * (lq - lp)).sum(-1)
    c = 1 + (lp.exp() * lp).sum(-1) / math.log(10)
    assert torch.allclose(target_confidence(p), c, atol=1e-6)
    assert math.isclose(float(val.detach()), float((c * kl).mean().detach()), rel_tol=1e-5)
    # a uniform target (c = 0) exerts no pull however different q is
    assert float(car_loss(q, torch.zeros(4, 10)).detach()) < 1e-6
    # the mask selects positions
    m = torch.tensor([1, 0, 0, 1])
    assert math.isclose(
        float(car_loss(q, p, m).detach()), float((c * kl)[[0, 3]].mean().detach()), rel_tol=1e-5
    )
