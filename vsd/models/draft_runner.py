"""How the EAGLE drafter runs its head: eagerly on a growing KV cache, or static-shape with captured CUDA graphs.

Both runners expose the same calls, so the drafter's tree logic is one code path whatever the backend:

- ``commit(features, ids)`` appends committed entries (target features ``(n, 3H)`` paired with the tokens that
  follow them) at the next positions and returns the draft log-probs ``(1, V)`` (target vocab, on the head's
  device: the tree builder moves only what it needs to the host) after the
  last one: the root's children. Its hidden output is stored as hidden row 0.
- ``expand(parent_rows, out_rows, tokens, positions, ancestors)`` runs one tree step over ``m`` nodes: node r
  takes the hidden stored at ``parent_rows[r]``, token ``tokens[r]``, rotary position ``positions[r]``, and
  attends to every committed entry, to the cache slots in ``ancestors[r]`` and to itself. Its hidden output is
  stored at ``out_rows[r]``. Returns ``((m, V) log-probs, the cache slots the m nodes were written at)``.
- ``drop_tree()`` forgets every tree entry (the verified ones come back through ``commit``).

:class:`GraphDraftRunner` also drafts a whole T = 0 tree on the device: ``grow_greedy`` runs
:func:`vsd.decoding.tree.grow_greedy` with its expansion tables built there from the pool tensors, as ONE
captured graph on CUDA. Nothing crosses to the host until the target has verified the tree.

:class:`GraphDraftRunner` keeps every shape static: ``max_len`` KV slots, a fixed row count per call kind
(``depth + 1`` for a commit, ``top_k`` for an expansion; a prompt-length commit runs uncaptured), the attention
mask built inside the step from a few integers per row, and hidden rows in one preallocated store. On CUDA
each call kind is captured once and replayed: the eager head step is launch-bound on a GPU.
"""

from __future__ import annotations

import torch

from vsd.decoding.drafter import DraftTree
from vsd.decoding.tree import TensorPool, grow_greedy
from vsd.errors import UserError
from vsd.runtime import capture_graph


def target_logp(head, logits: torch.Tensor) -> torch.Tensor:
    """(M, V_d) draft logits -> (M, V) float log-probs over the target vocab (-inf outside the draft vocab)."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    out = torch.full((lp.shape[0], head.hc.target_vocab_size), float("-inf"), device=lp.device)
    out[:, head.d2t] = lp
    return out


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(q, k) bool -> (1, 1, q, k) additive mask in ``dtype``."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )[None, None]


class EagerDraftRunner:
    """The reference path: the head's append-only KVCache, masks over exactly the entries present."""

    def __init__(self, head):
        self.head = head
        self.device = head.fc.weight.device
        self.kv = head.new_kv_cache()
        self.length = 0  # committed entries
        self.hidden: dict[int, torch.Tensor] = {}

    def reset(self) -> None:
        self.kv = self.head.new_kv_cache()
        self.length = 0
        self.hidden = {}

    def commit(self, features: torch.Tensor, ids: list[int]) -> torch.Tensor:
        head, dev, n = self.head, self.device, len(ids)
        pos = torch.arange(self.length, self.length + n, device=dev)[None]
        hid, lg = head.step(head.fuse(features.to(dev)[None]), torch.tensor([ids], device=dev), pos, self.kv)
        self.length += n
        self.hidden = {0: hid[0, -1]}
        return target_logp(head, lg[0, -1:])

    def expand(
        self,
        parent_rows: list[int],
        out_rows: list[int],
        tokens: list[int],
        positions: list[int],
        ancestors: list[list[int]],
    ) -> tuple[torch.Tensor, list[int]]:
        dev, m, kv_len = self.device, len(tokens), len(self.kv)
        allowed = torch.zeros(
            m, kv_len + m, dtype=torch.bool
        )  # built on the host: one copy, not m*d launches
        allowed[:, : self.length] = True
        for r, anc in enumerate(ancestors):
            allowed[r, [kv_len + r, *anc]] = True
        par = torch.stack([self.hidden[p] for p in parent_rows])[None]
        mask = _additive(allowed.to(dev), par.dtype)
        h_out, lg = self.head.step(
            par, torch.tensor([tokens], device=dev), torch.tensor([positions], device=dev), self.kv, mask
        )
        for r, row in enumerate(out_rows):
            self.hidden[row] = h_out[0, r]
        return target_logp(self.head, lg[0]), list(range(kv_len, kv_len + m))

    def drop_tree(self) -> None:
        self.kv.crop(self.length)


