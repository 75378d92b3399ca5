"""The draft's T = 0 dynamic tree (EAGLE-2) after MANY anchors at once, from teacher-forced target features.

Decoding drafts one tree per verification step, after the root it has just committed. Given a sequence whose
target features are known at every position (training data, or a reference continuation the target wrote),
the tree that decoding would draft after anchor i (prefix y_<=i, root y_i) is a function of that prefix alone,
so every anchor's tree can be drafted in one batched pass: step 0 over all positions gives each anchor's root
children, then ``depth - 1`` levels expand the k best nodes of every tree together (see
:class:`vsd.models.draft.AnchorTreeCache`). The procedure is :func:`vsd.decoding.tree.grow_greedy`'s, with a
batch of trees: top-k children per expanded node, the k best nodes of each level (cumulative draft
log-probability, stable ties) are expanded next, and the ``total`` best nodes are kept (closed under
ancestors, creation order). Used by the VSD tree E-step (``loss.estep=tree``) and by the reference evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vsd.models.draft import AnchorTreeCache, shift_left


@dataclass
class AnchorTrees:
    """Kept nodes of one tree per anchor; shapes (B, A, N), N = total nodes, creation (topological) order."""

    tokens: torch.Tensor  # long, DRAFT-vocab ids (head.d2t maps them to target ids)
    parents: torch.Tensor  # long, index into the N kept nodes of the same tree, -1 = child of the root
    depths: torch.Tensor  # long, 1 = child of the root
    ranks: torch.Tensor  # long, rank among its siblings by the draft (0 = the draft's top child)
    logq: torch.Tensor  # float32, draft log-prob of the node given its parent (raw log-softmax)

    def ancestors(self, depth: int) -> torch.Tensor:
        """(B, A, N, N) bool: [.., i, j] when node j is node i or one of its ancestors."""
        n = self.parents.shape[-1]
        cols = torch.arange(n, device=self.parents.device)
        anc = (cols[:, None] == cols[None]).expand(*self.parents.shape, n).clone()
        cur = self.parents
        for _ in range(depth - 1):
            anc |= cur[..., None] == cols
            cur = torch.where(cur >= 0, self.parents.gather(-1, cur.clamp(min=0)), cur)
        return anc


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, A, P, ...) gathered at idx (B, A, m) along dim 2."""
    if x.dim() == 3:
        return x.gather(2, idx)
    return x.gather(2, idx[..., None].expand(*idx.shape, x.shape[-1]))


