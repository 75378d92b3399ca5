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

    The same recursive rejection sampling, in two parts. First, for every row at once (the root and each node),
    the sequence the host walk would go through while rejecting that row's children in sample order: before
    child j the target row p_j and draft row q_j (p_0, q_0 the warped rows; rejecting token x makes
    p_{j+1} = norm(max(p_j - q_j, 0)) and q_{j+1} = q_j without x, renormalised), keeping only p_j(x_j), q_j(x_j)
    and the residual after the last child. Then the walk down the tree: at each level the first child with
    u q_j(x_j) < p_j(x_j) is accepted; if none is, the next token is drawn from that row's residual (at a leaf,
    from its own target row: the bonus token). Every row and level runs whatever happens, so nothing is read on
    the host, and the law is the host walk's."""
    dev = logits.device
    n = tree.size
    p = warp(logits, dcfg.temperature, dcfg.target_top_k, dcfg.top_p)  # (N+1, V)
    q = tree.child_dists.float().to(dev)
    if tree.dist_ids is not None:
        q = q.new_zeros(p.shape).index_copy_(1, tree.dist_ids.to(dev), q)
    valid = tree.valid if tree.valid is not None else torch.ones(n, dtype=torch.bool, device=dev)
    kids = plan.kids.to(dev)  # (N+1, k) child of rank j of each row, -1 when absent from the template
    real = (kids >= 0) & torch.cat([valid, valid.new_zeros(1)])[kids]  # index -1 reads the appended False
    toks = torch.cat([tree.tokens.to(dev), tree.tokens.new_zeros(1)])[kids]  # (N+1, k)
    width = max(plan.level_kmax)
    p_at, q_at = [], []
    p0 = p
    for j in range(width):
        x = toks[:, j : j + 1]
        p_at.append(p.gather(1, x))
        q_at.append(q.gather(1, x))
        rej = real[:, j : j + 1]  # a row moves on only while it has a j-th child to reject
        res = (p - q).clamp(min=0.0)
        s = res.sum(1, keepdim=True)
        # rounding can empty the residual only where p == q; then p itself is the residual
        p = torch.where(rej, torch.where(s > 0, res / s.clamp(min=1e-30), p0), p)
        qx = q.scatter(1, x, 0.0)
        qs = qx.sum(1, keepdim=True)
        q = torch.where(rej, torch.where(qs > 0, qx / qs.clamp(min=1e-30), qx), q)
    p_at, q_at = torch.cat(p_at, 1), torch.cat(q_at, 1)  # (N+1, width)
    row = torch.zeros(1, dtype=torch.long, device=dev)
    live = torch.ones(1, dtype=torch.bool, device=dev)
    acc = torch.zeros(n, dtype=torch.bool, device=dev)
    nodes = torch.arange(n, device=dev)
    off = 0
    for kmax in plan.level_kmax:
        uj = u[off : off + kmax]
        off += kmax
        take = real.index_select(0, row)[0, :kmax] & (
            uj * q_at.index_select(0, row)[0, :kmax] < p_at.index_select(0, row)[0, :kmax]
        )  # u < min(1, p/q) without dividing
        moved = live & take.any()
        c = kids.index_select(0, row)[0].index_select(0, take.long().argmax().reshape(1))  # the first taken
        acc |= (nodes == c) & moved
        row = torch.where(moved, c + 1, row)
        live &= moved
    return acc, sample_at(p.index_select(0, row)[0], u[off : off + 1])


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
