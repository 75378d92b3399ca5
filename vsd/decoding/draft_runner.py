"""How the EAGLE drafter runs its head: eagerly with dynamic shapes, or static-shape with captured CUDA graphs.

Both runners expose the same calls, so the drafter's tree logic is one code path whatever the backend:

- ``commit(features, ids)`` appends committed entries (target features ``(n, 3H)`` paired with the tokens that
  follow them) at the next positions and returns the draft log-probs ``(1, V_d)`` over the DRAFT vocab (on the
  head's device) after the last one: the root's children. Its hidden output is stored as hidden row 0.
- ``expand_level(idx, d, pool)`` runs one tree level: the pool nodes ``idx`` (all of depth ``d``, a
  :class:`~vsd.decoding.tree.TensorPool`) each take their parent's stored hidden and their own token, sit at
  rotary position (last committed entry) + d, and attend to every committed entry, their tree ancestors and
  themselves. Their hidden outputs are stored at rows ``1 + idx``. Returns ``(m, V_d)`` log-probs of their
  children. The level's inputs are built from the pool tensors: no per-node Python.
- ``grow_greedy(root_logp, depth, k, total)``: the whole T = 0 tree (:func:`vsd.decoding.tree.grow_greedy`).
- ``drop_tree()`` forgets every tree entry (the verified ones come back through ``commit``).
- ``timed_draft(features, ids, depth, k, timed)``: the seconds of a commit and of each tree level, wound back
  afterwards (the cost measurement of ``decoding.shape=auto``).

Both share the step itself (``run_table``): the attention mask is built from a small integer table per row
(id, position, slot, committed-prefix limit, input hidden row, output hidden row, visible ancestor slots), the
K/V rows are written at their slots of preallocated buffers, and hidden outputs go to one preallocated store.
Log-probs stay in the draft vocab: the tree builders map the few chosen ids to target ids with ``d2t``.

- :class:`EagerDraftRunner` (``capture=none``, and the CPU): each call runs exactly its rows and attends over the
  slots in use only; the buffers double when full.
- :class:`GraphDraftRunner` (``capture=cuda_graph`` on CUDA, ``static`` for tests): ``max_len`` slots, a fixed row
  count per call kind (``depth + 1`` for a commit, ``top_k`` for a tree level; a prompt-length commit runs
  uncaptured), attention over all slots under the mask. On CUDA each call kind is captured once and replayed,
  and ``grow_greedy`` is ONE captured graph: nothing crosses to the host until the target has verified the tree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vsd.decoding.drafter import DraftTree
from vsd.decoding.tree import TensorPool, grow_greedy
from vsd.errors import UserError
from vsd.runtime import capture_graph

# Columns of a step's integer table; visible ancestor slots (the row's own slot included) follow _EXTRA.
_ID, _POS, _SLOT, _LIMIT, _IN, _OUT, _EXTRA = range(7)


def draft_logp(logits: torch.Tensor) -> torch.Tensor:
    """(M, V_d) draft logits -> (M, V_d) float log-probs over the draft vocab."""
    return torch.log_softmax(logits.float(), dim=-1)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(q, k) bool -> (1, 1, q, k) additive mask in ``dtype``."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )[None, None]


class SlotKV:
    """Per-layer K/V buffers of ``capacity`` slots; each step writes its rows at ``slots`` (set by the runner)
    and attends over the first ``end`` slots (``None``: all of them, fixed shapes for graphs) under the
    caller's mask. No length counter to wind back inside a graph."""

    def __init__(self, num_layers: int, kv_heads: int, head_dim: int, capacity: int, device, dtype):
        shape = (num_layers, 1, kv_heads, capacity, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.slots = torch.zeros(0, dtype=torch.long, device=device)
        self.end: int | None = None

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def grow(self, capacity: int) -> None:
        """More slots, keeping the existing entries."""
        n = self.capacity
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros((*old.shape[:3], capacity, old.shape[4]))
            new[:, :, :, :n] = old
            setattr(self, name, new)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k[layer].index_copy_(2, self.slots, k.to(self.k.dtype))
        self.v[layer].index_copy_(2, self.slots, v.to(self.v.dtype))
        if self.end is None:
            return self.k[layer], self.v[layer]
        return self.k[layer, :, :, : self.end], self.v[layer, :, :, : self.end]


class _DraftRunner:
    """What both runners share: buffers, the step, and the level tables built from the node pool."""

    def __init__(self, head, capacity: int, store_rows: int):
        hc = head.hc
        self.head = head
        self.device = head.fc.weight.device
        self.dtype = head.fc.weight.dtype
        self.token_map = head.d2t  # draft id -> target id
        self.cache = SlotKV(hc.num_layers, hc.num_kv_heads, hc.head_dim, capacity, self.device, self.dtype)
        self.cols = torch.arange(capacity, device=self.device)
        self.scratch = store_rows  # rows whose hidden nobody reads write here
        self.store = torch.zeros(store_rows + 1, hc.hidden_size, device=self.device, dtype=self.dtype)
        self.slot_of = torch.zeros(store_rows, dtype=torch.long, device=self.device)  # pool index -> slot
        self.length = 0  # committed entries, at slots [0, length)
        self.tree_end = 0  # tree entries occupy [length, tree_end)

    def reset(self) -> None:
        self.length = self.tree_end = 0

    def drop_tree(self) -> None:
        self.tree_end = self.length

    def rewind(self, length: int) -> None:
        """Forget every entry from ``length`` on."""
        self.length = self.tree_end = length

    def timed_draft(
        self,
        features: torch.Tensor,
        ids: list[int],
        depth: int,
        k: int,
        timed: Callable[[Callable[[], Any]], tuple[float, Any]],
    ) -> list[float]:
        """Seconds of one draft step as decoding runs it: the commit of ``features``/``ids`` (as ``commit``), then
        the ``depth - 1`` levels of a greedy tree of width ``k``, each call timed by ``timed(fn) -> (seconds,
        fn())`` (e.g. synchronised on the device). The runner is wound back afterwards, so the same step can be
        timed again at the same place (``decoding.shape=auto``'s costs, vsd.decoding.shape_measure)."""
        start, times = self.length, []
        t, logp = timed(lambda: self.commit(features, ids))
        times.append(t)

        def expand(idx: torch.Tensor, d: int, pool: TensorPool) -> torch.Tensor:
            t, lp = timed(lambda: self.expand_level(idx, d, pool))
            times.append(t)
            return lp

        grow_greedy(logp, expand, depth, k, k, self.token_map)
        self.rewind(start)
        return times

    def run_table(self, x: torch.Tensor, features: torch.Tensor | None, n_cols: int) -> torch.Tensor:
        """The step itself (captured on CUDA, by this runner or inside the engine's captured step): x
        (rows, _EXTRA + w) integer table; features (1, rows, 3H) for committed entries, else the input hiddens
        come from the store. Attends over slots [0, n_cols). Returns the rows' draft log-probs."""
        if features is not None:
            hidden = self.head.fuse(features)
        else:
            hidden = self.store.index_select(0, x[:, _IN])[None]
        cols = self.cols[:n_cols]
        allowed = (cols[None] < x[:, _LIMIT, None]) | (cols[None, None] == x[:, _EXTRA:, None]).any(1)
        self.cache.slots = x[:, _SLOT]
        h_out, lg = self.head.step(
            hidden, x[None, :, _ID], x[None, :, _POS], self.cache, _additive(allowed, self.dtype)
        )
        self.store.index_copy_(0, x[:, _OUT], h_out[0])
        return draft_logp(lg[0])

    def _commit_table(self, ids: list[int]) -> torch.Tensor:
        """Host table of a commit: entry r at slot and position start + r, seeing every earlier entry; the
        last one's hidden goes to row 0 (the root's children are expanded from it)."""
        start, n = self.length, len(ids)
        x = torch.empty(n, _EXTRA + 1, dtype=torch.long)
        x[:, _ID] = torch.tensor(ids)
        torch.arange(start, start + n, out=x[:, _POS])
        x[:, _SLOT] = x[:, _POS]
        x[:, _LIMIT] = x[:, _POS] + 1
        x[:, _IN] = 0
        x[:, _OUT] = self.scratch
        x[-1, _OUT] = 0
        x[:, _EXTRA] = x[:, _SLOT]
        return x

    def commit_table_device(
        self, ids: torch.Tensor, count: torch.Tensor, length: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`_commit_table` built on the device for a fixed ``ids.numel()`` rows of which the first ``count``
        (a (1,) device tensor) are real, after ``length`` (1,) committed entries: no host value (the captured
        step). Rows past ``count`` write the next slots, which the tree overwrites, and keep no hidden."""
        r = torch.arange(ids.numel(), device=self.device)
        pos = length + r
        out = torch.where(r == count - 1, 0, self.scratch)
        return torch.stack([ids, pos, pos, pos + 1, torch.zeros_like(pos), out, *[pos] * self.width], 1)

    def _level_table(
        self,
        idx: torch.Tensor,
        d: int,
        pool: TensorPool,
        first: int | torch.Tensor,
        length: int | torch.Tensor,
        width: int,
    ) -> torch.Tensor:
        """Table of tree level ``d`` for pool nodes ``idx`` (m,), written at slots first + [0, m), from the pool
        tensors on the device, after ``length`` committed entries (an int, or a 0-dim device tensor inside a
        captured graph). ``width`` >= d visible-slot columns (the d - 1 tree ancestors, then the row's own
        slot repeated); committed entries are visible through the limit column."""
        m = idx.numel()
        own = first + torch.arange(m, device=self.device)
        self.slot_of.index_copy_(0, idx, own)
        visible, a = [], pool.parents[idx]
        for _ in range(d - 1):
            visible.append(torch.where(a >= 0, self.slot_of[a.clamp(min=0)], own))
            a = torch.where(a >= 0, pool.parents[a.clamp(min=0)], a)
        visible += [own] * (width - len(visible))
        limit = length.expand(m) if torch.is_tensor(length) else torch.full_like(own, length)
        return torch.stack(
            [
                pool.tokens[idx],
                length - 1 + pool.depths[idx],
                own,
                limit,
                1 + pool.parents[idx],  # hidden row 0 is the root's
                1 + idx,
                *visible,
            ],
            1,
        )


class EagerDraftRunner(_DraftRunner):
    """Dynamic shapes: each call runs exactly its rows and attends over the slots in use; buffers double when
    full. The reference path, and the fast one on a CPU."""

    def __init__(self, head, store_rows: int, capacity: int = 1024):
        super().__init__(head, capacity, store_rows)

    def _step(self, x: torch.Tensor, features: torch.Tensor | None, end: int) -> torch.Tensor:
        if end > self.cache.capacity:
            cap = max(end, 2 * self.cache.capacity)
            self.cache.grow(cap)
            self.cols = torch.arange(cap, device=self.device)
        self.cache.end = end
        return self.run_table(x, features, end)

    def commit(self, features: torch.Tensor, ids: list[int]) -> torch.Tensor:
        n = len(ids)
        x = self._commit_table(ids).to(self.device)
        logp = self._step(x, features.to(self.device)[None], self.length + n)
        self.length = self.tree_end = self.length + n
        return logp[n - 1 :]

    def expand_level(self, idx: torch.Tensor, d: int, pool: TensorPool) -> torch.Tensor:
        first = self.tree_end
        x = self._level_table(idx, d, pool, first, self.length, width=d)
        self.tree_end = first + idx.numel()
        return self._step(x, None, self.tree_end)

    def grow_greedy(self, root_logp: torch.Tensor, depth: int, k: int, total: int) -> DraftTree:
        """The T = 0 tree after the last commit, from the root's children ``root_logp`` (1, V_d)."""
        tree, _ = grow_greedy(root_logp, self.expand_level, depth, k, total, self.token_map)
        return tree


class _Step:
    """Static buffers (and, on CUDA, the captured graph) of one call kind with ``n`` rows."""

    def __init__(self, kind: str, n: int, width: int, feat_dim: int, device, dtype, pin: bool):
        self.kind, self.n = kind, n
        self.host = torch.zeros(n, _EXTRA + width, dtype=torch.long, pin_memory=pin)
        self.dev = torch.zeros(n, _EXTRA + width, dtype=torch.long, device=device)
        self.features = torch.zeros(1, n, feat_dim, device=device, dtype=dtype) if kind == "commit" else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None
        self.copied: torch.cuda.Event | None = None


class GrowBuffers:
    """Inputs, outputs and (on CUDA) the captured graph of one greedy tree shape (depth, k, total)."""

    def __init__(self, vocab: int, device):
        self.root = torch.zeros(1, vocab, device=device)  # the root's children log-probs (draft vocab)
        self.length = torch.zeros((), dtype=torch.long, device=device)  # committed entries
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: DraftTree | None = None


class GraphDraftRunner(_DraftRunner):
    """Static-shape draft runner (see the module docstring); captured on CUDA when ``capture``, else eager."""

    def __init__(
        self, head, max_len: int, commit_rows: int, tree_rows: int, depth: int, store_rows: int, capture: bool
    ):
        super().__init__(head, max_len, store_rows)
        self.capture = capture and self.device.type == "cuda"
        self.max_len, self.commit_rows, self.tree_rows, self.width = max_len, commit_rows, tree_rows, depth
        self._steps: dict[tuple[str, int], _Step] = {}
        self._grows: dict[tuple[int, int, int], GrowBuffers] = {}
        self._pool = None

    def _widen(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Pad a table to ``width`` visible columns (the row's own slot) and ``n`` rows. Padding rows write the
        next free slots (nothing reads them before a real entry overwrites them), see only themselves, and
        send their hidden to the scratch row."""
        k, w = x.shape[0], x.shape[1] - _EXTRA
        if w < self.width:
            x = torch.cat([x, x[:, _SLOT : _SLOT + 1].expand(k, self.width - w)], 1)
        if k < n:
            pad = torch.zeros(n - k, x.shape[1], dtype=x.dtype, device=x.device)
            slots = x[0, _SLOT] + torch.arange(k, n, device=x.device)
            pad[:, _SLOT] = slots
            pad[:, _OUT] = self.scratch
            pad[:, _EXTRA:] = slots[:, None]
            x = torch.cat([x, pad])
        return x

    def _run(self, kind: str, x: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """x: the real rows' table (on the host for commits, on the device for tree levels); padded to the
        kind's fixed row count. A longer call (a prompt-length commit) runs once, uncaptured."""
        k = x.shape[0]
        fixed = self.commit_rows if kind == "commit" else self.tree_rows
        n = max(k, fixed)
        x = self._widen(x, n)
        dim = 3 * self.head.hc.hidden_size
        s = self._steps.get((kind, n)) if n == fixed else None
        if s is None:
            s = _Step(kind, n, self.width, dim, self.device, self.dtype, pin=self.capture)
            if n == fixed:
                self._steps[(kind, n)] = s
        if x.device.type == "cpu" and self.device.type != "cpu":
            if s.copied is not None:  # the previous async copy out of this pinned buffer must be done
                s.copied.synchronize()
            s.host.copy_(x)
            s.dev.copy_(s.host, non_blocking=True)
            if self.capture:
                s.copied = torch.cuda.Event()
                s.copied.record()
        else:
            s.dev.copy_(x)
        if features is not None:
            s.features[0, :k].copy_(features.to(self.dtype))
        if not (self.capture and n == fixed):
            return self.run_table(s.dev, s.features, self.max_len)[:k]
        if s.graph is None:
            s.graph, s.out = capture_graph(
                lambda: self.run_table(s.dev, s.features, self.max_len), self._pool
            )
            self._pool = s.graph.pool()
        s.graph.replay()
        return s.out[:k]

    def _check_slots(self, end: int) -> None:
        if end > self.max_len:
            raise UserError(
                f"decoding.max_len: {self.max_len} KV slots are too few for this generation (draft)"
            )

    # ------------------------------------------------------------------ runner API
    def commit(self, features: torch.Tensor, ids: list[int]) -> torch.Tensor:
        n = len(ids)
        self._check_slots(self.length + max(n, self.commit_rows))
        logp = self._run("commit", self._commit_table(ids), features)
        self.length = self.tree_end = self.length + n
        return logp[n - 1 :]

    def expand_level(self, idx: torch.Tensor, d: int, pool: TensorPool) -> torch.Tensor:
        first, m = self.tree_end, idx.numel()
        self._check_slots(first + max(m, self.tree_rows))
        x = self._level_table(idx, d, pool, first, self.length, self.width)
        self.tree_end = first + max(m, self.tree_rows)  # padding rows take slots too
        return self._run("tree", x, None)

    def expander(self, length: torch.Tensor, k: int):
        """An ``expand`` for the tensor tree builders: level d at slots length + (d - 1) k + [0, m) after the
        device tensor ``length`` of committed entries (so one captured graph serves every position)."""

        def expand(idx: torch.Tensor, d: int, pool: TensorPool) -> torch.Tensor:
            x = self._level_table(idx, d, pool, length + (d - 1) * k, length, self.width)
            return self.run_table(x, None, self.max_len)

        return expand

    def grow_at(self, g: GrowBuffers, depth: int, k: int, total: int) -> DraftTree:
        """:func:`grow_greedy` from ``g.root`` after ``g.length`` committed entries (:meth:`expander`), with no
        host value: what this runner's tree graph and the engine's captured step record."""
        tree, _ = grow_greedy(g.root, self.expander(g.length, k), depth, k, total, self.token_map)
        return tree

    def grow_greedy(self, root_logp: torch.Tensor, depth: int, k: int, total: int) -> DraftTree:
        """The T = 0 tree after the last commit from the root's children ``root_logp`` (1, V_d), drafted on the
        device. Its tensors stay there (with ``depths``, so the target runner builds its step there too)."""
        self._check_slots(self.length + (depth - 1) * k)
        key = (depth, k, total)
        if key not in self._grows:
            self._grows[key] = GrowBuffers(root_logp.shape[-1], self.device)
        g = self._grows[key]
        g.root.copy_(root_logp)
        g.length.fill_(self.length)
        if not self.capture:
            return self.grow_at(g, depth, k, total)
        if g.graph is None:
            g.graph, g.out = capture_graph(lambda: self.grow_at(g, depth, k, total), self._pool)
            self._pool = g.graph.pool()
        g.graph.replay()
        t = g.out
        # copies: the next replay rewrites the graph's buffers while this tree may still be in use
        return DraftTree(
            t.tokens.clone(),
            t.parents.clone(),
            None,
            t.depths.clone(),
            t.depth_bound,
            t.ancestors.clone(),
            ranks=t.ranks.clone(),
            logq=t.logq.clone(),
        )
