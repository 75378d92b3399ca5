"""EAGLE-2 dynamic draft tree, shared by every model drafter (EAGLE-3 head, VSD draft).

T = 0 (greedy): expand the top-k children of the k best nodes of the newest depth for ``depth`` steps,
rank every node by cumulative draft log-probability, keep ``total_tokens`` (EAGLE-2).

T > 0 (lossless sampling): the children of a node are drawn WITHOUT replacement (Gumbel-top-k) from the
node's warped draft distribution, and the tree SHAPE is a fixed template that depends only on sibling ranks
and depth (the same EAGLE-2 procedure run on the static score -sum log(rank+1)). Ranking sampled nodes by
their sampled probabilities would make the set of kept siblings depend on their values, which biases
recursive rejection sampling; a rank-only shape does not. A node whose rank reaches the support size of its
parent's distribution is dropped with its subtree (that depends only on the parent, so stays exact).

A chain is the same procedure with top_k = 1 and depth nodes (:class:`TreeShape`).

One implementation of each: :func:`grow_greedy` and :func:`grow_sampled` run a whole level in tensor
operations, with ``expand`` getting the level's pool indices. :func:`grow_greedy` moves no value to the host and
keeps every shape fixed, so a static-shape drafter can capture the whole T = 0 tree as one CUDA graph; on a CPU
both avoid per-node Python. The tests hold them to a node-at-a-time host reference (tests/decoding/tree_reference.py).

Model drafters score children in their own (smaller) draft vocabulary: ``token_map`` (V_d,) maps the few
chosen draft ids to target ids, so no (rows, target vocab) tensor is ever built.

Every tree records each node's sibling ``rank`` by the draft (0 = the draft's top choice at T = 0, the first
draw at T > 0) and ``logq``, the draft's log-probability of the node given its parent (raw log-softmax at
T = 0, the warped distribution it was sampled from at T > 0): the eval's rank and calibration diagnostics.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch

from vsd.config.schema import DecodingConfig
from vsd.decoding.drafter import DraftTree
from vsd.decoding.sampling import gumbel_keys, warp
from vsd.decoding.tree_attention import ancestors_by_hops

# (node pool indices (m,), tree level d >= 1 (the nodes' depth), the pool so far) -> (m, V) log-probs
ExpandLevel = Callable[[torch.Tensor, int, "TensorPool"], torch.Tensor]


@dataclass
class TensorPool:
    """Every node a tensor builder created, in creation order, as tensors on the drafter's device."""

    # (..., P): leading batch dims for the batched anchor trees (vsd.decoding.anchor_trees), none for one tree
    tokens: torch.Tensor  # (P,) long target ids (draft ids where no token map is given)
    parents: torch.Tensor  # (P,) long pool index, -1 = child of the root
    depths: torch.Tensor  # (P,) long, 1 = child of the root
    scores: torch.Tensor  # (P,) float64 cumulative log-probs (zeros for sampled trees)
    ranks: torch.Tensor  # (P,) long sibling rank
    logq: torch.Tensor  # (P,) float log-prob given the parent

    def cat(self, other: TensorPool) -> TensorPool:
        return TensorPool(*(torch.cat([a, b], -1) for a, b in zip(self.fields(), other.fields())))

    def fields(self) -> tuple[torch.Tensor, ...]:
        return self.tokens, self.parents, self.depths, self.scores, self.ranks, self.logq


@dataclass(frozen=True)
class TreeShape:
    """The tree one speculative step drafts, resolved once from the config: ``depth`` levels, ``top_k`` children
    per expanded node, ``nodes`` kept. A chain is the shape (depth, 1, depth): ``decoding.mode=chain`` is no
    special case past :meth:`of`."""

    depth: int
    top_k: int
    nodes: int

    @classmethod
    def of(cls, dcfg: DecodingConfig) -> TreeShape:
        """The configured shape (``decoding.mode``, ``depth``, ``top_k``, ``total_tokens``)."""
        if dcfg.mode == "chain":
            return cls(dcfg.depth, 1, dcfg.depth)
        return cls(dcfg.depth, dcfg.top_k, dcfg.total_tokens)

    @property
    def pool_nodes(self) -> int:
        """Most nodes one tree may create: k children of the root, then k children of <= k nodes per depth."""
        return self.top_k + (self.depth - 1) * self.top_k * self.top_k

    @property
    def max_nodes(self) -> int:
        """Most nodes a drafted tree holds (the kept nodes cannot outnumber the created ones)."""
        return min(self.nodes, self.pool_nodes)

    def config(self, dcfg: DecodingConfig) -> DecodingConfig:
        """``dcfg`` drafting this shape (the inverse of :meth:`of`; a chain stays a chain)."""
        if dcfg.mode == "chain":
            return dataclasses.replace(dcfg, depth=self.depth, total_tokens=self.depth)
        return dataclasses.replace(dcfg, depth=self.depth, top_k=self.top_k, total_tokens=self.nodes)

    def verify_rows(self, extra: int = 0) -> int:
        """Rows of one verification forward at most: the root, the shape's nodes and ``extra`` nodes a drafter
        may add (the lookup branch)."""
        return 1 + self.nodes + extra

    def __iter__(self):
        """``depth, k, nodes = shape``."""
        return iter((self.depth, self.top_k, self.nodes))


