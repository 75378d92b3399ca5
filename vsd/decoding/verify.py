"""Verification of a draft tree against the target's logits at [root, tree nodes...].

Greedy (T=0): follow the child whose token equals the target argmax. Sampling (T>0): recursive rejection
sampling over siblings in sample order, which leaves the output distributed exactly as the target's warped
distribution provided siblings were drawn without replacement from the rows of ``child_dists``.

Each in tensor ops, once, for any tree: the captured step runs them inside its graph, the eager path with one
host copy of the outcome (tests/decoding/tree_reference.py holds the node-at-a-time T > 0 walk, their oracle).
"""

from __future__ import annotations

import torch

from vsd.config.schema import DecodingConfig
from vsd.decoding.drafter import DraftTree
from vsd.decoding.sampling import sample, sample_at, warp
from vsd.decoding.tree_attention import ancestors_by_hops


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


def children_table(
    parents: list[int], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Any tree's children table from its parents (host list): (``kids`` (N+1, width) long, ``level_kmax``).
    ``kids[r, j]`` is the j-th child in tree order (= sample order) of row r (0 = the root, i + 1 = node i), -1
    past its last; ``level_kmax[d]`` the most children of one row at depth d (the walk's loop counts).
    :class:`vsd.decoding.tree.TemplatePlan` holds the same pair for the template tree, built once per shape."""
    n = len(parents)
    depth = [0] * (n + 1)  # row depths: the root 0
    rows: list[list[int]] = [[] for _ in range(n + 1)]
    for i, p in enumerate(parents):
        depth[i + 1] = depth[p + 1] + 1
        rows[p + 1].append(i)
    width = max(map(len, rows))
    kmax = [0] * max(depth)
    for r, kids in enumerate(rows):
        if kids:
            kmax[depth[r]] = max(kmax[depth[r]], len(kids))
    table = torch.tensor([kids + [-1] * (width - len(kids)) for kids in rows], dtype=torch.long)
    return table.reshape(n + 1, width).to(device), tuple(kmax)


def _rejections(
    p: torch.Tensor, q: torch.Tensor, toks: torch.Tensor, real: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For rows (R, V) of target ``p`` and draft ``q`` probabilities and their children's tokens ``toks`` (R, w)
    (``real`` (R, w): the child exists): the sequence the walk goes through while rejecting each row's children
    in sample order. Before child j the rows p_j, q_j (p_0, q_0 the warped rows; rejecting token x makes
    p_{j+1} = norm(max(p_j - q_j, 0)) and q_{j+1} = q_j without x, renormalised). Returns (p_j(x_j),
    q_j(x_j)) as (R, w) float64 and the residual after the last real child (R, V)."""
    p_at, q_at = [], []
    p0 = p
    for j in range(toks.shape[1]):
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
    if not p_at:
        return (
            p.new_zeros(p.shape[0], 0, dtype=torch.float64),
            p.new_zeros(p.shape[0], 0, dtype=torch.float64),
            p,
        )
    return torch.cat(p_at, 1).double(), torch.cat(q_at, 1).double(), p


def reject_walk(
    tree: DraftTree,
    logits: torch.Tensor,
    dcfg: DecodingConfig,
    kids: torch.Tensor,
    level_kmax: tuple[int, ...],
    u: torch.Tensor,
    in_order: bool,
    every_row: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recursive rejection sampling over any tree, in tensor ops with fixed loop counts and no host read (the
    captured T > 0 step runs it inside its graph). ``kids``, ``level_kmax``: the tree's children table
    (:func:`children_table`, or the template's ``TemplatePlan.kids`` / ``level_kmax``); ``u`` the walk's
    uniforms. Returns (accepted (N,) bool, the row to draw the next token from (V,), uniforms used (1,) long).

    At each level the first child of the current row with u q_j(x_j) < p_j(x_j) (:func:`_rejections`) is
    accepted and the walk moves to it; if none is, the next token comes from that row's residual (at a leaf,
    its own target row: the bonus token). Every level runs whatever happens.

    ``every_row``: the rejections of every row at once before the walk (a few wide ops: the captured step),
    else of the current row at each level, ending at the level the walk stops (one host read per level: the
    eager path, where most rows are never visited). Which uniform a try reads: ``in_order`` the next unused one (the order a walk one node at a
    time draws them: the eager path draws exactly as before), else level d's own fixed slots
    ``u[sum(level_kmax[:d]) + j]`` (the captured step's layout). Either way no uniform is read twice, so the
    law is the same."""
    dev = logits.device
    n = tree.size
    vocab = logits.shape[-1]
    valid = tree.valid.to(dev) if tree.valid is not None else torch.ones(n, dtype=torch.bool, device=dev)
    real = (kids >= 0) & torch.cat([valid, valid.new_zeros(1)])[kids]  # index -1 reads the appended False
    toks = torch.cat([tree.tokens.to(dev), tree.tokens.new_zeros(1, device=dev)])[kids]  # (N+1, width)

    def rejections(rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        def pick(x: torch.Tensor) -> torch.Tensor:
            return x if rows is None else x.index_select(0, rows)

        p = warp(pick(logits), dcfg.temperature, dcfg.target_top_k, dcfg.top_p)
        q = tree.full_dists(vocab, rows).to(dev)
        return _rejections(p, q, pick(toks), pick(real))

    ahead = rejections(None) if every_row else None
    row = torch.zeros(1, dtype=torch.long, device=dev)
    live = torch.ones(1, dtype=torch.bool, device=dev)
    used = torch.zeros(1, dtype=torch.long, device=dev)
    acc = torch.zeros(n, dtype=torch.bool, device=dev)
    nodes = torch.arange(n, device=dev)
    off = 0
    here_rows = None
    for kmax in level_kmax:
        if ahead is None:
            if not bool(live):  # eager: a host read per level ends the walk where it stopped
                break
            here_rows = rejections(row)
        p_at, q_at, _ = (t.index_select(0, row) for t in ahead) if ahead else here_rows
        at = torch.arange(kmax, device=dev) + (used if in_order else off)
        off += kmax
        here = real.index_select(0, row)[0, :kmax]
        # u < min(1, p/q) without dividing, in float64 (as the host walk compared Python floats)
        take = here & (u.index_select(0, at).double() * q_at[0, :kmax] < p_at[0, :kmax])
        moved = live & take.any()
        first = take.long().argmax().reshape(1)  # the first taken
        c = kids.index_select(0, row)[0].index_select(0, first)
        acc |= (nodes == c) & moved
        # a try reads one uniform: up to the accepted child, else every child of the row
        used += torch.where(moved, first + 1, torch.where(live, here.sum().reshape(1), 0))
        row = torch.where(moved, c + 1, row)
        live &= moved
    if ahead is not None:
        residual = ahead[2].index_select(0, row)
    else:  # the row it stopped at, or the leaf it reached past the last level
        residual = here_rows[2] if here_rows is not None and not bool(live) else rejections(row)[2]
    return acc, residual[0], used


def accept_sampled(
    tree: DraftTree,
    logits: torch.Tensor,
    dcfg: DecodingConfig,
    kids: torch.Tensor,
    level_kmax: tuple[int, ...],
    u: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`reject_walk` with its uniforms drawn ahead: ``u`` (``sum(level_kmax) + 1``,) float64, in fixed
    slots per level and the last for the next token (no host read: the captured T > 0 step). Returns (accepted
    (N,) bool, next token (1,) long)."""
    acc, p, _ = reject_walk(tree, logits, dcfg, kids, level_kmax, u, in_order=False, every_row=True)
    off = sum(level_kmax)
    return acc, sample_at(p, u[off : off + 1])


def verify_sampled(
    tree: DraftTree, logits: torch.Tensor, dcfg: DecodingConfig, generator: torch.Generator | None
) -> tuple[list[int], int]:
    """Recursive rejection sampling (:func:`reject_walk`) on the eager path: (accepted node indices along one
    path, next token). logits (N+1, V) (any float dtype: rows are warped in float32); ``tree.child_dists``
    (N+1, V) the draft rows, or (N+1, V_d) over the draft vocab ``tree.dist_ids``.

    Random numbers as a walk one node at a time draws them (tests/decoding/tree_reference.py, the oracle): a
    float32 uniform per sibling tried, then :func:`sample`'s draw, from ``generator``. The walk's uniforms are
    drawn ahead (as many as it could use) and the generator is then set back to just after the ones it used, so
    T > 0 ids and the generator's next state are those of the one-node walk."""
    assert tree.child_dists is not None, "T>0 verification needs DraftTree.child_dists"
    if tree.size == 0:
        return [], sample(warp(logits[0], dcfg.temperature, dcfg.target_top_k, dcfg.top_p), generator)
    dev = logits.device
    kids, level_kmax = children_table(tree.parents.tolist(), dev)
    gen = generator if generator is not None else torch.default_generator
    at = generator.device if generator is not None else None

    def draw() -> torch.Tensor:  # one scalar call per uniform: batched draws differ on a CUDA generator
        return torch.rand((), generator=generator, device=at)

    start = gen.get_state()
    u = torch.stack([draw() for _ in range(sum(level_kmax))]).to(dev)
    acc, p, used = reject_walk(tree, logits, dcfg, kids, level_kmax, u, in_order=True, every_row=False)
    flags = torch.cat([acc.long(), used]).tolist()
    gen.set_state(start)
    for _ in range(flags[-1]):
        draw()
    return [i for i in range(tree.size) if flags[i]], sample(p, generator)
