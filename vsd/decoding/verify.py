"""Verification of a draft tree against the target's logits at [root, tree nodes...].

Greedy (T=0): follow the child whose token equals the target argmax. Sampling (T>0): recursive rejection
sampling over siblings in sample order, which leaves the output distributed exactly as the target's warped
distribution provided siblings were drawn without replacement from the rows of ``child_dists``.
"""

from __future__ import annotations

import torch

from vsd.config.schema import DecodingConfig
from vsd.decoding.drafter import DraftTree
from vsd.decoding.sampling import sample, warp
from vsd.decoding.tree_attention import ancestors_by_hops


def children_lists(parents: list[int]) -> dict[int, list[int]]:
    """Parent index (-1 = root) -> child indices in tree order (= sample order)."""
    ch: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        ch.setdefault(p, []).append(i)
    return ch


def verify_greedy(tree: DraftTree, logits: torch.Tensor) -> tuple[list[int], int]:
    """logits (N+1, V) at [root, nodes]. Returns (accepted node indices along one path, next token).

    The walk "follow the first child whose token is the target's argmax" in tensor operations on the logits'
    device, so a graphed step pays one host copy (the accepted flags and the next token together)."""
    # bf16 argmax on a CPU runs ~5x slower than a float copy plus its argmax (same result, exact conversion)
    best = (logits.float() if logits.device.type == "cpu" else logits).argmax(-1)
    n = tree.size
    if n == 0:
        return [], int(best[0])
    dev = best.device
    tok, par = tree.tokens.to(dev), tree.parents.to(dev)
    ok = tok == best[par + 1]
    # the walk takes the FIRST child holding the target's token: a later sibling with the same token never counts
    same = (par[:, None] == par[None]) & (tok[:, None] == tok[None])
    ok &= ~torch.tril(same, diagonal=-1).any(1)
    anc = tree.ancestors.to(dev) if tree.ancestors is not None else ancestors_by_hops(par, tree.max_depth())
    acc = ~(anc & ~ok[None]).any(1)  # the node and all its ancestors match
    # so accepted nodes form one path from the root; the deepest (the highest index) ends it
    last = torch.where(acc, torch.arange(n, device=dev), -1).max()
    flags = torch.cat([acc.long(), best[last + 1][None]]).tolist()
    return [i for i in range(n) if flags[i]], flags[n]


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