def _mapped(ids: torch.Tensor, token_map: torch.Tensor | None) -> torch.Tensor:
    return ids if token_map is None else token_map[ids]


@lru_cache(maxsize=256)
def static_template(depth: int, k: int, total: int) -> tuple[tuple[int, ...], ...]:
    """The T>0 tree shape: rank paths (e.g. (0,), (1,), (0, 0)) kept by EAGLE-2 on the score
    -sum log(rank+1), ordered by depth then creation (topological, siblings by rank)."""
    scores: dict[tuple[int, ...], float] = {}
    order: list[tuple[int, ...]] = []
    frontier: list[tuple[int, ...]] = [()]
    for _ in range(depth):
        new = []
        for par in frontier:
            base = scores.get(par, 0.0)
            for r in range(k):
                node = par + (r,)
                scores[node] = base - math.log(r + 1)
                order.append(node)
                new.append(node)
        frontier = sorted(new, key=lambda n: -scores[n])[:k]
    kept = set(sorted(order, key=lambda n: -scores[n])[:total])
    return tuple(n for n in order if n in kept)


def _children_counts(template: tuple[tuple[int, ...], ...]) -> dict[tuple[int, ...], int]:
    """Rank path -> how many children the template gives it (its highest child rank + 1)."""
    n_children: dict[tuple[int, ...], int] = {}
    for path in template:
        n_children[path[:-1]] = max(n_children.get(path[:-1], 0), path[-1] + 1)
    return n_children


# ------------------------------------------------------------------------------------------ tensor builders
def kept_nodes(pool: TensorPool, keep: torch.Tensor) -> TensorPool:
    """The pool nodes ``keep`` (..., n) (increasing, closed under ancestors) of pools with any leading batch
    dims, their parents re-indexed into the kept nodes (-1: child of the root)."""
    pos = torch.full_like(pool.parents, -1).scatter(
        -1, keep, torch.arange(keep.shape[-1], device=keep.device).expand_as(keep)
    )
    par = pool.parents.gather(-1, keep)
    parents = torch.where(par >= 0, pos.gather(-1, par.clamp(min=0)), par)
    tokens, _, depths, scores, ranks, logq = (x.gather(-1, keep) for x in pool.fields())
    return TensorPool(tokens, parents, depths, scores, ranks, logq)


def _subtree(pool: TensorPool, keep: torch.Tensor, depth: int) -> DraftTree:
    """The kept pool nodes ``keep`` (increasing, closed under ancestors) as a DraftTree on the pool's device,
    with depths, ancestors and its depth bound."""
    t = kept_nodes(pool, keep)
    return DraftTree(
        t.tokens,
        t.parents,
        None,
        t.depths,
        depth,
        ancestors_by_hops(t.parents, depth),
        ranks=t.ranks,
        logq=t.logq,
    )


def grow_greedy_pool(
    root_logp: torch.Tensor,
    expand: ExpandLevel,
    depth: int,
    k: int,
    total: int,
    token_map: torch.Tensor | None = None,
) -> tuple[TensorPool, torch.Tensor]:
    """The EAGLE-2 T = 0 procedure for a batch of trees (any leading dims ``...``, none for one tree): the top-k
    children of each of the k best nodes of the newest level (cumulative draft log-probability, stable ties) for
    ``depth`` levels, then the ``total`` best nodes. ``root_logp`` (..., V) the roots' children log-probs;
    ``expand(frontier (..., k), d, pool) -> (..., k, V)`` the children of the level-d frontier nodes (pool
    indices). Returns (every created node: a pool of (..., P) tensors, the kept pool indices (..., n):
    increasing, closed under ancestors). Tensor operations only (capturable)."""
    dev = root_logp.device
    k = min(k, root_logp.shape[-1])
    top = root_logp.float().topk(k, dim=-1)
    batch = top.indices.shape[:-1]
    ranks = torch.arange(k, device=dev)
    pool = TensorPool(
        tokens=_mapped(top.indices, token_map),
        parents=torch.full((*batch, k), -1, dtype=torch.long, device=dev),
        depths=torch.ones(*batch, k, dtype=torch.long, device=dev),
        scores=top.values.double(),
        ranks=ranks.expand(*batch, k),
        logq=top.values,
    )
    frontier = pool.scores.sort(dim=-1, descending=True, stable=True).indices[..., :k]
    for d in range(1, depth):
        logp = expand(frontier, d, pool).float()
        top = logp.topk(k, dim=-1)
        cand = (pool.scores.gather(-1, frontier)[..., None] + top.values.double()).flatten(-2)
        n0 = pool.tokens.shape[-1]
        pool = pool.cat(
            TensorPool(
                tokens=_mapped(top.indices.flatten(-2), token_map),
                parents=frontier[..., None].expand(*batch, k, k).flatten(-2),
                depths=torch.full((*batch, k * k), d + 1, dtype=torch.long, device=dev),
                scores=cand,
                ranks=ranks.repeat(k).expand(*batch, k * k),
                logq=top.values.flatten(-2),
            )
        )
        frontier = n0 + cand.sort(dim=-1, descending=True, stable=True).indices[..., :k]
    # cumulative log-probs never increase along a path and parents are created first, so the stable top
    # `total` is closed under ancestors; creation order is topological with siblings in rank order
    keep = pool.scores.sort(dim=-1, descending=True, stable=True).indices[..., :total].sort(dim=-1).values
    return pool, keep


