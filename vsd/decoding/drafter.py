"""The draft-tree data structure and the interface every drafter (n-gram, EAGLE-3, VSD) implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from vsd.config.schema import DecodingConfig


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
    pool_index: (N,) long, optional: index of each node in the drafter's expansion pool (see
        :func:`vsd.decoding.tree.build_dynamic_tree`), so a drafter can map verified nodes to its own cache.
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    child_dists: torch.Tensor | None = None
    pool_index: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.tokens.numel())

    @staticmethod
    def chain(tokens: list[int], child_dists: torch.Tensor | None = None) -> DraftTree:
        """A single path root -> tokens[0] -> tokens[1] -> ..."""
        n = len(tokens)
        return DraftTree(
            torch.tensor(tokens, dtype=torch.long), torch.arange(-1, n - 1, dtype=torch.long), child_dists
        )


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
