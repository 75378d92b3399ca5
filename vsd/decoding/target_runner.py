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
from dataclasses import dataclass

import torch

from vsd.config.schema import DecodingConfig
from vsd.decoding.drafter import DraftTree
from vsd.decoding.slot_cache import SlotCache
from vsd.decoding.tree_attention import ancestors_by_hops, node_depths
from vsd.errors import UserError
from vsd.models.target import TargetOutput
from vsd.runtime import capture_graph


def tree_step_inputs(
    root: int | torch.Tensor, tree: DraftTree | None, rows: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inputs of one verification step over [root, tree nodes, padding], the contract every execution path
    (eager, static runner, captured step) builds its forward from. ``rows`` >= tree.size + 1.

    Returns ids (rows,) long (the root, the nodes' tokens, then 0); offsets (rows,) long, each row's position
    minus the root's (a node of depth d sits d after the root; padding at 0); block (rows, rows) bool, [i, j]
    when row i attends to row j (the root, its ancestors and itself; a padding row only itself, so nothing
    attends to it). Every row also attends to the committed prefix, which each path adds to its own mask. Tensor
    operations on ``device`` only (capturable) when the tree carries ``depths`` and ``ancestors``; ``root`` may
    be a (1,) device tensor."""
    n = 0 if tree is None else tree.size
    k = n + 1
    long = dict(dtype=torch.long, device=device)
    if torch.is_tensor(root):
        root_t = root.reshape(1).to(device)
    else:  # full(): the value travels as a kernel argument, no host tensor to copy
        root_t = torch.full((1,), root, **long)
    pad = torch.zeros(rows - k, **long)
    block = torch.eye(rows, dtype=torch.bool, device=device)
    if n == 0:
        return torch.cat([root_t, pad]), torch.zeros(rows, **long), block
    depths = tree.depths if tree.depths is not None else node_depths(tree.parents.cpu())
    anc = tree.ancestors
    if anc is None:
        anc = ancestors_by_hops(tree.parents, tree.max_depth())
    ids = torch.cat([root_t, tree.tokens.to(device), pad])
    offsets = torch.cat([torch.zeros(1, **long), depths.to(device), pad])
    # fill_, not item assignment: assigning a Python number copies a host scalar (no capture, a stream sync)
    block[1:k, 0].fill_(True)
    block[1:k, 1:k] = anc.to(device)
    return ids, offsets, block


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool (.., q, k) -> additive mask: 0 where allowed, the dtype's min elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min
    )


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
        rows = 1 if tree is None else tree.size + 1
        ids, offsets, block = tree_step_inputs(root, tree, rows, t.device)
        # every row sees the committed prefix; a 1-row step sees everything (see the class docstring)
        allowed = torch.cat([torch.ones(rows, self.length, dtype=torch.bool, device=t.device), block], 1)
        mask = additive_mask(allowed, t.dtype)[None, None]
        pos = (self.length + offsets)[None]
        ids = ids[None]
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
    def _fill(self, shape: _Shape, ids: torch.Tensor, offsets: torch.Tensor, block: torch.Tensor) -> None:
        """Write one step's inputs (host tensors: ids (n,), position offsets from the block's start (n,), the
        block's (n, n) visibility) into the static buffers: one pinned copy for ids/positions/slots, one for the
        mask block. Host-built steps (the prefill, an AR step, a host drafter's tree) take this path: per-step
        launch overhead is what a captured step of a small model is left with."""
        n, start = shape.n, self.length
        h = shape.host
        h[0].copy_(ids)
        torch.add(offsets, start, out=h[1])
        torch.arange(start, start + n, out=h[2])
        shape.dev.copy_(h, non_blocking=True)
        self._open_prefix(shape, start)
        shape.host_block.zero_().masked_fill_(~block, self._neg)
        shape.mask[0, 0, :, start : start + n].copy_(shape.host_block, non_blocking=True)

    def _fill_device(
        self, shape: _Shape, ids: torch.Tensor, offsets: torch.Tensor, block: torch.Tensor
    ) -> None:
        """The same from device tensors (a graphed drafter's tree): built there with a few small ops, so the
        drafter's output never crosses to the host before verification."""
        n, start = shape.n, self.length
        x = shape.dev
        x[0].copy_(ids)
        torch.add(offsets, start, out=x[1])
        torch.arange(start, start + n, out=x[2])
        self._open_prefix(shape, start)
        shape.mask[0, 0, :, start : start + n] = torch.where(block, 0.0, self._neg).to(shape.mask.dtype)

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
        self._fill(
            shape, torch.tensor(prompt_ids), torch.arange(n), torch.tril(torch.ones(n, n, dtype=torch.bool))
        )
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
        # a graphed drafter's tree (depths on its device) is built on the device; anything else on the host
        on_device = tree is not None and tree.size > 0 and tree.depths is not None
        k = 1 if tree is None else tree.size + 1
        n = max(rows or k, k)
        if self.length + n > self.max_len:
            raise UserError(f"decoding.max_len: {self.max_len} KV slots are too few for this generation")
        shape = self._shape(n, features)
        if on_device:
            self._fill_device(shape, *tree_step_inputs(root, tree, n, shape.dev.device))
        else:
            self._fill(shape, *tree_step_inputs(root, tree, n, "cpu"))
        self._block = n
        out = self._run(shape, features)
        if k == n:
            return out
        return TargetOutput(out.logits[:, :k], None if out.features is None else out.features[:, :k], None)

    def keep(self, rows: list[int]) -> None:
        self.cache.keep(self.length, rows)
        self.length += len(rows)


@dataclass(frozen=True)
class Backend:
    """How one generation runs its target and draft, resolved once from ``decoding.capture`` and the device.

    ``eager``: dynamic shapes (the stock DynamicCache, the eager draft runner); ``static``: static shapes
    (SlotCache, fixed rows per step) run eagerly (tests; the CPU check of the graph path); ``captured``: static
    shapes captured as CUDA graphs. ``decoding.capture=cuda_graph`` without CUDA is ``eager``."""

    name: str  # eager | static | captured

    @classmethod
    def of(cls, dcfg: DecodingConfig, device: torch.device | str, warn: bool = False) -> Backend:
        """``warn``: say so when ``cuda_graph`` falls back to eager (once per call site)."""
        if dcfg.capture == "static":
            return cls("static")
        if dcfg.capture == "cuda_graph":
            if torch.device(device).type == "cuda":
                return cls("captured")
            if warn:
                warnings.warn("decoding.capture=cuda_graph needs CUDA; running eagerly", stacklevel=3)
        return cls("eager")

    @property
    def static(self) -> bool:
        """Static shapes: the graph runners (:class:`GraphRunner`, the static draft runner)."""
        return self.name != "eager"

    @property
    def graphs(self) -> bool:
        """Static shapes captured as CUDA graphs and replayed."""
        return self.name == "captured"


def make_runner(target, dcfg: DecodingConfig, max_len: int | None = None):
    """The target runner of :class:`Backend`: eager -> DynamicRunner; static -> GraphRunner run eagerly (tests);
    captured -> GraphRunner captured on CUDA (``cuda_graph`` without CUDA warns and runs eagerly)."""
    max_len = max_len or dcfg.max_len
    backend = Backend.of(dcfg, target.device, warn=True)
    if not backend.static:
        return DynamicRunner(target)
    # Graphs are tied to their buffers: one runner per (target, mode, max_len), reused across generations.
    runners = target.__dict__.setdefault("_graph_runners", {})
    key = (dcfg.capture, max_len)
    if key not in runners:
        runners[key] = GraphRunner(target, max_len, capture=backend.graphs)
    return runners[key]