def grow_greedy(
    root_logp: torch.Tensor,
    expand: ExpandLevel,
    depth: int,
    k: int,
    total: int,
    token_map: torch.Tensor | None = None,
) -> tuple[DraftTree, TensorPool]:
    """One T = 0 tree (:func:`grow_greedy_pool`) from ``root_logp`` (1, V) (the root's children), with ``expand``
    giving the children of the k frontier nodes (k,) of each level. ``token_map`` (V,) maps the log-probs'
    columns to target ids (None: the columns are target ids). Tensor operations only (capturable); every
    returned tensor stays on ``root_logp``'s device. ``DraftTree.depths`` and ``ancestors`` are set; its depth
    bound is ``depth``."""
    pool, keep = grow_greedy_pool(root_logp[0], expand, depth, k, total, token_map)
    return _subtree(pool, keep, depth), pool


@dataclass(frozen=True)
class TemplatePlan:
    """The T > 0 tree shape (:func:`static_template`) as index tensors on one device, built once per shape, so a
    sampled tree is drafted with fixed shapes and no host read (capturable). Node i is template entry i.

    Level d (0 = the root's children) expands ``level_parents[d]`` (template indices; -1 = the root) in one
    batch; entry j of that level's new nodes is ``level_nodes[d][j]``, the child of parent row ``level_rows[d][j]``
    with sibling rank ``level_ranks[d][j]``. ``kids[i + 1, r]`` is the child of rank r of node i (row 0: the root)
    or -1. ``dist_rows[i]`` is the row of the concatenated level distributions that node i - 1's children are
    drawn from (row 0: the root's), or the zero row appended after them for leaves."""

    parents: torch.Tensor
    depths: torch.Tensor
    ranks: torch.Tensor
    ancestors: torch.Tensor
    kids: torch.Tensor
    dist_rows: torch.Tensor
    level_parents: tuple[torch.Tensor, ...]
    level_nodes: tuple[torch.Tensor, ...]
    level_rows: tuple[torch.Tensor, ...]
    level_ranks: tuple[torch.Tensor, ...]
    level_kmax: tuple[int, ...]  # most children of one parent at each level (the Gumbel top-k width)
    level_width: tuple[int, ...]  # parents expanded at each level

    @property
    def size(self) -> int:
        return int(self.parents.numel())

    @property
    def noise_rows(self) -> int:
        """Rows of Gumbel noise (each over the draft vocab) one tree uses: one per expanded parent."""
        return sum(self.level_width)

    @property
    def accept_draws(self) -> int:
        """Uniforms one verification uses: one per sibling tried at each level, plus the final draw."""
        return sum(self.level_kmax) + 1


@lru_cache(maxsize=64)
def template_plan(depth: int, k: int, total: int, device: str = "cpu") -> TemplatePlan:
    """:class:`TemplatePlan` of ``static_template(depth, k, total)`` on ``device``."""
    template = static_template(depth, k, total)
    index = {path: i for i, path in enumerate(template)}
    n_children = _children_counts(template)
    parents = [index[p[:-1]] if len(p) > 1 else -1 for p in template]
    kids = [[-1] * k for _ in range(len(template) + 1)]
    for path, i in index.items():
        kids[0 if len(path) == 1 else index[path[:-1]] + 1][path[-1]] = i
    lp, ln, lr, lk, kmax, width = [], [], [], [], [], []
    dist_row = {}
    n_rows = 0
    for d in range(depth):
        pars = [p for p in n_children if len(p) == d and (d == 0 or p in index)]
        if not pars:
            break
        for row, par in enumerate(pars):
            dist_row[-1 if d == 0 else index[par]] = n_rows + row
        n_rows += len(pars)
        nodes = [(index[par + (r,)], row, r) for row, par in enumerate(pars) for r in range(n_children[par])]
        lp.append([-1 if d == 0 else index[p] for p in pars])
        ln.append([c for c, _, _ in nodes])
        lr.append([row for _, row, _ in nodes])
        lk.append([r for _, _, r in nodes])
        kmax.append(max(n_children[p] for p in pars))
        width.append(len(pars))

    def t(x) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.long, device=device)

    par_t = t(parents)
    return TemplatePlan(
        parents=par_t,
        depths=t([len(p) for p in template]),
        ranks=t([p[-1] for p in template]),
        ancestors=ancestors_by_hops(par_t, depth),
        kids=t(kids),
        dist_rows=t([dist_row.get(i, n_rows) for i in range(-1, len(template))]),
        level_parents=tuple(t(x) for x in lp),
        level_nodes=tuple(t(x) for x in ln),
        level_rows=tuple(t(x) for x in lr),
        level_ranks=tuple(t(x) for x in lk),
        level_kmax=tuple(kmax),
        level_width=tuple(width),
    )


