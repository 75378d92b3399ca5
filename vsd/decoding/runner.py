"""How the engine runs the target: eager on the stock DynamicCache, or static-shape with captured CUDA graphs.

Both runners expose the same three calls, so plain AR and speculative decoding share one code path whatever
the backend:

- ``prefill(prompt_ids, features)`` -> TargetOutput over the prompt (always eager);
- ``step(root, tree, features)`` -> TargetOutput over ``[root, tree nodes...]`` appended after the committed
  tokens (``tree=None``: just the root, i.e. one AR step); row 0 is the root;
- ``keep(rows)`` keeps, of the rows just written, ``rows`` (relative, increasing, row 0 = root) as committed.

:class:`GraphRunner` keeps every shape static: a :class:`~vsd.decoding.slot_cache.SlotCache` of ``max_len``
slots, a fixed number of rows per step (1 for AR, ``total_tokens + 1`` for a tree, ``depth + 1`` for a chain;
shorter trees are padded with nodes nothing attends to) and caller-built 4D masks. On CUDA each step shape
is captured once as a CUDA graph and replayed; elsewhere the same code runs eagerly (which is how CI tests
it against the dynamic runner).
"""

from __future__ import annotations

import warnings

import torch

from vsd.config.schema import DecodingConfig
from vsd.decoding.drafter import DraftTree
from vsd.decoding.slot_cache import SlotCache
from vsd.decoding.tree_attention import (
    ancestor_matrix,
    ancestors_by_hops,
    node_depths,
    tree_attention_mask,
    tree_position_ids,
)
from vsd.errors import UserError
from vsd.models.target import TargetOutput
from vsd.runtime import capture_graph


def _full_parents(tree: DraftTree) -> torch.Tensor:
    """Parents of [root, nodes...]: the root has -1, depth-1 nodes point at the root (row 0)."""
    return torch.cat([torch.tensor([-1]), tree.parents.cpu() + 1])


