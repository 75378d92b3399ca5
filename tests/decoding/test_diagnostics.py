"""Draft diagnostics: sibling ranks and log-probs on every tree, and per step the accepted rank path and the
per-depth calibration bins (hand-built trees), recorded through the engine."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tests.decoding.helpers import OracleDrafter
from tests.decoding.tree_reference import NodePool, build_dynamic_tree
from vsd.config.schema import DecodingConfig
from vsd.decoding.diagnostics import CALIB_BINS, DraftStats
from vsd.decoding.drafter import DraftTree
from vsd.decoding.engine import generate_spec
from vsd.decoding.sampling import warp
from vsd.decoding.tree import grow_greedy, grow_sampled
from vsd.decoding.tree_attention import node_depths


def _hand_tree() -> DraftTree:
    """root -> A (rank 0, q .65), B (rank 1, q .35); A -> C (rank 0, q .95), D (rank 1, q .05); B -> E (rank 0,
    q .55)."""
    return DraftTree(
        tokens=torch.tensor([10, 11, 12, 13, 14]),
        parents=torch.tensor([-1, -1, 0, 0, 1]),
        ranks=torch.tensor([0, 1, 0, 1, 0]),
        logq=torch.tensor([0.65, 0.35, 0.95, 0.05, 0.55]).log(),
    )


def test_stats_of_a_hand_built_tree():
    s = DraftStats(depth=3, ranks=2)
    depth, ranks = s.add(_hand_tree(), [0, 3])  # A, then D accepted
    assert (depth, ranks) == (2, [0, 1])
    assert s.add(_hand_tree(), []) == (2, [])  # nothing accepted: only the root's children count
    res = type("R", (), {})()
    res.calib, res.rank_counts = s.finish()
    calib, rc = res.calib, res.rank_counts
    assert calib.shape == (3, CALIB_BINS, 3) and rc.shape == (3, 2, 2)
    # depth 1 (both steps): A in bin 6 (accepted once), B in bin 3 (never); depth 2 (first step only, A was
    # accepted): C in bin 9 (rejected), D in bin 0 (accepted); E never counts (B was never accepted)
    want = torch.zeros(3, CALIB_BINS, 3, dtype=torch.float64)
    want[0, 6] = torch.tensor([2, 1.3, 1])
    want[0, 3] = torch.tensor([2, 0.7, 0])
    want[1, 9] = torch.tensor([1, 0.95, 0])
    want[1, 0] = torch.tensor([1, 0.05, 1])
    torch.testing.assert_close(calib, want)
    assert rc[0].tolist() == [[2, 1], [2, 0]] and rc[1].tolist() == [[1, 0], [1, 1]] and rc[2].sum() == 0


def test_trees_without_ranks_and_the_empty_tree():
    s = DraftStats(depth=2, ranks=1)
    bare = DraftTree(torch.tensor([1, 2]), torch.tensor([-1, 0]))
    assert s.add(bare, [0, 1]) == (2, [])
    assert s.add(DraftTree(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)), []) == (0, [])
    assert s.calib is None
    chain = DraftTree.chain([4, 5, 6])  # the n-gram drafter's point mass: rank 0, log-prob 0
    assert s.add(chain, [0]) == (3, [0])  # the true depth; the bins clamp it to the recorder's bound
    assert s.calib.view(2, CALIB_BINS, 3)[0, CALIB_BINS - 1].tolist() == [1.0, 1.0, 1.0]


def _toy(depth: int, token: int, V: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 * depth + token)
    return torch.log_softmax(2 * torch.randn(V, generator=g), -1)


def test_builders_record_ranks_and_logq():
    d = DecodingConfig(mode="tree", depth=3, top_k=3, total_tokens=8)
    pool = NodePool()

    def expand(idx):
        return torch.stack(
            [_toy(0 if i < 0 else pool.depths[i], 0 if i < 0 else pool.tokens[i]) for i in idx]
        )

    host = build_dynamic_tree(expand, d, None, pool)

    def expand_level(idx, level, tp):
        return torch.stack([_toy(int(tp.depths[i]), int(tp.tokens[i])) for i in idx])

    dev, _ = grow_greedy(_toy(0, 0)[None], expand_level, 3, 3, 8)
    for tree in (host, dev):
        par, toks, depths = tree.parents.tolist(), tree.tokens.tolist(), node_depths(tree.parents).tolist()
        for i, p in enumerate(par):
            row = _toy(0, 0) if p < 0 else _toy(depths[p], toks[p])
            assert float(tree.logq[i]) == pytest.approx(float(row[toks[i]]))
            assert int(tree.ranks[i]) == int(
                (row > row[toks[i]]).sum()
            )  # rank = better siblings by the draft
    assert host.ranks.tolist() == dev.ranks.tolist()

    # T>0: ranks are the sampling order among siblings, logq the warped distribution's log-prob
    ds = dataclasses.replace(d, temperature=0.8, top_p=0.9)
    t = grow_sampled(_toy(0, 0)[None], expand_level, ds, torch.Generator().manual_seed(3))
    par = t.parents.tolist()
    for i, p in enumerate(par):
        sib = [j for j in range(len(par)) if par[j] == p]
        assert int(t.ranks[i]) == sib.index(i)
        q = t.child_dists[p + 1]
        assert math.exp(float(t.logq[i])) == pytest.approx(float(q[int(t.tokens[i])]), rel=1e-5)
        ptok = 0 if p < 0 else int(t.tokens[p])
        torch.testing.assert_close(q, warp(_toy(0 if p < 0 else int(t.depths[p]), ptok), 0.8, 0, 0.9))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_engine_records_rank_paths_and_calibration(tiny, temperature):
    target, cfg = tiny
    d = dataclasses.replace(
        cfg.decoding, temperature=temperature, depth=3, top_k=3, total_tokens=8, max_new_tokens=24
    )
    ids = target.tokenizer("the cat sat on the mat. the cat sat on the")["input_ids"]
    res = generate_spec(
        target, OracleDrafter(target, 0.6), ids, d, generator=torch.Generator().manual_seed(0)
    )
    assert len(res.accepted_ranks) == len(res.accepted)
    assert [len(r) for r in res.accepted_ranks] == res.accepted
    assert any(r for r in res.accepted_ranks) and all(0 <= x < 3 for r in res.accepted_ranks for x in r)
    calib, rc = res.calib, res.rank_counts
    steps = len(res.accepted)
    # every step counts each of the root's children at depth 1
    assert calib[0, :, 0].sum() == rc[0, :, 0].sum() >= 2 * steps
    # accepted counts agree with the steps' accepted lengths, per depth
    for k in range(1, 4):
        assert calib[k - 1, :, 2].sum() == sum(a >= k for a in res.accepted) == rc[k - 1, :, 1].sum()
    assert (calib[..., 1] <= calib[..., 0] + 1e-9).all()  # confidences lie in [0, 1]
