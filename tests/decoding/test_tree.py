"""The EAGLE-2 dynamic tree (greedy) and the rank-only template used at T>0, held to the host reference."""

from __future__ import annotations

import pytest
import torch

from tests.decoding.tree_reference import NodePool, build_dynamic_tree
from vsd.config.schema import DecodingConfig
from vsd.decoding.tree import (
    TreeShape,
    grow_greedy,
    static_template,
)
from vsd.decoding.tree_attention import ancestor_matrix, ancestors_by_hops, node_depths


def _expand_fixed(pool: NodePool, V: int = 7):
    """Children log-probs that depend on (depth, parent token) only: a deterministic toy drafter."""
    calls = []

    def expand(idx):
        calls.append(idx.tolist())
        rows = []
        for i in idx.tolist():
            d = 0 if i < 0 else pool.depths[i]
            t = 0 if i < 0 else pool.tokens[i]
            g = torch.Generator().manual_seed(100 * d + t)
            rows.append(torch.log_softmax(2 * torch.randn(V, generator=g), -1))
        return torch.stack(rows)

    return expand, calls


def test_greedy_tree_keeps_best_cumulative_nodes():
    d = DecodingConfig(mode="tree", depth=3, top_k=3, total_tokens=8)
    pool = NodePool()
    expand, calls = _expand_fixed(pool)
    tree = build_dynamic_tree(expand, d, None, pool)
    assert tree.size == 8 and len(calls) == 3 and all(len(c) <= 3 for c in calls)
    assert (
        len(pool.tokens) == TreeShape.of(d).pool_nodes == 3 + 2 * 9
    )  # the bound static draft buffers are sized by
    par = tree.parents.tolist()
    assert all(p < i for i, p in enumerate(par))  # topological
    kept = pool.kept
    assert [pool.tokens[k] for k in kept] == tree.tokens.tolist()
    worst_kept = min(pool.scores[k] for k in kept)
    assert all(pool.scores[i] <= worst_kept for i in range(len(pool.tokens)) if i not in kept)
    for i, p in enumerate(par):  # siblings in decreasing draft probability
        sib = [j for j in range(i) if par[j] == p]
        assert all(pool.scores[kept[j]] >= pool.scores[kept[i]] for j in sib)
    assert int(node_depths(tree.parents).max()) <= 3


def test_chain_mode_is_a_single_path():
    d = DecodingConfig(mode="chain", depth=4, top_k=8, total_tokens=32)
    pool = NodePool()
    expand, _ = _expand_fixed(pool)
    tree = build_dynamic_tree(expand, d, None, pool)
    assert tree.parents.tolist() == [-1, 0, 1, 2]


def test_sampled_tree_shape_depends_on_ranks_only():
    d = DecodingConfig(mode="tree", depth=3, top_k=3, total_tokens=8, temperature=1.0)
    tmpl = static_template(3, 3, 8)
    assert len(tmpl) == 8 and all(p[:-1] in tmpl or len(p) == 1 for p in tmpl)
    shapes = set()
    for seed in range(5):
        pool = NodePool()
        expand, _ = _expand_fixed(pool)
        tree = build_dynamic_tree(expand, d, torch.Generator().manual_seed(seed), pool)
        shapes.add(tuple(tree.parents.tolist()))
        assert tree.child_dists is not None and tree.child_dists.shape == (9, 7)
        ch: dict[int, list[int]] = {}
        for i, p in enumerate(tree.parents.tolist()):
            ch.setdefault(p, []).append(int(tree.tokens[i]))
        assert all(len(set(v)) == len(v) for v in ch.values())  # siblings drawn without replacement
    assert len(shapes) == 1  # different samples, same shape (full support here)


def _toy_logp(depth: int, token: int, V: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 * depth + token)
    return torch.log_softmax(2 * torch.randn(V, generator=g), -1)


@pytest.mark.parametrize(
    "mode,depth,k,total", [("tree", 3, 3, 8), ("tree", 4, 2, 9), ("tree", 5, 4, 30), ("chain", 4, 8, 32)]
)
def test_tensor_builder_grows_the_host_builders_tree(mode, depth, k, total):
    """grow_greedy (tensor ops, capturable) keeps exactly the nodes build_dynamic_tree keeps, in its order."""
    d = DecodingConfig(mode=mode, depth=depth, top_k=k, total_tokens=total)
    pool = NodePool()
    expand, calls = _expand_fixed(pool)
    ref = build_dynamic_tree(expand, d, None, pool)

    seen = []

    def expand_level(idx, level, tp):
        assert (tp.depths[idx] == level).all()
        seen.append(idx.tolist())
        return torch.stack([_toy_logp(int(tp.depths[i]), int(tp.tokens[i])) for i in idx])

    depth_, k_, total_ = TreeShape.of(d)
    tree, tp = grow_greedy(_toy_logp(0, 0)[None], expand_level, depth_, k_, total_)
    assert tree.tokens.tolist() == ref.tokens.tolist() and tree.parents.tolist() == ref.parents.tolist()
    assert tree.ranks.tolist() == ref.ranks.tolist() and tree.logq.tolist() == ref.logq.tolist()
    assert seen == calls[1:]
    assert tp.tokens.tolist() == pool.tokens and tp.scores.tolist() == pool.scores
    assert tree.depths.tolist() == node_depths(tree.parents).tolist() and tree.depth_bound == depth_
    assert torch.equal(tree.ancestors, ancestor_matrix(tree.parents))


def test_ancestors_by_hops_equals_the_host_walk():
    g = torch.Generator().manual_seed(0)
    for n in (1, 5, 30):
        parents = torch.tensor([-1] + [int(torch.randint(-1, i, (), generator=g)) for i in range(1, n)])
        depth = int(node_depths(parents).max())
        assert torch.equal(ancestors_by_hops(parents, depth), ancestor_matrix(parents))
        assert not torch.equal(ancestors_by_hops(parents, 1), ancestor_matrix(parents)) or depth == 1
