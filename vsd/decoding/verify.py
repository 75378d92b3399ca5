"""Verification of a draft tree against the target's logits at [root, tree nodes...].

Greedy (T=0): follow the child whose token equals the target argmax. Sampling (T>0): recursive rejection
sampling over siblings in sample order, which leaves the output distributed exactly as the target's warped
distribution provided siblings were drawn without replacement from the rows of ``child_dists``.
"""

from __future__ import annotations

import torch

from vsd.config.schema import DecodingConfig
from vsd.decoding.drafter import DraftTree
from vsd.decoding.sampling import sample, sample_at, warp
from vsd.decoding.tree import TemplatePlan
from vsd.decoding.tree_attention import ancestors_by_hops


def children_lists(parents: list[int]) -> dict[int, list[int]]:
    """Parent index (-1 = root) -> child indices in tree order (= sample order)."""
    ch: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        ch.setdefault(p, []).append(i)
    return ch


def accept_greedy(tree: DraftTree, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (N+1, V) at [root, nodes] -> (accepted (N,) bool, next token (1,) long), tensor ops on the logits'
    device (no host read: the captured step runs it inside its graph).

    The walk "follow the first child whose token is the target's argmax": a node is accepted when it and all
    its ancestors hold the argmax after their parent and no earlier sibling holds the same token. Absent nodes
    (``tree.valid``) never count."""
    # bf16 argmax on a CPU runs ~5x slower than a float copy plus its argmax (same result, exact conversion)
    best = (logits.float() if logits.device.type == "cpu" else logits).argmax(-1)
    n = tree.size
    dev = best.device
    tok, par = tree.tokens.to(dev), tree.parents.to(dev)
    ok = tok == best[par + 1]
    if tree.valid is not None:
        ok &= tree.valid.to(dev)
    # the walk takes the FIRST child holding the target's token: a later sibling with the same token never counts
    same = (par[:, None] == par[None]) & (tok[:, None] == tok[None])
    ok &= ~torch.tril(same, diagonal=-1).any(1)
    anc = tree.ancestors.to(dev) if tree.ancestors is not None else ancestors_by_hops(par, tree.max_depth())
    acc = ~(anc & ~ok[None]).any(1)  # the node and all its ancestors match
    # so accepted nodes form one path from the root; the deepest (the highest index) ends it
    last = torch.where(acc, torch.arange(n, device=dev), -1).max()
    # index_select, not best[last + 1]: indexing with a 0-dim tensor may read it on the host
    return acc, best.index_select(0, (last + 1).reshape(1))


def verify_greedy(tree: DraftTree, logits: torch.Tensor) -> tuple[list[int], int]:
    """logits (N+1, V) at [root, nodes]. Returns (accepted node indices along one path, next token): the
    flags of :func:`accept_greedy` in one host copy."""
    if tree.size == 0:
        best = logits[0].float().argmax()
        return [], int(best)
    acc, nxt = accept_greedy(tree, logits)
    flags = torch.cat([acc.long(), nxt]).tolist()
    n = tree.size
    return [i for i in range(n) if flags[i]], flags[n]


def accept_sampled(
    tree: DraftTree, logits: torch.Tensor, dcfg: DecodingConfig, plan: TemplatePlan, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`verify_sampled` for a tree with the template's fixed shape (``plan``), in tensor ops with fixed
    loop counts: no host read (the captured T > 0 step). ``u`` (``plan.accept_draws``,) uniforms. Returns
    (accepted (N,) bool, next token (1,) long).

    The walk is the same recursive rejection sampling: at each level the current node's children are tried in
    sample order (rank); a rejected token x turns the target row into the normalised residual max(p - q, 0) and
    removes x from the draft row q. Every level runs ``plan.level_kmax`` tries whatever happened, with each
    update applied only where it is live (``torch.where``), so the result equals the host walk's law."""
    dev = logits.device
    n = tree.size
    p_all = warp(logits, dcfg.temperature, dcfg.target_top_k, dcfg.top_p)  # (N+1, V)
    q_all = tree.child_dists.float().to(dev)
    if tree.dist_ids is not None:
        q_all = q_all.new_zeros(p_all.shape).index_copy_(1, tree.dist_ids.to(dev), q_all)
    valid = tree.valid if tree.valid is not None else torch.ones(n, dtype=torch.bool, device=dev)
    tokens, kids = tree.tokens, plan.kids
    zero = torch.zeros(1, dtype=torch.long, device=dev)
    row = zero  # the current node's row (0 = the root)
    p, q = p_all[0], q_all[0]
    live = torch.ones(1, dtype=torch.bool, device=dev)
    acc = torch.zeros(n, dtype=torch.bool, device=dev)
    j = 0
    for kmax in plan.level_kmax:
        moved = torch.zeros(1, dtype=torch.bool, device=dev)
        nxt_row = row
        for r in range(kmax):
            c = kids[:, r].index_select(0, row)  # (1,) child of rank r, or -1
            cc = c.clamp(min=0)
            try_it = live & ~moved & (c >= 0) & valid.index_select(0, cc)
            x = tokens.index_select(0, cc)
            take = try_it & (u[j] * q.index_select(0, x) < p.index_select(0, x))  # u < min(1, p/q)
            j += 1
            moved |= take
            nxt_row = torch.where(take, c + 1, nxt_row)
            rej = try_it & ~take
            res = (p - q).clamp(min=0.0)
            s = res.sum()
            # rounding can empty the residual only where p == q; then p itself is the residual
            res = torch.where(s > 0, res / s.clamp(min=1e-30), p_all.index_select(0, row)[0])
            p = torch.where(rej, res, p)
            qx = q.index_fill(0, x, 0.0)
            qs = qx.sum()
            q = torch.where(rej, torch.where(qs > 0, qx / qs.clamp(min=1e-30), qx), q)
        acc |= (torch.arange(n, device=dev) == nxt_row - 1) & moved
        live &= moved
        row = nxt_row
        p = torch.where(moved, p_all.index_select(0, row)[0], p)
        q = torch.where(moved, q_all.index_select(0, row)[0], q)
    return acc, sample_at(p, u[j : j + 1])


def verify_sampled(
    tree: DraftTree, logits: torch.Tensor, dcfg: DecodingConfig, generator: torch.Generator | None
) -> tuple[list[int], int]:
    """Recursive rejection sampling. logits (N+1, V) (any float dtype: each visited row is warped in float32);
    ``tree.child_dists`` (N+1, V) the draft rows, or (N+1, V_d) over the draft vocab ``tree.dist_ids``."""
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
        q = tree.full_dist(cur + 1, p.shape[-1]).to(p.device)
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
