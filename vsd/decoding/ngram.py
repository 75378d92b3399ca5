"""Prompt-lookup (n-gram) drafter: needs no training, so the engine runs before any draft model exists."""

from __future__ import annotations

import torch

from vsd.config.schema import DecodingConfig
from vsd.decoding.drafter import DraftTree
from vsd.decoding.tree import TreeShape


class NgramDrafter:
    """Match the last n tokens (n = ngram_max down to ngram_min) of prompt + output against earlier text
    and propose the continuation of the most recent match as a chain of up to ``depth`` tokens.

    The draft distribution is a point mass on each proposed token (rows of ``child_dists`` at T>0).
    """

    name = "ngram"
    needs_features = False

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.history: list[int] = []

    def reset(self, prompt_ids: list[int], prompt_features: torch.Tensor | None = None) -> None:
        self.history = list(prompt_ids)

    def commit(self, accepted: list[int], features: torch.Tensor | None = None) -> None:
        self.history.extend(accepted)

    def extra_nodes(self, dcfg: DecodingConfig) -> int:
        return 0

    def captured_step(self, target_runner, dcfg: DecodingConfig) -> None:
        return None  # host-built chains: the per-call step

    def lookup(self, seq: list[int], ngram_max: int, ngram_min: int, depth: int) -> list[int]:
        """Continuation (<= depth tokens) of the most recent earlier occurrence of the longest suffix n-gram."""
        L = len(seq)
        for n in range(min(ngram_max, L - 1), ngram_min - 1, -1):
            pat = seq[L - n :]
            first = pat[0]
            # scan right to left; a match must end before the suffix itself (continuation non-empty)
            for j in range(L - n - 1, -1, -1):
                if seq[j] == first and seq[j : j + n] == pat:
                    return seq[j + n : j + n + depth]
        return []

    def propose(self, root: int, dcfg: DecodingConfig, generator: torch.Generator | None = None) -> DraftTree:
        shape = TreeShape.of(dcfg)
        depth = min(shape.depth, shape.nodes)  # a chain of the shape's depth, within its node budget
        toks = self.lookup(self.history + [root], dcfg.ngram_max, dcfg.ngram_min, depth)
        dists = None
        if dcfg.temperature > 0:
            dists = torch.zeros(len(toks) + 1, self.vocab_size)
            if toks:
                dists[torch.arange(len(toks)), torch.tensor(toks)] = 1.0
        return DraftTree.chain(toks, dists)
