"""Greedy verification in tensor ops equals the sequential walk it replaces: follow the first child whose token
is the target's argmax, then take the argmax after the last accepted node."""

from __future__ import annotations

import torch

from vsd.decoding.drafter import DraftTree
from vsd.decoding.tree_attention import ancestor_matrix
from vsd.decoding.verify import verify_greedy


def _walk(parents: list[int], tokens: list[int], best: list[int]) -> tuple[list[int], int]:
    path, cur = [], -1
    while True:
        want = best[cur + 1]
        nxt = next((c for c, p in enumerate(parents) if p == cur and tokens[c] == want), None)
        if nxt is None:
            return path, want
        path.append(nxt)
        cur = nxt


def test_tensor_verify_equals_the_walk_on_random_trees():
    g = torch.Generator().manual_seed(0)
    V, long_paths = 5, 0
    for trial in range(300):
        n = int(torch.randint(1, 25, (), generator=g))
        parents = [-1] + [int(torch.randint(-1, i, (), generator=g)) for i in range(1, n)]
        logits = torch.randn(n + 1, V, generator=g)
        best = logits.argmax(-1).tolist()
        # mostly the target's own tokens (long accepted paths), small vocab (equal siblings happen)
        tokens = [
            best[p + 1] if torch.rand((), generator=g) < 0.7 else int(torch.randint(0, V, (), generator=g))
            for p in parents
        ]
        tree = DraftTree(torch.tensor(tokens), torch.tensor(parents))
        ref = _walk(parents, tokens, best)
        assert verify_greedy(tree, logits) == ref, trial
        tree.ancestors = ancestor_matrix(tree.parents)  # as a graphed drafter hands it over
        assert verify_greedy(tree, logits) == ref, trial
        long_paths += len(ref[0]) >= 3
    assert long_paths > 50  # the trees exercised deep accepted paths, not just first-token misses


def test_depth_bound_trees_and_the_empty_tree():
    logits = torch.tensor([[0.0, 3.0], [2.0, 0.0], [0.0, 1.0]])
    tree = DraftTree(torch.tensor([1, 0]), torch.tensor([-1, 0]), depths=torch.tensor([1, 2]), depth_bound=2)
    assert verify_greedy(tree, logits) == ([0, 1], 1)
    empty = torch.zeros(0, dtype=torch.long)
    assert verify_greedy(DraftTree(empty, empty), logits) == ([], 1)
