"""``decoding.shape=auto``: choose the tree's depth, top-k and node budget for this device and this draft.

Sequoia-style. Two measured inputs:

- an :class:`AcceptanceTable`: a(d, r) = P(the sibling of rank r at depth d is accepted | its parent was
  accepted), counted over every verification step of decoding runs with a generous tree (``rank_counts`` of
  :class:`vsd.decoding.engine.GenResult`). At T = 0 the accepted child is the target's argmax, at T > 0 the one
  recursive rejection sampling keeps; either way the siblings' events exclude each other, so under the usual
  independence across depths a node is on the accepted path with probability prod a(d_i, r_i) along its rank
  path, and tau(tree) = 1 + the sum of that over the tree's nodes.
- a :class:`CostProfile`: c_verify(n) = t(target forward over root + n nodes) / t1 and the draft's cost per
  call (the commit, then each tree level of k rows) / t1, measured on this device
  (:func:`vsd.decoding.shape_measure.measure_shape_costs`).

For every candidate (depth, k, total) the predicted tau is that of the tree the engine would draft under the
model: at T > 0 the rank-only template :func:`vsd.decoding.tree.static_template` (exact under the model); at
T = 0 the EAGLE-2 procedure run on the model's own path probabilities (the dynamic tree re-ranks per step by
the draft's confidence, so it usually does at least this well). The choice maximises the bound
tau / (c_verify(total) + c_draft(depth, k)).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from vsd.decoding.tree import TreeShape, static_template

TOP_KS = (1, 2, 3, 4, 6, 8)  # candidate top-k values (searched up to decoding.shape_max_top_k)
NODE_BUDGETS = (2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64)  # candidate node counts


@dataclass
class AcceptanceTable:
    """Per (depth, rank) counts of nodes whose parent was accepted and of those accepted.

    ``counts`` (D, R, 2) float: [d-1, r] = [nodes of depth d and sibling rank r whose parent was accepted,
    accepted ones]. Rates are smoothed toward the rank's rate pooled over depths (``prior`` pseudo-nodes), so
    thinly observed cells (deep levels, high ranks) borrow strength; depths past D use depth D's rates and
    ranks past R have rate 0 (never observed accepted).
    """

    counts: torch.Tensor
    prior: float = 4.0
    _table: list[list[float]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._table = self.rates().tolist()

    @classmethod
    def from_counts(cls, parts: list[torch.Tensor | None], prior: float = 4.0) -> AcceptanceTable:
        """Sum of per-generation ``rank_counts`` (shapes may differ: padded to the largest)."""
        parts = [p for p in parts if p is not None]
        if not parts:
            raise ValueError("no rank counts: the drafter records no sibling ranks")
        d = max(p.shape[0] for p in parts)
        r = max(p.shape[1] for p in parts)
        out = torch.zeros(d, r, 2, dtype=torch.float64)
        for p in parts:
            out[: p.shape[0], : p.shape[1]] += p.double().cpu()
        return cls(out, prior)

    def rates(self) -> torch.Tensor:
        """(D, R) smoothed a(d, r)."""
        n, acc = self.counts[..., 0], self.counts[..., 1]
        pooled = acc.sum(0) / n.sum(0).clamp(min=1.0)  # (R,)
        return (acc + self.prior * pooled) / (n + self.prior)

    def rate(self, depth: int, rank: int) -> float:
        rates = self._table
        if rank >= len(rates[0]):
            return 0.0
        return rates[min(depth, len(rates)) - 1][rank]

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist(), "prior": self.prior}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AcceptanceTable:
        return cls(torch.tensor(d["counts"], dtype=torch.float64), float(d["prior"]))


@dataclass
class CostProfile:
    """Measured costs in units of t1 (one plain-AR target forward, ``t1_s`` seconds).

    ``verify_nodes`` (increasing) and ``c_verify``: the verify forward over root + n nodes, linearly
    interpolated between the measured n (and extrapolated along the last segment). ``c_commit``: the draft's
    commit call (a few rows, after a target forward). ``c_level[k]``: per tree level d = 1, 2, ... (list index
    d - 1), one expansion of k rows.
    """

    t1_s: float
    verify_nodes: list[int]
    c_verify: list[float]
    c_commit: float
    c_level: dict[int, list[float]] = field(default_factory=dict)

    def verify(self, n: int) -> float:
        xs, ys = self.verify_nodes, self.c_verify
        if n in xs:
            return ys[xs.index(n)]
        i = min(max(bisect.bisect_left(xs, n), 1), len(xs) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (n - x0) / (x1 - x0)

    def draft(self, depth: int, k: int) -> float:
        """The commit plus the depth - 1 expansions of k rows that grow a tree of ``depth`` levels."""
        ks = sorted(self.c_level)
        kk = min((x for x in ks if x >= k), default=ks[-1])  # the nearest measured width at or above k
        levels = self.c_level[kk]
        return self.c_commit + sum(levels[min(d, len(levels) - 1)] for d in range(depth - 1))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["c_level"] = {str(k): v for k, v in self.c_level.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CostProfile:
        return cls(
            float(d["t1_s"]),
            [int(x) for x in d["verify_nodes"]],
            [float(x) for x in d["c_verify"]],
            float(d["c_commit"]),
            {int(k): [float(x) for x in v] for k, v in d["c_level"].items()},
        )


@dataclass(frozen=True)
class Shape:
    depth: int
    top_k: int
    total: int
    pred_tau: float = float("nan")
    pred_bound: float = float("nan")
    cost: float = float("nan")  # c_verify(total) + c_draft(depth, top_k)

    @property
    def tree(self) -> TreeShape:
        """The shape as the decoder drafts it."""
        return TreeShape(self.depth, self.top_k, self.total)


def path_probs_greedy(table: AcceptanceTable, depth: int, k: int, total: int) -> list[float]:
    """Probabilities of the nodes the EAGLE-2 procedure keeps when nodes are scored by their probability of
    being on the accepted path (the T = 0 prediction): k children per frontier node, the k best of each
    depth expanded, the best ``total`` kept."""
    kept: list[float] = []
    frontier = [1.0]
    for d in range(1, depth + 1):
        level = [p * table.rate(d, r) for p in frontier for r in range(k)]
        kept.extend(level)
        frontier = sorted(level, reverse=True)[:k]
    return sorted(kept, reverse=True)[:total]


def path_probs_template(table: AcceptanceTable, depth: int, k: int, total: int) -> list[float]:
    """Probabilities of the nodes of the T > 0 template (:func:`static_template`)."""
    prob: dict[tuple[int, ...], float] = {(): 1.0}
    for path in static_template(depth, k, total):
        prob[path] = prob[path[:-1]] * table.rate(len(path), path[-1])
    return [v for p, v in prob.items() if p]


def predict_tau(table: AcceptanceTable, depth: int, k: int, total: int, temperature: float) -> float:
    """Expected tokens per verification step (bonus included) of a (depth, k, total) tree under ``table``."""
    probs = (path_probs_template if temperature > 0 else path_probs_greedy)(table, depth, k, total)
    return 1.0 + sum(probs)


def candidate_shapes(max_depth: int, max_top_k: int, max_nodes: int, chain_only: bool) -> list[Shape]:
    """(depth, k, total) to compare: every depth up to ``max_depth``, k in TOP_KS up to ``max_top_k`` (only 1 for
    chains), total in NODE_BUDGETS (a chain: total = depth) up to ``max_nodes`` and up to what the tree can
    hold, and at least depth (fewer nodes cannot reach the last drafted level)."""
    out = []
    for depth in range(1, max_depth + 1):
        for k in TOP_KS:
            if k > max_top_k or (chain_only and k > 1):
                continue
            if k == 1:
                if depth <= max_nodes:
                    out.append(Shape(depth, 1, depth))
                continue
            cap = min(max_nodes, k + (depth - 1) * k * k)
            out.extend(Shape(depth, k, n) for n in NODE_BUDGETS if depth <= n <= cap and n > depth)
    return out


def choose_shape(
    table: AcceptanceTable,
    costs: CostProfile,
    temperature: float,
    candidates: list[Shape],
) -> tuple[Shape, list[Shape]]:
    """The candidate with the largest bound tau / (c_verify(total) + c_draft(depth, k)) (ties: fewer nodes,
    then shallower), and every candidate scored (for reports)."""
    scored = []
    for s in candidates:
        tau = predict_tau(table, s.depth, s.top_k, s.total, temperature)
        cost = costs.verify(s.total) + costs.draft(s.depth, s.top_k)
        scored.append(Shape(s.depth, s.top_k, s.total, tau, tau / cost, cost))
    best = max(scored, key=lambda s: (round(s.pred_bound, 9), -s.total, -s.depth, -s.top_k))
    return best, scored


def describe(shape: Shape) -> str:
    tau = "" if math.isnan(shape.pred_tau) else f", predicted tau {shape.pred_tau:.2f}"
    bound = "" if math.isnan(shape.pred_bound) else f", bound {shape.pred_bound:.2f}"
    return f"depth {shape.depth}, top-k {shape.top_k}, {shape.total} nodes{tau}{bound}"
