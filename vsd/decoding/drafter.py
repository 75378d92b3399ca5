"""The draft-tree data structure and the interface every drafter (n-gram, EAGLE-3, VSD) implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from vsd.config.schema import DecodingConfig
from vsd.decoding.tree_attention import node_depths


@dataclass
class DraftTree:
    """A draft tree continuing after the root (the last committed token, not yet in the target's cache).

    tokens: (N,) long, target-vocab ids of the draft nodes (root excluded).
    parents: (N,) long, index of each node's parent in ``tokens``; -1 = child of the root. Topologically
        ordered (parent index < own index) and siblings appear in the order they were SAMPLED (T>0
        verification tries them in that order).
    child_dists: (N+1, V) float probabilities, only at T>0 (None at T=0). Row 0 is the distribution the
        root's children were sampled from (without replacement), row i+1 that of node i's children. Rows of
        nodes without children are unused (may be zero).
    depths: (N,) long, optional: each node's depth (1 = child of the root), where the drafter knows it on its
        device; then the static target runner builds the step's mask and positions there, without a host copy.
    depth_bound: optional upper bound on the depth (fixed loop counts for device-side tree walks).
    ancestors: (N, N) bool, optional: [i, j] when node j is node i or one of its ancestors, computed where the
        tree was built (a graphed drafter computes it inside its graph), so neither the target step's mask
        nor verification rebuilds it with extra small launches.
    ranks: (N,) long, optional: each node's rank among its siblings by the draft (0 = the draft's top choice;
        at T>0 the sampling order).
    logq: (N,) float, optional: the draft's log-prob of each node given its parent (raw log-softmax at T=0,
        the warped distribution it was sampled from at T>0).
    dist_ids: (V_d,) long, optional: the target ids of ``child_dists``' columns when the drafter keeps its
        distributions in a smaller draft vocabulary (None: the columns are the target vocab).
    valid: (N,) bool, optional: False marks a node that is absent but kept so every shape stays fixed (a
        sampled rank past its parent's support, in a tree built for the captured step); never accepted.
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    child_dists: torch.Tensor | None = None
    depths: torch.Tensor | None = None
    depth_bound: int | None = None
    ancestors: torch.Tensor | None = None
    ranks: torch.Tensor | None = None
    logq: torch.Tensor | None = None
    dist_ids: torch.Tensor | None = None
    valid: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.tokens.numel())

    def max_depth(self) -> int:
        """An upper bound on the node depth: ``depth_bound`` if set, else the exact depth (walks the parents on
        the host)."""
        if self.depth_bound is not None:
            return self.depth_bound
        return int(node_depths(self.parents.cpu()).max()) if self.size else 0

    @staticmethod
    def chain(tokens: list[int], child_dists: torch.Tensor | None = None) -> DraftTree:
        """A single path root -> tokens[0] -> tokens[1] -> ... (each the drafter's only, top choice: rank 0,
        log-prob 0: a point mass, as the n-gram drafter's)."""
        n = len(tokens)
        return DraftTree(
            torch.tensor(tokens, dtype=torch.long),
            torch.arange(-1, n - 1, dtype=torch.long),
            child_dists,
            ranks=torch.zeros(n, dtype=torch.long),
            logq=torch.zeros(n),
        )

    def full_dists(self, vocab_size: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``child_dists`` (or its ``rows``) over the target vocab (N+1 or len(rows), vocab_size) float32
        (scattered from the draft vocab when ``dist_ids`` is set)."""
        assert self.child_dists is not None
        q = (
            self.child_dists
            if rows is None
            else self.child_dists.index_select(0, rows.to(self.child_dists.device))
        )
        q = q.float()
        if self.dist_ids is None:
            return q
        out = q.new_zeros(q.shape[0], vocab_size)
        return out.index_copy_(1, self.dist_ids.to(q.device), q)


@runtime_checkable
class Drafter(Protocol):
    """What the engine calls. One generation = reset, then (propose, commit)* until the target stops."""

    name: str
    needs_features: bool  # True: the engine passes target features (T, 3H) of committed positions

    def reset(self, prompt_ids: list[int], prompt_features: torch.Tensor | None) -> None:
        """New generation; ``prompt_features`` (len(prompt_ids), 3H) from the prefill forward (or None)."""
        ...

    def propose(self, root: int, dcfg: DecodingConfig, generator: torch.Generator | None) -> DraftTree:
        """A draft tree continuing after ``root`` (last committed token, not yet in the target cache)."""
        ...

    def commit(self, accepted: list[int], features: torch.Tensor | None) -> None:
        """After verification: ``accepted`` = [root, accepted draft tokens...], ``features``
        (len(accepted), 3H) the target features at those positions. The bonus/correction token becomes
        the next root (passed to the next ``propose``)."""
        ...

    def extra_nodes(self, dcfg: DecodingConfig) -> int:
        """Nodes a tree may hold past the configured shape (:class:`vsd.decoding.tree.TreeShape`): the static
        runners size their steps for them."""
        ...

    def captured_step(self, target_runner: Any, dcfg: DecodingConfig) -> Any:
        """The whole speculative step as captured graphs for this target runner and config
        (:class:`vsd.decoding.captured_step.CapturedStep`), or None: the engine runs ``propose``, the target
        step, verification and ``commit`` per call."""
        ...
