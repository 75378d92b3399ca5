"""decoding.shape=auto: the acceptance model's predictions, the choice under different cost profiles, and the
measured path (costs and acceptance on val prompts, cached) on the tiny random model."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.decoding.helpers import one_thread
from vsd.config import compose
from vsd.data.vocab import build_vocab
from vsd.decoding import shape_measure as autoshape
from vsd.decoding.eagle import EagleDrafter
from vsd.decoding.shape import (
    AcceptanceTable,
    CostProfile,
    candidate_shapes,
    choose_shape,
    path_probs_greedy,
    predict_tau,
)
from vsd.decoding.tree import TreeShape, static_template
from vsd.evaluation.metrics import shape_metrics
from vsd.models.draft import build_head
from vsd.models.target import load_target


def _table(rates: list[list[float]], n: float = 1e6) -> AcceptanceTable:
    """A table whose smoothed rates equal ``rates`` (many observations per cell)."""
    r = torch.tensor(rates, dtype=torch.float64)
    return AcceptanceTable(torch.stack([torch.full_like(r, n), r * n], -1))


def _costs(verify_per_node: float, level: float = 0.05) -> CostProfile:
    nodes = [1, 2, 4, 8, 16, 32, 64]
    return CostProfile(
        t1_s=0.03,
        verify_nodes=nodes,
        c_verify=[1.0 + verify_per_node * n for n in nodes],
        c_commit=level,
        c_level={k: [level] * 7 for k in (1, 2, 3, 4, 6, 8)},
    )


def test_predicted_tau_by_hand():
    t = _table([[0.5, 0.25], [0.5, 0.25]])
    # chain of 2: 1 + 0.5 + 0.5 * 0.5
    assert predict_tau(t, 2, 1, 2, 0.0) == pytest.approx(1.75)
    # depth 1, two children: 1 + 0.5 + 0.25 (exclusive events: at most one sibling is accepted)
    assert predict_tau(t, 1, 2, 2, 0.0) == pytest.approx(1.75)
    # T=0, depth 2, k=2, 3 nodes: the best three path probabilities 0.5, 0.25 (rank 1), 0.25 (0 -> 0)
    assert sorted(path_probs_greedy(t, 2, 2, 3)) == pytest.approx([0.25, 0.25, 0.5])
    # T>0: the rank-only template decides the nodes; (2, 2, 3) keeps (0,), (1,), (0, 0)
    assert static_template(2, 2, 3) == ((0,), (1,), (0, 0))
    assert predict_tau(t, 2, 2, 3, 1.0) == pytest.approx(1 + 0.5 + 0.25 + 0.25)
    # depths past the table reuse its last depth; ranks past it never get accepted
    assert t.rate(9, 0) == pytest.approx(0.5) and t.rate(1, 5) == 0.0


def test_smoothing_borrows_the_pooled_rank_rate():
    counts = torch.tensor([[[100.0, 80.0]], [[0.0, 0.0]], [[2.0, 0.0]]], dtype=torch.float64)
    t = AcceptanceTable(counts, prior=4.0)
    pooled = 80 / 102
    assert t.rate(1, 0) == pytest.approx((80 + 4 * pooled) / 104)
    assert t.rate(2, 0) == pytest.approx(pooled)  # never observed: the pooled rate
    assert t.rate(3, 0) == pytest.approx(4 * pooled / 6)  # two observed misses pull it down


def test_cost_profile_interpolates_and_sums_levels():
    c = CostProfile(0.03, [1, 4, 8], [1.0, 1.3, 2.1], 0.1, {2: [0.05, 0.06], 4: [0.07, 0.08]})
    assert c.verify(4) == pytest.approx(1.3) and c.verify(6) == pytest.approx(1.7)
    assert c.verify(12) == pytest.approx(2.9)  # extrapolated along the last segment
    assert c.draft(1, 2) == pytest.approx(0.1)  # the commit only
    assert c.draft(3, 2) == pytest.approx(0.1 + 0.05 + 0.06)
    assert c.draft(4, 3) == pytest.approx(0.1 + 0.07 + 0.08 + 0.08)  # k=3 priced as k=4; depth past: last
    assert CostProfile.from_json(json.loads(json.dumps(c.to_json()))) == c


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_choice_changes_with_the_cost_profile(temperature):
    """Nearly free verification picks a bigger tree than expensive verification, same acceptance."""
    t = _table([[0.6, 0.15, 0.08, 0.05, 0.03, 0.02, 0.01, 0.01]] * 8)
    cands = candidate_shapes(8, 8, 64, chain_only=False)
    cheap, _ = choose_shape(t, _costs(0.001), temperature, cands)
    dear, _ = choose_shape(t, _costs(0.08), temperature, cands)
    assert cheap.total > dear.total and cheap.pred_tau > dear.pred_tau
    # the bound is the predicted tau over the predicted step cost
    c = _costs(0.08)
    assert dear.pred_bound == pytest.approx(
        dear.pred_tau / (c.verify(dear.total) + c.draft(dear.depth, dear.top_k))
    )
    # and expensive draft levels make the tree shallower
    shallow, _ = choose_shape(t, _costs(0.01, level=0.3), temperature, cands)
    deep, _ = choose_shape(t, _costs(0.01, level=0.01), temperature, cands)
    assert shallow.depth < deep.depth


def test_choice_follows_acceptance():
    """A draft whose top-1 is nearly always right gets a deep, narrow tree; a flatter one a wider tree."""
    cands = candidate_shapes(8, 8, 64, chain_only=False)
    sharp, _ = choose_shape(_table([[0.95, 0.01, 0.0, 0.0]] * 8), _costs(0.02), 0.0, cands)
    flat, _ = choose_shape(_table([[0.4, 0.2, 0.15, 0.1]] * 8), _costs(0.02), 0.0, cands)
    assert sharp.depth > flat.depth and flat.top_k > sharp.top_k == 1


def test_candidates_respect_the_limits():
    cands = candidate_shapes(4, 3, 10, chain_only=False)
    assert all(s.depth <= 4 and s.top_k <= 3 and s.total <= 10 for s in cands)
    assert all(s.total <= s.top_k + (s.depth - 1) * s.top_k**2 for s in cands)
    assert {(s.depth, s.total) for s in cands if s.top_k == 1} == {(d, d) for d in range(1, 5)}
    assert all(s.top_k == 1 for s in candidate_shapes(4, 3, 10, chain_only=True))


@pytest.fixture(scope="module")
def tiny_drafter():
    _, cfg = compose(["model=tiny_random"])[0]
    target = load_target(cfg.model, cfg.paths.cache_dir, "cpu", "float32")
    head = build_head(target, cfg.model.draft, build_vocab(torch.ones(target.vocab_size), 200)["d2t"], 0)
    with one_thread():
        yield cfg, target, EagleDrafter(head)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_measured_auto_shape_on_the_tiny_model(tiny_drafter, tmp_path, monkeypatch, temperature):
    """The whole measured path: val prompts, costs through the real runners, the cache, a re-measurement."""
    cfg, target, drafter = tiny_drafter
    dcfg = dataclasses.replace(
        cfg.decoding,
        shape="auto",
        temperature=temperature,
        shape_max_depth=3,
        shape_max_top_k=2,
        shape_max_nodes=6,
        shape_prompts=2,
        shape_max_new=6,
    )
    choice = autoshape.resolve_shape(target, drafter, dcfg, tmp_path, log=lambda *_: None)
    info, chosen = choice.report, choice.decoding(dcfg)
    assert info["mode"] == "auto" and 1 <= info["depth"] <= 3 and info["top_k"] <= 2 and info["nodes"] <= 6
    assert (chosen.depth, chosen.top_k, chosen.total_tokens) == (info["depth"], info["top_k"], info["nodes"])
    assert choice.shape == TreeShape(info["depth"], info["top_k"], info["nodes"]) == TreeShape.of(chosen)
    assert info["pred_tau"] >= 1.0 and info["pred_bound"] > 0
    assert info["key"]["draft"] == autoshape.weights_hash(drafter.head)
    cached = list((tmp_path / "shapes").glob("*.json"))
    assert len(cached) == 1
    data = json.loads(cached[0].read_text())
    assert data["costs"]["verify_nodes"] == [1, 2, 3, 4, 6] and set(data["costs"]["c_level"]) == {"1", "2"}
    assert torch.tensor(data["acceptance"]["counts"])[0, :, 0].sum() > 0  # root children were observed

    def boom(*a, **k):
        raise AssertionError("measured again although cached")

    monkeypatch.setattr(autoshape, "measure", boom)
    again = autoshape.resolve_shape(target, drafter, dcfg, tmp_path, log=lambda *_: None)
    assert again.shape == choice.shape and again.decoding(dcfg) == chosen
    assert again.report["pred_bound"] == info["pred_bound"]
    with pytest.raises(AssertionError, match="measured again"):
        autoshape.resolve_shape(
            target, drafter, dataclasses.replace(dcfg, shape_remeasure=True), tmp_path, log=lambda *_: None
        )
    metrics = shape_metrics(info)
    assert metrics["eval/shape_nodes"] == info["nodes"] and "eval/shape_pred_bound" in metrics


def test_fixed_shape_and_drafters_without_a_model(tiny_drafter):
    cfg, target, drafter = tiny_drafter
    fixed = dataclasses.replace(cfg.decoding, shape="fixed")  # the default tree is auto
    choice = autoshape.resolve_shape(target, drafter, fixed, None)
    info = choice.report
    assert choice.decoding(fixed) is fixed and info == {"mode": "fixed", "depth": 5, "top_k": 8, "nodes": 32}
    assert choice.shape == TreeShape(5, 8, 32)
    assert "eval/shape_pred_tau" not in shape_metrics(info)
    from vsd.decoding.ngram import NgramDrafter

    auto = dataclasses.replace(cfg.decoding, shape="auto")
    choice = autoshape.resolve_shape(target, NgramDrafter(target.vocab_size), auto, None, log=lambda *_: None)
    assert choice.decoding(auto) is auto and "auto_skipped" in choice.report
