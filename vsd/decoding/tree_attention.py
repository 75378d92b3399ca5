"""Tree primitives and tree attention on top of a KV cache, through the stock HF 4D-mask / position-id
interfaces.

One implementation each, shared by the decoding engine (verification of a draft tree), the batched anchor
trees of the VSD tree E-step and the reference evaluator, and the VSD E-step (the target as oracle over many
sampled paths at once).

A tree of N nodes is given by ``parents`` (N,), each entry the index of the node's parent in the same
array or -1 for a child of the prefix. Nodes must be topologically ordered (parent index < own index).
:func:`ancestors_by_hops` and :func:`gate_by_ancestors` also take a batch of trees, ``parents`` (..., N).
"""

from __future__ import annotations

import torch


def ancestor_matrix(parents: torch.Tensor) -> torch.Tensor:
    """(N, N) bool: [i, j] is True when node j is node i itself or one of its ancestors (checks the order and
    reads the depth on the host; :func:`ancestors_by_hops` given a depth bound)."""
    if parents.numel() == 0:
        return torch.zeros(0, 0, dtype=torch.bool, device=parents.device)
    bad = (parents >= torch.arange(parents.numel(), device=parents.device)).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"parents must be topologically ordered: node {i} has parent {int(parents[i])}")
    return ancestors_by_hops(parents, int(node_depths(parents.cpu()).max()))


def ancestors_by_hops(parents: torch.Tensor, depth: int) -> torch.Tensor:
    """(..., N, N) bool ancestor matrix ([.., i, j]: node j is node i or one of its ancestors) of trees
    ``parents`` (..., N) no deeper than ``depth``, in ``depth - 1`` parent hops of tensor operations: no host
    copy, fixed shapes (usable inside a captured step)."""
    n = parents.shape[-1]
    cols = torch.arange(n, device=parents.device)
    anc = (cols[:, None] == cols[None]).expand(*parents.shape, n).clone()
    cur = parents
    for _ in range(depth - 1):
        anc |= cur[..., None] == cols  # -1 (past the root) matches no column
        cur = torch.where(cur >= 0, parents.gather(-1, cur.clamp(min=0)), cur)
    return anc


def gate_by_ancestors(ok: torch.Tensor, parents: torch.Tensor, depth: int) -> torch.Tensor:
    """(..., N) bool: ``ok`` at a node and at every one of its ancestors ("accepted = it matches and its parent
    is accepted"), for trees ``parents`` (..., N) no deeper than ``depth``; ``depth - 1`` gathers."""
    out = ok
    for _ in range(depth - 1):
        out = ok & torch.where(parents >= 0, out.gather(-1, parents.clamp(min=0)), True)
    return out


def node_depths(parents: torch.Tensor) -> torch.Tensor:
    """(N,) long: 1 for children of the prefix, 2 for their children, ..."""
    d: list[int] = []
    for p in parents.tolist():
        d.append(1 if p < 0 else d[p] + 1)
    return torch.tensor(d, dtype=torch.long, device=parents.device)


def tree_attention_mask(
    parents: torch.Tensor, prefix_len: int, dtype: torch.dtype, prefix_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Additive 4D mask (1, 1, N, prefix_len + N): 0 where a node may attend, the dtype's min elsewhere.

    Every node sees the whole prefix (already in the KV cache, or given in the same forward) and its own
    ancestors. ``prefix_mask`` (prefix_len,) bool optionally hides prefix positions (e.g. padding).
    """
    n = parents.numel()
    allowed = torch.zeros(n, prefix_len + n, dtype=torch.bool, device=parents.device)
    allowed[:, :prefix_len] = True if prefix_mask is None else prefix_mask.to(torch.bool)[None, :]
    allowed[:, prefix_len:] = ancestor_matrix(parents)
    mask = torch.zeros(n, prefix_len + n, dtype=dtype, device=parents.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]
