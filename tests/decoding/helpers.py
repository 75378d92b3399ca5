"""Test-only drafters for the decoding tests (not used by the library)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from tests.decoding.tree_reference import NodePool, build_dynamic_tree
from vsd.decoding.tree_attention import node_depths


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is fastest, and the CPU is shared with other test runs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class _HostDrafter:
    """Test drafters build their trees on the host: no extra nodes, no captured step."""

    def extra_nodes(self, dcfg) -> int:
        return 0

    def captured_step(self, target_runner, dcfg) -> None:
        return None


class OracleDrafter(_HostDrafter):
    """Drafts with the target itself (no cache, full re-forward per expansion) plus Gaussian noise on
    the logits, so both accepted and rejected branches occur. Only for tiny test models."""

    name = "oracle"
    needs_features = False

    def __init__(self, target, noise: float, seed: int = 0, device_tree: bool = False):
        self.target, self.noise = target, noise
        self.device_tree = device_tree  # also give node depths, as a graphed drafter's device tree does
        self.gen = torch.Generator().manual_seed(seed)
        self.pool = NodePool()
        self.hist: list[int] = []

    def reset(self, prompt_ids, prompt_features=None):
        self.hist = list(prompt_ids)

    def commit(self, accepted, features=None):
        self.hist.extend(accepted)

    def _path(self, i: int) -> list[int]:
        out = []
        while i >= 0:
            out.append(self.pool.tokens[i])
            i = self.pool.parents[i]
        return out[::-1]

    def propose(self, root, dcfg, generator=None):
        ctx = self.hist + [root]

        def expand(idx: torch.Tensor) -> torch.Tensor:
            seqs = torch.tensor([ctx + self._path(i) for i in idx.tolist()])  # same depth: same length
            logits = self.target.forward(seqs, use_cache=False).logits[:, -1].float()
            logits = logits + self.noise * torch.randn(logits.shape, generator=self.gen)
            return torch.log_softmax(logits, -1)

        tree = build_dynamic_tree(expand, dcfg, generator, self.pool)
        if self.device_tree:
            tree.depths, tree.depth_bound = node_depths(tree.parents), dcfg.depth
        return tree


class TableDrafter(_HostDrafter):
    """Draft distribution = a fixed random table indexed by the previous token (small vocabularies)."""

    name = "table"
    needs_features = False

    def __init__(self, vocab_size: int, scale: float = 3.0, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.log_softmax(scale * torch.randn(vocab_size, vocab_size, generator=g), -1)
        self.pool = NodePool()

    def reset(self, prompt_ids, prompt_features=None):
        pass

    def commit(self, accepted, features=None):
        pass

    def propose(self, root, dcfg, generator=None):
        def expand(idx: torch.Tensor) -> torch.Tensor:
            prev = [root if i < 0 else self.pool.tokens[i] for i in idx.tolist()]
            return self.table[prev]

        return build_dynamic_tree(expand, dcfg, generator, self.pool)