class StaticKVCache:
    """Per-layer K/V buffers of ``max_len`` slots; each step writes its rows at ``slots`` (set by the runner)
    and attends over all slots under the caller's mask. No length counter to wind back inside a graph."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, max_len: int, device, dtype):
        shape = (num_layers, 1, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.slots = torch.zeros(0, dtype=torch.long, device=device)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k[layer].index_copy_(2, self.slots, k.to(self.k.dtype))
        self.v[layer].index_copy_(2, self.slots, v.to(self.v.dtype))
        return self.k[layer], self.v[layer]


# Columns of a step's integer inputs (one host->device copy per call).
_ID, _POS, _SLOT, _LIMIT, _IN, _OUT, _EXTRA = range(7)


class _Step:
    """Static buffers (and, on CUDA, the captured graph) of one call kind with ``n`` rows."""

    def __init__(self, kind: str, n: int, extra: int, feat_dim: int, device, dtype, pin: bool):
        self.kind, self.n = kind, n
        self.host = torch.zeros(n, _EXTRA + extra, dtype=torch.long, pin_memory=pin)
        self.dev = torch.zeros(n, _EXTRA + extra, dtype=torch.long, device=device)
        self.features = torch.zeros(1, n, feat_dim, device=device, dtype=dtype) if kind == "commit" else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None
        self.copied: torch.cuda.Event | None = None


class _Grow:
    """Inputs, outputs and (on CUDA) the captured graph of one greedy tree shape (depth, k, total)."""

    def __init__(self, vocab: int, device):
        self.root = torch.zeros(1, vocab, device=device)  # the root's children log-probs
        self.length = torch.zeros((), dtype=torch.long, device=device)  # committed entries
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: DraftTree | None = None


class GraphDraftRunner:
    """Static-shape draft runner (see the module docstring); captured on CUDA when ``capture``, else eager."""

    def __init__(
        self, head, max_len: int, commit_rows: int, tree_rows: int, depth: int, store_rows: int, capture: bool
    ):
        hc = head.hc
        self.head = head
        self.device = head.fc.weight.device
        self.dtype = head.fc.weight.dtype
        self.capture = capture and self.device.type == "cuda"
        self.max_len, self.commit_rows, self.tree_rows, self.extra = max_len, commit_rows, tree_rows, depth
        self.cache = StaticKVCache(
            hc.num_layers, hc.num_kv_heads, hc.head_dim, max_len, self.device, self.dtype
        )
        self.scratch = store_rows  # padding rows write their hidden here
        self.store = torch.zeros(store_rows + 1, hc.hidden_size, device=self.device, dtype=self.dtype)
        self.cols = torch.arange(max_len, device=self.device)
        self.length = 0  # committed entries, at slots [0, length)
        self.tree_end = 0  # tree entries occupy [length, tree_end)
        self._steps: dict[tuple[str, int], _Step] = {}
        self._grows: dict[tuple[int, int, int], _Grow] = {}
        self._pool = None

    def reset(self) -> None:
        self.length = self.tree_end = 0

    # ------------------------------------------------------------------ one step
    def _core(self, x: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """The step itself (captured on CUDA): mask from the integer table ``x`` (rows of id, pos, slot, limit,
        in_row, out_row, *visible slots), head step, hidden store write, log-probs."""
        if features is not None:
            hidden = self.head.fuse(features)
        else:
            hidden = self.store.index_select(0, x[:, _IN])[None]
        extra = x[:, _EXTRA:]
        allowed = (self.cols[None] < x[:, _LIMIT, None]) | (self.cols[None, None] == extra[:, :, None]).any(1)
        self.cache.slots = x[:, _SLOT]
        h_out, lg = self.head.step(
            hidden, x[None, :, _ID], x[None, :, _POS], self.cache, _additive(allowed, self.dtype)
        )
        self.store.index_copy_(0, x[:, _OUT], h_out[0])
        return target_logp(self.head, lg[0])

    def _run(self, kind: str, rows: list[tuple[int, ...]], features: torch.Tensor | None) -> torch.Tensor:
        """rows: per real row (id, pos, slot, limit, in_row, out_row, *extra slots); padded to the kind's fixed
        row count. A longer call (a prompt-length commit) runs once, uncaptured, in buffers of its own."""
        k = len(rows)
        fixed = self.commit_rows if kind == "commit" else self.tree_rows
        n = max(k, fixed)
        first = rows[0][_SLOT]
        if first + n > self.max_len:
            raise UserError(
                f"decoding.max_len: {self.max_len} KV slots are too few for this generation (draft)"
            )
        table = []
        for r in range(n):
            if r < k:
                row = rows[r]
                extra = list(row[_EXTRA:]) + [row[_SLOT]]  # the row's own slot is always visible
                table.append([*row[:_EXTRA], *extra, *[row[_SLOT]] * (self.extra - len(extra))])
            else:  # padding: writes a slot nothing reads yet, sees only itself, hidden to the scratch row
                table.append([0, 0, first + r, 0, 0, self.scratch, *[first + r] * self.extra])
        dim = 3 * self.head.hc.hidden_size
        s = self._steps.get((kind, n)) if n == fixed else None
        if s is None:
            s = _Step(kind, n, self.extra, dim, self.device, self.dtype, pin=self.capture)
            if n == fixed:
                self._steps[(kind, n)] = s
        if s.copied is not None:  # the previous async copy out of this pinned buffer must be done
            s.copied.synchronize()
        s.host.copy_(torch.tensor(table))
        s.dev.copy_(s.host, non_blocking=True)
        if self.capture:
            s.copied = torch.cuda.Event()
            s.copied.record()
        if features is not None:
            s.features[0, :k].copy_(features.to(self.dtype))
        if not (self.capture and n == fixed):
            return self._core(s.dev, s.features)[:k]
        if s.graph is None:
            s.graph, s.out = capture_graph(lambda: self._core(s.dev, s.features), self._pool)
            self._pool = s.graph.pool()
        s.graph.replay()
        return s.out[:k]

    def _grow(self, g: _Grow, depth: int, k: int, total: int) -> DraftTree:
        """:func:`grow_greedy` with each level's table built from the pool tensors (captured on CUDA)."""
        slot_of = torch.zeros(k + (depth - 1) * k * k, dtype=torch.long, device=self.device)

        def expand(idx: torch.Tensor, d: int, pool: TensorPool) -> torch.Tensor:
            own = g.length + (d - 1) * k + torch.arange(k, device=self.device)  # level d's cache slots
            slot_of.index_copy_(0, idx, own)
            # the slots of the node's tree ancestors (committed entries are visible through the limit column)
            visible, a = [], pool.parents[idx]
            for _ in range(d - 1):
                visible.append(torch.where(a >= 0, slot_of[a.clamp(min=0)], own))
                a = torch.where(a >= 0, pool.parents[a.clamp(min=0)], a)
            visible += [own] * (self.extra - len(visible))  # a row always sees its own slot
            x = torch.stack(
                [
                    pool.tokens[idx],
                    g.length - 1 + pool.depths[idx],
                    own,
                    g.length.expand(k),
                    1 + pool.parents[idx],  # hidden row 0 is the root's
                    1 + idx,
                    *visible,
                ],
                1,
            )
            return self._core(x, None)

        tree, _ = grow_greedy(g.root, expand, depth, k, total)
        return tree

    def grow_greedy(self, root_logp: torch.Tensor, depth: int, k: int, total: int) -> DraftTree:
        """The T = 0 tree after the last commit from the root's children ``root_logp`` (1, V), drafted on the
        device. Its tensors stay there (with ``depths``, so the target runner builds its step there too)."""
        if self.length + (depth - 1) * k > self.max_len:
            raise UserError(
                f"decoding.max_len: {self.max_len} KV slots are too few for this generation (draft)"
            )
        key = (depth, k, total)
        if key not in self._grows:
            self._grows[key] = _Grow(root_logp.shape[-1], self.device)
        g = self._grows[key]
        g.root.copy_(root_logp)
        g.length.fill_(self.length)
        if not self.capture:
            return self._grow(g, depth, k, total)
        if g.graph is None:
            g.graph, g.out = capture_graph(lambda: self._grow(g, depth, k, total), self._pool)
            self._pool = g.graph.pool()
        g.graph.replay()
        t = g.out
        # copies: the next replay rewrites the graph's buffers while this tree may still be in use
        return DraftTree(
            t.tokens.clone(),
            t.parents.clone(),
            None,
            t.pool_index.clone(),
            t.depths.clone(),
            t.depth_bound,
            t.ancestors.clone(),
        )

    # ------------------------------------------------------------------ runner API
    def commit(self, features: torch.Tensor, ids: list[int]) -> torch.Tensor:
        start, n = self.length, len(ids)
        rows = [
            (t, start + r, start + r, start + r + 1, 0, 0 if r == n - 1 else self.scratch)
            for r, t in enumerate(ids)
        ]
        logp = self._run("commit", rows, features)
        self.length = self.tree_end = start + n
        return logp[n - 1 :]

    def expand(
        self,
        parent_rows: list[int],
        out_rows: list[int],
        tokens: list[int],
        positions: list[int],
        ancestors: list[list[int]],
    ) -> tuple[torch.Tensor, list[int]]:
        start = self.tree_end
        slots = list(range(start, start + len(tokens)))
        rows = [
            (t, p, sl, self.length, pr, o, *anc)
            for t, p, sl, pr, o, anc in zip(tokens, positions, slots, parent_rows, out_rows, ancestors)
        ]
        logp = self._run("tree", rows, None)
        self.tree_end = start + len(tokens)
        return logp, slots

    def drop_tree(self) -> None:
        self.tree_end = self.length
