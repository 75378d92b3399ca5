"""``decoding.ngram_branch``: prompt lookup's continuation as one more branch of a model drafter's tree (T = 0).

A small draft head wins where the next tokens must be predicted; prompt lookup wins where the output copies
the prompt (translation, code edits, summaries quoting their source) and costs nothing to draft. One verify
forward can test both: the continuation that prompt lookup would propose (vsd.decoding.ngram) is added to the
model's tree, sharing the nodes the tree already holds and hanging its remaining tokens below the last shared
one. Verification is unchanged (it accepts any tree), so decoding stays lossless, and each step verifies at most
``ngram_branch`` more nodes. The accepted length of a step is the longer of what the tree and the lookup would
have accepted alone.

At T > 0 the model's tree is used alone: recursive rejection sampling needs the draft distribution of every
sibling it tries, and a lookup has none to offer besides a point mass that would have to be mixed into the
draft's rows.
"""

from __future__ import annotations

import torch

from vsd.config.schema import DecodingConfig
from vsd.decoding.drafter import DraftTree
from vsd.decoding.ngram import NgramDrafter
from vsd.decoding.tree import TreeShape
from vsd.decoding.tree_attention import ancestors_by_hops, node_depths


def add_branch(tree: DraftTree, chain: list[int], rank: int) -> DraftTree:
    """``tree`` plus the path ``chain`` from the root: chain tokens the tree already holds along that path are
    shared, the rest are new nodes (rank ``rank``, draft log-prob 0: a point mass) appended in order."""
    if not chain:
        return tree
    toks, pars = tree.tokens.tolist(), tree.parents.tolist()
    cur, j = -1, 0
    while j < len(chain):
        nxt = next((i for i, (t, p) in enumerate(zip(toks, pars)) if p == cur and t == chain[j]), None)
        if nxt is None:
            break
        cur, j = nxt, j + 1
    extra = chain[j:]
    if not extra:
        return tree
    n = len(toks)
    dev = tree.tokens.device
    parents = torch.cat([tree.parents, torch.tensor([cur, *range(n, n + len(extra) - 1)], device=dev)])
    depths = node_depths(parents.cpu()).to(dev)
    opt = {}
    if tree.ranks is not None:
        opt["ranks"] = torch.cat(
            [tree.ranks, torch.full((len(extra),), rank, dtype=tree.ranks.dtype, device=dev)]
        )
    if tree.logq is not None:
        opt["logq"] = torch.cat(
            [tree.logq, torch.zeros(len(extra), dtype=tree.logq.dtype, device=tree.logq.device)]
        )
    bound = int(depths.max())
    return DraftTree(
        tokens=torch.cat([tree.tokens, torch.tensor(extra, dtype=tree.tokens.dtype, device=dev)]),
        parents=parents,
        child_dists=None,
        depths=depths,
        depth_bound=bound,
        ancestors=ancestors_by_hops(parents, bound),
        dist_ids=tree.dist_ids,
        **opt,
    )


class LookupBranchDrafter:
    """A model drafter (the Drafter protocol) whose T = 0 trees gain prompt lookup's continuation as a branch.

    Everything else (features, commits, ``head_in``) is the wrapped drafter's; the lookup keeps its own history of
    prompt + committed tokens."""

    def __init__(self, inner, vocab_size: int):
        self.inner = inner
        self.lookup = NgramDrafter(vocab_size)
        self.name = f"{inner.name}+lookup"
        self.needs_features = inner.needs_features

    def __getattr__(self, attr: str):  # head, head_in, runner, ...: the model drafter's
        return getattr(self.inner, attr)

    def extra_nodes(self, dcfg: DecodingConfig) -> int:
        return dcfg.ngram_branch + self.inner.extra_nodes(dcfg)

    def reset(self, prompt_ids: list[int], prompt_features: torch.Tensor | None) -> None:
        self.inner.reset(prompt_ids, prompt_features)
        self.lookup.reset(prompt_ids)

    def commit(self, accepted: list[int], features: torch.Tensor | None) -> None:
        self.inner.commit(accepted, features)
        self.lookup.commit(accepted)

    def propose(self, root: int, dcfg: DecodingConfig, generator: torch.Generator | None = None) -> DraftTree:
        tree = self.inner.propose(root, dcfg, generator)
        if dcfg.temperature > 0 or dcfg.ngram_branch <= 0:
            return tree
        seq = self.lookup.history + [root]
        chain = self.lookup.lookup(seq, dcfg.ngram_max, dcfg.ngram_min, dcfg.ngram_branch)
        return add_branch(tree, chain, rank=TreeShape.of(dcfg).top_k)
