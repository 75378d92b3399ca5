"""Draft diagnostics of verification steps, one implementation for the engine (every execution path) and the
reference evaluator (vsd.evaluation.reference).

Per verification step: the sibling ranks of the accepted path, and for every node whose parent was accepted
(the root's children included) its depth, confidence exp(logq) and whether it was accepted, binned per depth
into ``CALIB_BINS`` equal-width confidence bins, plus per (depth, sibling rank) counts (``decoding.shape=auto``
fits its acceptance model to those). :class:`DraftStats` accumulates them on the drafter's device without a
host sync (inside the captured step's graph too).
"""

from __future__ import annotations

import torch

from vsd.decoding.drafter import DraftTree
from vsd.decoding.tree_attention import node_depths

CALIB_BINS = 10  # equal-width bins of the draft's confidence exp(logq) in [0, 1]


def confidence_bins(conf: torch.Tensor) -> torch.Tensor:
    """The calibration bin (long, 0 .. CALIB_BINS - 1) of each confidence in [0, 1], in ``conf``'s dtype."""
    return (conf * CALIB_BINS).long().clamp(0, CALIB_BINS - 1)


def calib_by_depth(depths: torch.Tensor, conf: torch.Tensor, accepted: torch.Tensor) -> dict[str, list]:
    """eval.jsonl's ``calib`` from the nodes whose parent was accepted: depth ("1", "2", ...) -> CALIB_BINS rows
    [count, sum of confidence, accepted count], summed in node order in float64. depths (n,) long, conf (n,)
    float, accepted (n,) bool; host tensors."""
    out: dict[str, list] = {}
    bins = confidence_bins(conf)
    rows = torch.stack([torch.ones_like(conf, dtype=torch.float64), conf.double(), accepted.double()], 1)
    for d in depths.unique().tolist():
        sel = depths == d
        cells = torch.zeros(CALIB_BINS, 3, dtype=torch.float64).index_add_(0, bins[sel], rows[sel])
        out[str(int(d))] = [[int(c), float(sc), int(sa)] for c, sc, sa in cells.tolist()]
    return out


class DraftStats:
    """Accumulates :class:`GenResult`'s draft diagnostics over one generation. Trees without ``ranks`` and
    ``logq`` (a drafter that does not record them) only get their depth recorded."""

    def __init__(self, depth: int, ranks: int):
        self.depth, self.ranks = depth, ranks
        self.calib: torch.Tensor | None = None
        self.rank_counts: torch.Tensor | None = None

    def allocate(self, device: torch.device | str) -> None:
        """Zeroed accumulators on ``device`` (the captured step allocates them before its capture)."""
        self.calib = torch.zeros(self.depth * CALIB_BINS, 3, dtype=torch.float64, device=device)
        self.rank_counts = torch.zeros(self.depth * self.ranks, 2, dtype=torch.float64, device=device)

    def accumulate(self, tree: DraftTree, ok: torch.Tensor, depths: torch.Tensor | None = None) -> None:
        """Add one verified tree: ``ok`` (N+1,) bool on the tree's device marks the root and the accepted nodes;
        ``depths`` defaults to the tree's. Tensor ops only (capturable)."""
        dev = tree.ranks.device
        if self.calib is None:
            self.allocate(dev)
        seen = ok[tree.parents.to(dev) + 1]  # the parent was accepted
        if tree.valid is not None:
            seen = seen & tree.valid
        seen = seen.double()
        acc = ok[1:].double() * seen
        conf = tree.logq.double().exp().nan_to_num(0.0)
        d = (tree.depths if depths is None else depths).to(dev).clamp(1, self.depth) - 1
        b = confidence_bins(conf)
        self.calib.index_add_(0, d * CALIB_BINS + b, torch.stack([seen, conf * seen, acc], 1))
        r = tree.ranks.clamp(0, self.ranks - 1)
        self.rank_counts.index_add_(0, d * self.ranks + r, torch.stack([seen, acc], 1))

    def add(self, tree: DraftTree, path: list[int]) -> tuple[int, list[int]]:
        """Record one verified tree and its accepted path; returns (tree depth, ranks along the path)."""
        if tree.size == 0:
            return 0, []
        depths = tree.depths if tree.depths is not None else node_depths(tree.parents.cpu())
        if tree.ranks is None or tree.logq is None:
            return int(depths.max()), []
        dev = tree.ranks.device
        ok = torch.zeros(tree.size + 1, dtype=torch.bool)
        ok[0] = True  # the root
        ok[[i + 1 for i in path]] = True
        self.accumulate(tree, ok.to(dev), depths)
        # one small host read: the deepest level and the accepted path's ranks
        read = torch.cat([depths.max().reshape(1).to(dev), tree.ranks[path] if path else tree.ranks[:0]])
        vals = read.tolist()
        return int(vals[0]), [int(v) for v in vals[1:]]

    def finish(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(calib (D, CALIB_BINS, 3), rank_counts (D, R, 2)) on the host, or (None, None) if nothing was
        recorded: :class:`vsd.decoding.engine.GenResult`'s fields."""
        if self.calib is None:
            return None, None
        # copies: the captured step reuses its accumulators for the next generation (.cpu() of a CPU tensor
        # would hand out the live buffer)
        return (
            self.calib.view(self.depth, CALIB_BINS, 3).to("cpu", copy=True),
            self.rank_counts.view(self.depth, self.ranks, 2).to("cpu", copy=True),
        )