def grow_sampled(
    root_logp: torch.Tensor,
    expand: ExpandLevel,
    dcfg: DecodingConfig,
    generator: torch.Generator | None,
    token_map: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    fixed: bool = False,
) -> DraftTree:
    """The T > 0 template tree: every level's rows are warped and sampled without replacement
    (Gumbel-top-k) in one batch. ``root_logp`` (1, V) and ``expand`` as in :func:`grow_greedy` (``expand`` gets the
    level's parents, at most k of them). ``child_dists`` keeps the warped rows in the log-probs' columns, with
    ``dist_ids = token_map``.

    Shapes are those of the template (:func:`template_plan`): a node whose rank reaches its parent's support
    size (and its subtree) is drafted anyway and marked absent in ``DraftTree.valid``. ``fixed=False`` drops
    absent nodes (one host read per tree); ``fixed=True`` keeps every shape and moves nothing to the host (the
    captured step verifies with ``valid``). ``noise`` (``plan.noise_rows``, V) optional uniforms for the
    Gumbel keys, drawn before a captured step; else they come from ``generator``, level by level."""
    depth, k, total = TreeShape.of(dcfg)
    dev = root_logp.device
    plan = template_plan(depth, k, total, str(dev))
    n = plan.size
    tokens = torch.zeros(n, dtype=torch.long, device=dev)
    logq = torch.zeros(n, device=dev)
    valid = torch.zeros(n, dtype=torch.bool, device=dev)
    pool = TensorPool(
        tokens, plan.parents, plan.depths, torch.zeros(n, dtype=torch.float64, device=dev), plan.ranks, logq
    )
    dists, row0 = [], 0
    for d, (pars, nodes, rows, ranks) in enumerate(
        zip(plan.level_parents, plan.level_nodes, plan.level_rows, plan.level_ranks)
    ):
        logp = root_logp if d == 0 else expand(pars, d, pool)
        q = warp(logp, dcfg.temperature, dcfg.target_top_k, dcfg.top_p)
        u = None if noise is None else noise[row0 : row0 + pars.numel()]
        row0 += pars.numel()
        top = gumbel_keys(q, generator, u).topk(plan.level_kmax[d], dim=-1)
        ids = top.indices.to(dev)[rows, ranks]
        ok = (top.values.to(dev) > float("-inf"))[rows, ranks]  # ranks past a row's support are absent
        if d > 0:
            ok &= valid[pars[rows]]
        tokens[nodes] = _mapped(ids, token_map)
        logq[nodes] = q[rows, ids].log()
        valid[nodes] = ok
        dists.append(q)
    allq = torch.cat(dists)
    tree = DraftTree(
        tokens,
        plan.parents,
        torch.cat([allq, torch.zeros_like(allq[:1])])[plan.dist_rows],
        plan.depths,
        depth,
        plan.ancestors,
        ranks=plan.ranks,
        logq=logq,
        dist_ids=token_map,
        valid=valid,
    )
    return tree if fixed else drop_absent(tree)


def drop_absent(tree: DraftTree) -> DraftTree:
    """``tree`` without the nodes ``valid`` marks absent (an absent node's subtree is absent too, so the rest
    stays closed under ancestors); one host read."""
    if tree.valid is None or bool(tree.valid.all()):
        return dataclasses.replace(tree, valid=None)
    keep = tree.valid.nonzero().flatten()
    pool = TensorPool(
        tree.tokens, tree.parents, tree.depths, tree.logq.double(), tree.ranks, tree.logq
    )  # parents index the kept set's superset: _subtree re-indexes them
    out = _subtree(pool, keep, tree.depth_bound or int(tree.depths.max()))
    out.child_dists = tree.child_dists[torch.cat([keep.new_zeros(1), keep + 1])]
    out.dist_ids = tree.dist_ids
    return out