def _mask_from_ancestors(
    tree: DraftTree, start: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (1, 1, N+1, start+N+1) additive mask and (1, N+1) positions of [root, nodes] after ``start`` cached
    entries, from the tree's ``depths`` and ``ancestors`` (what :func:`tree_attention_mask` and
    :func:`tree_position_ids` build from the parents)."""
    n = tree.size + 1
    allowed = torch.ones(n, start + n, dtype=torch.bool, device=device)
    block = allowed[:, start:]
    block.zero_()
    block[:, 0] = True  # every row sees the root, which sees itself
    block[1:, 1:] = tree.ancestors.to(device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(
        ~allowed, torch.finfo(dtype).min
    )
    pos = start + torch.cat([torch.zeros(1, dtype=torch.long, device=device), tree.depths.to(device)])
    return mask[None, None], pos[None]


class DynamicRunner:
    """Eager forwards on the stock HF DynamicCache (the reference path).

    Every step passes an explicit 4D mask and positions, the 1-token AR step included. Why: with no mask, HF's
    SDPA attention (transformers 5.24) hands grouped-query attention to ``F.scaled_dot_product_attention(...,
    enable_gqa=True)``, whose bf16 kernel on a CPU took ~375 us per layer for one query over 500 cached
    entries; with a mask, a single query is packed per key/value head (``pack_gqa``) and took ~50 us. The
    maskless AR step was ~10 ms (30%) slower at 500 cached tokens, which inflated every speedup over AR. The
    masks are exact (all-visible for a single query; causal/tree for a block), so the outputs are the same.
    """

    def __init__(self, target):
        self.target = target
        self.cache = None
        self.length = 0
        self._added = 0

    def prefill(self, prompt_ids: list[int], features: bool) -> TargetOutput:
        self.cache = self.target.new_cache()
        out = self.target.forward(
            torch.tensor([prompt_ids], device=self.target.device), cache=self.cache, output_features=features
        )
        self.length = len(prompt_ids)
        return out

    def step(
        self, root: int, tree: DraftTree | None, features: bool, rows: int | None = None
    ) -> TargetOutput:
        """``rows`` (static row count) is ignored: dynamic shapes need no padding."""
        t = self.target
        if tree is None or tree.size == 0:
            ids = torch.tensor([[root]])
            mask = torch.zeros(1, 1, 1, self.length + 1, dtype=t.dtype, device=t.device)  # sees everything
            pos = torch.full((1, 1), self.length, device=t.device)
        elif tree.depths is not None and tree.ancestors is not None:
            # the drafter's own depths and ancestor matrix: a few tensor ops, no walk over the nodes
            ids = torch.cat([torch.tensor([root]), tree.tokens.cpu()])[None]
            mask, pos = _mask_from_ancestors(tree, self.length, t.dtype, t.device)
        else:
            ids = torch.cat([torch.tensor([root]), tree.tokens.cpu()])[None]
            full = _full_parents(tree).to(t.device)
            mask = tree_attention_mask(full, self.length, t.dtype)
            pos = tree_position_ids(full, self.length)
        self._added = ids.shape[1]
        return t.forward(
            ids.to(t.device),
            cache=self.cache,
            attention_mask=mask,
            position_ids=pos,
            output_features=features,
        )

    def keep(self, rows: list[int]) -> None:
        keep_cache_rows(self.cache, self.length, rows, self._added)
        self.length += len(rows)


def keep_cache_rows(cache, start: int, rows: list[int], added: int) -> None:
    """Keep, of the ``added`` entries appended at ``start``, only ``rows`` (relative, increasing): gather
    them to the front of the block along the sequence dim of every layer, then crop the rest."""
    if rows != list(range(len(rows))):
        idx = torch.tensor(rows, device=cache.layers[0].keys.device) + start
        dst = slice(start, start + len(rows))
        for layer in cache.layers:
            layer.keys[:, :, dst] = layer.keys.index_select(2, idx)
            layer.values[:, :, dst] = layer.values.index_select(2, idx)
    if added > len(rows):
        cache.crop(-(added - len(rows)))


class _Shape:
    """Static input/output buffers (and, on CUDA, the captured graph) for steps of ``n`` rows."""

    def __init__(self, n: int, max_len: int, device: torch.device, dtype: torch.dtype):
        self.n = n
        # ids, positions and slots travel in ONE host->device copy per step (from pinned memory on CUDA):
        # per-step launch overhead is what a captured step of a small model is left with.
        pin = torch.device(device).type == "cuda"
        self.host = torch.zeros(3, n, dtype=torch.long, pin_memory=pin)
        self.host_block = torch.zeros(n, n, dtype=dtype, pin_memory=pin)
        self.dev = torch.zeros(3, n, dtype=torch.long, device=device)
        self.ids, self.pos, self.slots = self.dev[0:1], self.dev[1:2], self.dev[2]
        self.mask = torch.full((1, 1, n, max_len), torch.finfo(dtype).min, dtype=dtype, device=device)
        self.prefix_done = 0  # mask columns [0, prefix_done) are open (committed)
        self.last_end = 0  # end of the block written by the previous step
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: TargetOutput | None = None


class GraphRunner:
    """Static-shape runner: SlotCache + fixed rows per step; CUDA graphs on CUDA, eager elsewhere."""

    def __init__(self, target, max_len: int, capture: bool):
        self.target = target
        self.max_len = max_len
        dev = target.device
        self.capture = capture and dev.type == "cuda"
        self.cache = SlotCache(target.config, max_len, dev, target.dtype)
        self.length = 0
        self._shapes: dict[tuple[int, bool], _Shape] = {}
        self._pool = None
        self._block = 0
        self._neg = torch.finfo(target.dtype).min

    # -------------------------------------------------------------- helpers
    def _fill(self, shape: _Shape, ids: list[int], depths: torch.Tensor, anc: torch.Tensor) -> None:
        """Write one step's inputs into the static buffers from the host (rows beyond len(ids) are padding):
        one pinned copy for ids/positions/slots, one for the tree's mask block."""
        n, k, start = shape.n, len(ids), self.length
        h = shape.host
        h[0].zero_()
        h[0, :k] = torch.tensor(ids)
        h[1].fill_(start)
        h[1, :k] = start + depths - 1
        torch.arange(start, start + n, out=h[2])
        shape.dev.copy_(h, non_blocking=True)
        full_anc = torch.eye(n, dtype=torch.bool)  # padding rows see only themselves
        full_anc[:k, :k] = anc
        self._open_prefix(shape, start)
        shape.host_block.zero_().masked_fill_(~full_anc, self._neg)
        shape.mask[0, 0, :, start : start + n].copy_(shape.host_block, non_blocking=True)

    def _fill_from_device_tree(self, shape: _Shape, root: int, tree: DraftTree) -> None:
        """The same inputs from a tree whose tokens and depths live on the device (a graphed drafter's): built
        there with a few small ops, so the drafter's output never crosses to the host before verification."""
        n, k, start = shape.n, tree.size + 1, self.length
        x = shape.dev
        x[0].zero_()
        x[0, :1].fill_(root)  # fill_, not item assignment: that copies a host scalar and syncs the stream
        x[0, 1:k] = tree.tokens.to(x.device)
        x[1].fill_(start)
        x[1, 1:k] = start + tree.depths.to(x.device)  # the root sits at start, a node of depth d at start + d
        torch.arange(start, start + n, out=x[2])
        allowed = torch.eye(n, dtype=torch.bool, device=x.device)
        allowed[1:k, 0].fill_(True)
        anc = tree.ancestors
        if anc is None:
            anc = ancestors_by_hops(tree.parents, tree.max_depth())
        allowed[1:k, 1:k] = anc.to(x.device)
        self._open_prefix(shape, start)
        shape.mask[0, 0, :, start : start + n] = torch.where(allowed, 0.0, self._neg).to(shape.mask.dtype)

    def _open_prefix(self, shape: _Shape, start: int) -> None:
        """Incremental mask update (a full rewrite of the (n, max_len) mask costs more than the graphed
        forward of a small model): committed columns only ever grow within one generation."""
        n = shape.n
        if start < shape.prefix_done:  # a new generation
            shape.mask.fill_(self._neg)
            shape.prefix_done = shape.last_end = 0
        # fill_: assigning a Python number to a CUDA slice copies a host scalar, which waits for the stream
        shape.mask[..., shape.prefix_done : start].fill_(0)
        if shape.last_end > start + n:
            shape.mask[..., start + n : shape.last_end].fill_(self._neg)
        shape.prefix_done, shape.last_end = start, start + n

    def _run(self, shape: _Shape, features: bool) -> TargetOutput:
        self.cache.set_slots(shape.slots)

        def fwd() -> TargetOutput:
            return self.target.forward(
                shape.ids,
                cache=self.cache,
                attention_mask=shape.mask,
                position_ids=shape.pos,
                output_features=features,
            )

        if not self.capture:
            return fwd()
        if shape.graph is None:
            shape.graph, shape.out = capture_graph(fwd, self._pool)
            self._pool = shape.graph.pool()
        shape.graph.replay()
        return shape.out

    def _shape(self, n: int, features: bool) -> _Shape:
        key = (n, features)
        if key not in self._shapes:
            self._shapes[key] = _Shape(n, self.max_len, self.target.device, self.target.dtype)
        return self._shapes[key]

    # -------------------------------------------------------------- runner API
    def prefill(self, prompt_ids: list[int], features: bool) -> TargetOutput:
        n = len(prompt_ids)
        if n + 1 > self.max_len:
            raise UserError(f"decoding.max_len: a prompt of {n} tokens does not fit {self.max_len} KV slots")
        self.length = 0
        shape = _Shape(n, self.max_len, self.target.device, self.target.dtype)  # eager, not captured
        self._fill(shape, prompt_ids, torch.arange(1, n + 1), torch.tril(torch.ones(n, n, dtype=torch.bool)))
        self.cache.set_slots(shape.slots)
        out = self.target.forward(
            shape.ids,
            cache=self.cache,
            attention_mask=shape.mask,
            position_ids=shape.pos,
            output_features=features,
        )
        self.length = n
        self.cache.length = n
        return out

    def step(
        self, root: int, tree: DraftTree | None, features: bool, rows: int | None = None
    ) -> TargetOutput:
        """``rows``: the static row count of this step kind (defaults to the actual size)."""
        on_device = tree is not None and tree.size > 0 and tree.depths is not None
        if tree is None or tree.size == 0:
            ids, depths, anc = [root], torch.ones(1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool)
        elif not on_device:
            full = _full_parents(tree)
            ids = [root, *tree.tokens.tolist()]
            depths, anc = node_depths(full), ancestor_matrix(full)
        k = tree.size + 1 if on_device else len(ids)
        n = max(rows or k, k)
        if self.length + n > self.max_len:
            raise UserError(f"decoding.max_len: {self.max_len} KV slots are too few for this generation")
        shape = self._shape(n, features)
        if on_device:
            self._fill_from_device_tree(shape, root, tree)
        else:
            self._fill(shape, ids, depths, anc)
        self._block = n
        out = self._run(shape, features)
        if k == n:
            return out
        return TargetOutput(out.logits[:, :k], None if out.features is None else out.features[:, :k], None)

    def keep(self, rows: list[int]) -> None:
        self.cache.keep(self.length, rows)
        self.length += len(rows)


def make_runner(target, dcfg: DecodingConfig, max_len: int | None = None):
    """``decoding.capture``: none -> DynamicRunner; cuda_graph -> GraphRunner (captured on CUDA; without CUDA
    it warns once and falls back to the eager DynamicRunner); static -> GraphRunner run eagerly (tests)."""
    max_len = max_len or dcfg.max_len
    if dcfg.capture == "none":
        return DynamicRunner(target)
    if dcfg.capture == "cuda_graph" and target.device.type != "cuda":
        warnings.warn("decoding.capture=cuda_graph needs CUDA; running eagerly", stacklevel=2)
        return DynamicRunner(target)
    # Graphs are tied to their buffers: one runner per (target, mode, max_len), reused across generations.
    runners = target.__dict__.setdefault("_graph_runners", {})
    key = (dcfg.capture, max_len)
    if key not in runners:
        runners[key] = GraphRunner(target, max_len, capture=dcfg.capture == "cuda_graph")
    return runners[key]
