"""The draft's T = 0 dynamic tree (EAGLE-2) after MANY anchors at once, from teacher-forced target features.

Decoding drafts one tree per verification step, after the root it has just committed. Given a sequence whose
target features are known at every position (training data, or a reference continuation the target wrote),
the tree that decoding would draft after anchor i (prefix y_<=i, root y_i) is a function of that prefix alone,
so every anchor's tree can be drafted in one batched pass: step 0 over all positions gives each anchor's root
children, then ``depth - 1`` levels expand the k best nodes of every tree together (see
:class:`vsd.models.draft.AnchorTreeCache`). The procedure is decoding's own,
:func:`vsd.decoding.tree.grow_greedy_pool` with a (B, A) batch of trees; this module supplies its ``expand``
(the head step over every anchor's frontier). Used by the VSD tree E-step (``loss.estep=tree``) and by the
reference evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vsd.decoding.tree import TensorPool, grow_greedy_pool, kept_nodes
from vsd.decoding.tree_attention import ancestors_by_hops, gate_by_ancestors
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
        return ancestors_by_hops(self.parents, depth)


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, A, P, ...) gathered at idx (B, A, m) along dim 2."""
    if x.dim() == 3:
        return x.gather(2, idx)
    return x.gather(2, idx[..., None].expand(*idx.shape, x.shape[-1]))


def _pad(x: torch.Tensor, size: int) -> torch.Tensor:
    """x (B, A, P) padded with -1 to (B, A, size)."""
    if x.shape[2] >= size:
        return x
    return torch.cat([x, x.new_full((*x.shape[:2], size - x.shape[2]), -1)], 2)


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
    root_logp = F.log_softmax(logits0.gather(1, gi[..., None].expand(B, A, logits0.shape[-1])).float(), -1)
    kk = min(k, root_logp.shape[-1])
    limit = (anchors - 1)[..., None].expand(B, A, kk).reshape(B, A * kk)
    # per pool node: its node-store slot once expanded, and its row of `hid` (expanded nodes' outputs)
    st = {
        "slot": torch.full((B, A, kk), -1, dtype=torch.long, device=dev),
        "hid_of": torch.full((B, A, kk), -1, dtype=torch.long, device=dev),
        "hid": torch.zeros(B, A, 0, h_root.shape[-1], dtype=h_root.dtype, device=dev),
    }

    def expand(frontier: torch.Tensor, d: int, pool: TensorPool) -> torch.Tensor:
        P = pool.tokens.shape[2]
        slot, hid_of, hid = _pad(st["slot"], P), _pad(st["hid_of"], P), st["hid"]
        f_par = _take(pool.parents, frontier)
        if d == 1:  # the root's children: their parent output is the anchor's step-0 output
            par_h = h_root[:, :, None].expand(B, A, kk, h_root.shape[-1])
        else:  # level-d nodes: their parents were expanded at level d - 1
            par_h = _take(hid, _take(hid_of, f_par))
        # ancestors' node-store slots (every ancestor of a frontier node was expanded at an earlier level)
        anc, a = [], f_par
        for _ in range(d - 1):
            anc.append(torch.where(a >= 0, _take(slot, a.clamp(min=0)), a))
            a = torch.where(a >= 0, _take(pool.parents, a.clamp(min=0)), a)
        cache.limit = limit
        cache.ancestors = (
            torch.stack(anc, -1).view(B, A * kk, d - 1)
            if anc
            else torch.zeros(B, A * kk, 0, dtype=torch.long, device=dev)
        )
        n0 = cache.size
        ids = head.d2t[_take(pool.tokens, frontier)].view(B, A * kk)
        pos = (anchors - 1 + d)[..., None].expand(B, A, kk).reshape(B, A * kk)
        h_new, lg = head.step(par_h.reshape(B, A * kk, -1), ids, pos, cache)
        st["slot"] = slot.scatter(
            2, frontier, n0 + torch.arange(A * kk, device=dev).view(1, A, kk).expand(B, A, kk)
        )
        st["hid_of"] = hid_of.scatter(
            2, frontier, hid.shape[2] + torch.arange(kk, device=dev).expand(B, A, kk)
        )
        st["hid"] = torch.cat([hid, h_new.view(B, A, kk, -1)], dim=2)
        return F.log_softmax(lg.float(), -1).view(B, A, kk, -1)

    pool, keep = grow_greedy_pool(root_logp, expand, depth, kk, total)
    t = kept_nodes(pool, keep)
    return AnchorTrees(t.tokens, t.parents, t.depths, t.ranks, t.logq)


def accepted_by_reference(
    trees: AnchorTrees, d2t: torch.Tensor, reference: torch.Tensor, depth: int
) -> torch.Tensor:
    """(B, A, N) bool: greedy verification against known target tokens. ``reference`` (B, A, depth) target
    ids: the token the target chooses at each depth after the anchor (-1 past the end: never accepted). A node
    is accepted when its token is that depth's reference token and its parent is accepted."""
    ref = reference.gather(-1, (trees.depths - 1).clamp(max=reference.shape[-1] - 1))
    return gate_by_ancestors(d2t[trees.tokens] == ref, trees.parents, depth)
