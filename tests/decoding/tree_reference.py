"""Reference EAGLE-2 tree builders and the T > 0 verification walk on the host, one node at a time (test
oracles; the library's are the tensor builders :func:`vsd.decoding.tree.grow_greedy` and
:func:`vsd.decoding.tree.grow_sampled` and the tensor walk :func:`vsd.decoding.verify.reject_walk`).

``expand(node_idx (M,) long, -1 = root) -> (M, V) log-probs`` of the children of pool nodes; the pool
(:class:`NodePool`) holds every created node so a test drafter can look up tokens and parents.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vsd.config.schema import DecodingConfig
from vsd.decoding.drafter import DraftTree
from vsd.decoding.sampling import gumbel_keys, sample, warp
from vsd.decoding.tree import TreeShape, _children_counts, static_template

Expand = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class NodePool:
    """Every node created while drafting, in creation order. ``expand`` gets indices into this pool.

    Before ``expand(idx)`` is called, ``tokens[i]``, ``parents[i]`` (pool index, -1 = root) and
    ``depths[i]`` (1 = child of the root) are set for every i in idx, so a drafter can feed its model.
    ``ranks[i]`` is the node's rank among its siblings, ``logq[i]`` its log-prob given the parent.
    """

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    logq: list[float] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # pool index of each node of the last tree built

    def add(self, token: int, parent: int, score: float, rank: int = 0, logq: float = 0.0) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.depths.append(1 if parent < 0 else self.depths[parent] + 1)
        self.scores.append(score)
        self.ranks.append(rank)
        self.logq.append(logq)
        return len(self.tokens) - 1

    def extend(
        self, tokens: list[int], parents: list[int], scores: list[float], ranks: list[int], logq: list[float]
    ) -> None:
        """Add nodes in bulk (one tree level): the same as ``add`` for each, in order."""
        self.tokens.extend(tokens)
        self.parents.extend(parents)
        self.depths.extend(1 if p < 0 else self.depths[p] + 1 for p in parents)
        self.scores.extend(scores)
        self.ranks.extend(ranks)
        self.logq.extend(logq)

    def clear(self) -> None:
        for lst in (self.tokens, self.parents, self.depths, self.scores, self.ranks, self.logq, self.kept):
            lst.clear()


def build_dynamic_tree(
    expand: Expand,
    dcfg: DecodingConfig,
    generator: torch.Generator | None = None,
    pool: NodePool | None = None,
) -> DraftTree:
    """Draft a tree by calling ``expand(node_idx (M,) long, -1 = root) -> (M, V) log-probs`` of children.

    The log-probs may live on the drafter's device: at T=0 only the top-k of each row crosses to the host.

    ``pool`` (optional) receives every created node so ``expand`` can look up tokens/parents; pass the
    drafter's own pool when expand needs it. Returns the kept nodes topologically ordered, siblings in
    sample order, with ``ranks`` and ``logq`` set; ``pool.kept`` holds their pool indices.
    """
    pool = pool if pool is not None else NodePool()
    pool.clear()
    if dcfg.temperature > 0:
        return _build_sampled(expand, dcfg, generator, pool)
    return _build_greedy(expand, dcfg, pool)


def _build_greedy(expand: Expand, dcfg: DecodingConfig, pool: NodePool) -> DraftTree:
    depth, k, total = TreeShape.of(dcfg)
    frontier = [-1]
    scores = torch.zeros(0, dtype=torch.float64)  # of every pool node, creation order
    for _ in range(depth):
        logp = expand(torch.tensor(frontier, dtype=torch.long)).float()
        top = logp.topk(min(k, logp.shape[-1]), dim=-1)  # on the drafter's device: only (m, k) comes back
        vals, ids = top.values.cpu().double(), top.indices.cpu()
        base = torch.tensor([0.0 if p < 0 else pool.scores[p] for p in frontier], dtype=torch.float64)
        cand = (base[:, None] + vals).flatten()  # children of each frontier node, in rank order
        n0 = len(pool.tokens)
        m, kk = vals.shape
        pool.extend(
            ids.flatten().tolist(),
            [p for p in frontier for _ in range(kk)],
            cand.tolist(),
            list(range(kk)) * m,
            vals.flatten().tolist(),
        )
        scores = torch.cat([scores, cand])
        # the k best nodes of this depth are expanded next (stable: ties keep creation order)
        frontier = (n0 + cand.sort(descending=True, stable=True).indices[:k]).tolist()
    # cumulative log-probs never increase along a path and parents are created first, so the stable top
    # `total` is closed under ancestors; creation order is topological with siblings in rank order
    keep = scores.sort(descending=True, stable=True).indices[:total].sort().values.tolist()
    return _to_tree(pool, keep, None)


def _build_sampled(
    expand: Expand, dcfg: DecodingConfig, generator: torch.Generator | None, pool: NodePool
) -> DraftTree:
    depth, k, total = TreeShape.of(dcfg)
    template = static_template(depth, k, total)
    n_children = _children_counts(template)
    where: dict[tuple[int, ...], int] = {(): -1}  # rank path -> pool index
    dists: dict[int, torch.Tensor] = {}
    for d in range(depth):
        parents = [p for p in n_children if len(p) == d and p in where]
        if not parents:
            break
        logp = expand(torch.tensor([where[p] for p in parents], dtype=torch.long)).cpu()
        q = warp(logp, dcfg.temperature, dcfg.target_top_k, dcfg.top_p)
        for row, par in enumerate(parents):
            pidx = where[par]
            dists[pidx] = q[row]
            keys = gumbel_keys(q[row], generator)
            top = keys.topk(min(n_children[par], keys.numel()))
            ids = top.indices[top.values > float("-inf")].tolist()  # ranks past the support are absent
            for r, t in enumerate(ids):
                where[par + (r,)] = pool.add(int(t), pidx, 0.0, r, math.log(float(q[row, t])))
    keep = [where[p] for p in template if p in where]
    return _to_tree(pool, keep, dists)


def _to_tree(pool: NodePool, keep: list[int], dists: dict[int, torch.Tensor] | None) -> DraftTree:
    """Kept pool nodes (topological order) -> DraftTree with parents re-indexed into the kept list."""
    pos = {p: i for i, p in enumerate(keep)}
    tokens = torch.tensor([pool.tokens[p] for p in keep], dtype=torch.long)
    parents = torch.tensor([pos[pool.parents[p]] if pool.parents[p] >= 0 else -1 for p in keep])
    child_dists = None
    if dists is not None:
        first = next(iter(dists.values()))
        rows = [dists.get(p) for p in [-1, *keep]]
        child_dists = torch.stack([r if r is not None else torch.zeros_like(first) for r in rows])
    pool.kept = list(keep)
    return DraftTree(
        tokens,
        parents.long().reshape(-1),
        child_dists,
        ranks=torch.tensor([pool.ranks[p] for p in keep], dtype=torch.long),
        logq=torch.tensor([pool.logq[p] for p in keep], dtype=torch.float32),
    )


def children_lists(parents: list[int]) -> dict[int, list[int]]:
    """Parent index (-1 = root) -> child indices in tree order (= sample order)."""
    ch: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        ch.setdefault(p, []).append(i)
    return ch


def walk_sampled(
    tree: DraftTree, logits: torch.Tensor, dcfg: DecodingConfig, generator: torch.Generator | None
) -> tuple[list[int], int]:
    """Recursive rejection sampling one node at a time (the oracle of :func:`vsd.decoding.verify.verify_sampled`,
    which draws the same random numbers). logits (N+1, V); ``tree.child_dists`` the draft rows."""
    assert tree.child_dists is not None, "T>0 verification needs DraftTree.child_dists"
    toks = tree.tokens.tolist()
    ch = children_lists(tree.parents.tolist())
    path: list[int] = []
    cur = -1
    while True:
        p = warp(logits[cur + 1], dcfg.temperature, dcfg.target_top_k, dcfg.top_p)
        kids = ch.get(cur, [])
        if not kids:
            return path, sample(p, generator)  # bonus token from the target itself
        q = tree.full_dists(p.shape[-1])[cur + 1].clone().to(p.device)
        accepted = None
        for c in kids:
            x = toks[c]
            u = float(torch.rand((), generator=generator, device=generator.device if generator else None))
            if u * float(q[x]) < float(p[x]):  # u < min(1, p/q) without dividing
                accepted = c
                break
            # reject x: the target residual and the draft without x (drawn without replacement)
            p = (p - q).clamp_(min=0.0)
            s = p.sum()
            if s <= 0:  # only reachable through rounding when p == q; then p itself is the residual
                p = warp(logits[cur + 1], dcfg.temperature, dcfg.target_top_k, dcfg.top_p)
            else:
                p = p / s
            q[x] = 0.0
            qs = q.sum()
            if qs > 0:
                q = q / qs
        if accepted is None:
            return path, sample(p, generator)  # correction from the residual
        path.append(accepted)
        cur = accepted