@torch.no_grad()
def grow_anchor_trees(
    head,
    features: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    anchors: torch.Tensor,
    depth: int,
    k: int,
    total: int,
) -> AnchorTrees:
    """Draft the greedy tree after each anchor (see the module docstring).

    features (B, T, 3H) target features; input_ids (B, T); attention_mask (B, T) bool (right padding);
    anchors (B, A) long, 1 <= anchor < T: the tree continues prefix y_<=anchor (draft step 0 at position
    anchor - 1 predicts its first level). Returns :class:`AnchorTrees` with N = min(total, nodes created).
    """
    B, T = input_ids.shape
    A = anchors.shape[1]
    dev = input_ids.device
    am = attention_mask.bool()
    cache = AnchorTreeCache(len(head.layers), am)
    pos0 = torch.arange(T, device=dev)[None]
    hidden0, logits0 = head.step(head.fuse(features), shift_left(input_ids, 1), pos0, cache, am)
    gi = (anchors - 1).clamp(min=0)
    h_root = hidden0.gather(1, gi[..., None].expand(B, A, hidden0.shape[-1]))  # (B, A, H)
    lp = F.log_softmax(logits0.gather(1, gi[..., None].expand(B, A, logits0.shape[-1])).float(), -1)
    kk = min(k, lp.shape[-1])
    top = lp.topk(kk, dim=-1)
    tok, par = top.indices, torch.full((B, A, kk), -1, dtype=torch.long, device=dev)
    dep = torch.ones(B, A, kk, dtype=torch.long, device=dev)
    rank = torch.arange(kk, device=dev).expand(B, A, kk)
    logq = top.values
    score = top.values.double()
    slot = torch.full((B, A, kk), -1, dtype=torch.long, device=dev)  # node-store slot once expanded
    hid = torch.zeros(B, A, 0, h_root.shape[-1], dtype=h_root.dtype, device=dev)  # expanded nodes' outputs
    hid_of = torch.full((B, A, kk), -1, dtype=torch.long, device=dev)  # pool index -> row of `hid`
    frontier = score.sort(dim=-1, descending=True, stable=True).indices[..., :kk]
    limit = (anchors - 1)[..., None].expand(B, A, kk).reshape(B, A * kk)
    for d in range(1, depth):
        f_par = _take(par, frontier)
        if d == 1:  # the root's children: their parent output is the anchor's step-0 output
            par_h = h_root[:, :, None].expand(B, A, kk, h_root.shape[-1])
        else:  # level-d nodes: their parents were expanded at level d - 1
            par_h = _take(hid, _take(hid_of, f_par))
        # ancestors' node-store slots (every ancestor of a frontier node was expanded at an earlier level)
        anc, a = [], f_par
        for _ in range(d - 1):
            anc.append(torch.where(a >= 0, _take(slot, a.clamp(min=0)), a))
            a = torch.where(a >= 0, _take(par, a.clamp(min=0)), a)
        cache.limit = limit
        cache.ancestors = (
            torch.stack(anc, -1).view(B, A * kk, d - 1)
            if anc
            else torch.zeros(B, A * kk, 0, dtype=torch.long, device=dev)
        )
        n0 = cache.size
        ids = head.d2t[_take(tok, frontier)].view(B, A * kk)
        pos = (anchors - 1 + d)[..., None].expand(B, A, kk).reshape(B, A * kk)
        h_new, lg = head.step(par_h.reshape(B, A * kk, -1), ids, pos, cache)
        slot = slot.scatter(
            2, frontier, n0 + torch.arange(A * kk, device=dev).view(1, A, kk).expand(B, A, kk)
        )
        hid_of = hid_of.scatter(2, frontier, hid.shape[2] + torch.arange(kk, device=dev).expand(B, A, kk))
        hid = torch.cat([hid, h_new.view(B, A, kk, -1)], dim=2)
        clp = F.log_softmax(lg.float(), -1).view(B, A, kk, -1).topk(kk, dim=-1)  # children of each
        cand = (_take(score, frontier)[..., None] + clp.values.double()).view(B, A, kk * kk)
        P = tok.shape[2]
        tok = torch.cat([tok, clp.indices.view(B, A, kk * kk)], 2)
        par = torch.cat([par, frontier[..., None].expand(B, A, kk, kk).reshape(B, A, kk * kk)], 2)
        dep = torch.cat([dep, torch.full((B, A, kk * kk), d + 1, dtype=torch.long, device=dev)], 2)
        rank = torch.cat([rank, torch.arange(kk, device=dev).repeat(kk).expand(B, A, kk * kk)], 2)
        logq = torch.cat([logq, clp.values.view(B, A, kk * kk)], 2)
        score = torch.cat([score, cand], 2)
        slot = torch.cat([slot, torch.full((B, A, kk * kk), -1, dtype=torch.long, device=dev)], 2)
        hid_of = torch.cat([hid_of, torch.full((B, A, kk * kk), -1, dtype=torch.long, device=dev)], 2)
        frontier = P + cand.sort(dim=-1, descending=True, stable=True).indices[..., :kk]
    n = min(total, tok.shape[2])
    keep = score.sort(dim=-1, descending=True, stable=True).indices[..., :n].sort(dim=-1).values
    where = torch.full_like(tok, -1).scatter(2, keep, torch.arange(n, device=dev).expand(B, A, n))
    kp = _take(par, keep)
    parents = torch.where(kp >= 0, _take(where, kp.clamp(min=0)), kp)
    return AnchorTrees(_take(tok, keep), parents, _take(dep, keep), _take(rank, keep), _take(logq, keep))


def accepted_by_reference(
    trees: AnchorTrees, d2t: torch.Tensor, reference: torch.Tensor, depth: int
) -> torch.Tensor:
    """(B, A, N) bool: greedy verification against known target tokens. ``reference`` (B, A, depth) target
    ids: the token the target chooses at each depth after the anchor (-1 past the end: never accepted). A node
    is accepted when its token is that depth's reference token and its parent is accepted."""
    ref = reference.gather(-1, (trees.depths - 1).clamp(max=reference.shape[-1] - 1))
    match = d2t[trees.tokens] == ref
    acc = match.clone()
    for _ in range(depth - 1):  # a node is accepted only along accepted parents
        pa = trees.parents
        parent_ok = torch.where(pa >= 0, acc.gather(-1, pa.clamp(min=0)), torch.ones_like(acc))
        acc = match & parent_ok
    return acc
