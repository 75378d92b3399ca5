"""Verification in tensor ops equals the sequential walks it replaced. Greedy: follow the first child whose token
is the target's argmax, then take the argmax after the last accepted node. Sampled: the host walk of recursive
rejection sampling (tests/decoding/tree_reference.py), with the same random numbers."""

from __future__ import annotations

import torch

from tests.decoding.tree_reference import walk_sampled
from vsd.config.schema import DecodingConfig
from vsd.decoding.drafter import DraftTree
from vsd.decoding.tree_attention import ancestor_matrix
from vsd.decoding.verify import children_table, verify_greedy, verify_sampled


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


def test_children_table():
    kids, kmax = children_table([-1, -1, 0, 0, 0, 2])
    assert kids.tolist() == [[0, 1, -1], [2, 3, 4], [-1] * 3, [5, -1, -1], [-1] * 3, [-1] * 3, [-1] * 3]
    assert kmax == (2, 3, 1)
    assert children_table([])[0].shape == (1, 0) and children_table([])[1] == ()


def test_sampled_verify_draws_as_the_host_walk():
    """The eager T > 0 verification (the tensor walk) takes the host walk's path and next token from the same
    generator and leaves it in the same state, on random trees: draft rows near the target's (long accepted
    paths) or not, over the target vocab or a draft vocab, with top-p, and the empty tree."""
    g = torch.Generator().manual_seed(0)
    V, deep = 7, 0
    for trial in range(300):
        n = int(torch.randint(0, 12, (), generator=g))
        parents = [int(torch.randint(-1, i, (), generator=g)) for i in range(n)]
        logits = 2 * torch.randn(n + 1, V, generator=g)
        d = DecodingConfig(temperature=[1.0, 0.7][trial % 2], top_p=[1.0, 0.9][trial % 3 > 0])
        sub = trial % 4 == 0  # a draft vocab of 5 of the 7 tokens
        ids = torch.tensor([0, 2, 3, 5, 6]) if sub else None
        noise = 0.3 if trial % 2 else 3.0
        dist = torch.softmax(
            logits[:, ids if sub else slice(None)]
            + noise * torch.randn(n + 1, len(ids) if sub else V, generator=g),
            -1,
        )
        cols = ids if sub else torch.arange(V)
        tokens = [int(cols[torch.multinomial(dist[p + 1], 1, generator=g)]) for p in parents]
        tree = DraftTree(
            torch.tensor(tokens, dtype=torch.long),
            torch.tensor(parents, dtype=torch.long),
            dist,
            dist_ids=ids,
        )
        seed = 1000 + trial
        a, b = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert verify_sampled(tree, logits, d, a) == walk_sampled(tree, logits, d, b), trial
        assert torch.equal(a.get_state(), b.get_state()), trial
        deep += len(walk_sampled(tree, logits, d, torch.Generator().manual_seed(seed))[0]) >= 2
    assert deep > 20
