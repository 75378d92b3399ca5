"""EagleDrafter: the EAGLE-3 head behind the decoding engine's Drafter protocol (dynamic tree, own KV cache).

Cache layout. Committed entry i pairs the target feature h_i with the token x_{i+1} that follows it (the
training alignment, docs/training.md), at rotary position i. The feature of the newest committed token waits
in ``pending`` until its successor is known: the next root. ``propose(root)`` first appends the pending
entries (their outputs give the root's children), then expands tree nodes: a node with token c whose parent
has hidden output g is the entry [emb(c); g] at position (last committed entry) + depth, attending to every
committed entry and its own ancestors (:func:`vsd.decoding.tree_attention`-style mask). Tree entries are
dropped from the cache once the tree is built; the verified ones come back with real target features on
``commit``. The head itself runs through a draft runner (:mod:`vsd.decoding.draft_runner`): eager, or static
shapes captured as CUDA graphs. Both build each tree level from the node pool in tensor operations and score
children in the draft vocab (``d2t`` maps the chosen ids), so a level costs one head step plus a few small ops.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from vsd.config.schema import DecodingConfig
from vsd.decoding.captured_step import CapturedStep
from vsd.decoding.draft_runner import EagerDraftRunner, GraphDraftRunner
from vsd.decoding.drafter import DraftTree
from vsd.decoding.target_runner import Backend, GraphRunner
from vsd.decoding.tree import TreeShape, grow_sampled
from vsd.models.draft import DraftHead
from vsd.runtime import resolve_dtype


class EagleDrafter:
    """Implements vsd.decoding.drafter.Drafter with a :class:`DraftHead`.

    The head runs through a draft runner chosen by ``decoding.capture`` at the first ``propose`` of each
    generation: eager (``none``, and ``cuda_graph`` without CUDA) or the static-shape runner (``static``:
    eager; ``cuda_graph`` on CUDA: captured). Runners are kept, so graphs are captured once.
    """

    name = "eagle3"
    needs_features = True

    def __init__(self, head: DraftHead, target_dtype: torch.dtype | None = None, kernel: str = "dense"):
        self.head = head.eval()
        self.target_dtype = target_dtype  # what decoding.draft_dtype=target means
        self.kernel = kernel  # the target's CPU kernel (vsd/models/cpu_kernels.py), which the head follows
        self._heads: dict[torch.dtype, DraftHead] = (
            {head.fc.weight.dtype: self.head} if kernel == "dense" else {}
        )
        self.device = head.fc.weight.device
        self.runner: EagerDraftRunner | GraphDraftRunner | None = None
        self._runners: dict[tuple, EagerDraftRunner | GraphDraftRunner] = {}
        self._steps: dict[tuple, CapturedStep] = {}
        self.pending_feats: torch.Tensor | None = None  # (P, 3H) features not yet in the cache
        self.pending_next: list[int] = []  # the P-1 tokens that follow pending_feats[:-1]

    @property
    def vocab_size(self) -> int:
        return self.head.hc.target_vocab_size

    def head_in(self, name: str) -> DraftHead:
        """The head in ``decoding.draft_dtype`` (a cast copy, made once). A trained head is float32; drafting
        in the target's bf16 runs several times faster on a GPU and on a CPU with bf16 units."""
        if name == "target":
            dtype = self.target_dtype or self.head.fc.weight.dtype
        else:
            dtype = resolve_dtype(name, "hf", str(self.device))  # the project's one name -> dtype map
        if dtype not in self._heads:
            head = copy.deepcopy(self.head).to(dtype)
            if self.kernel != "dense" and dtype == torch.float32:
                from vsd.models.cpu_kernels import quantize_linears

                # fc stays dense: it fuses a few feature rows per step, and the runners read dtype and device
                # from its weight
                head = quantize_linears(head, self.kernel, keep=("fc",))
            self._heads[dtype] = head
        return self._heads[dtype]

    def _runner_for(self, dcfg: DecodingConfig) -> EagerDraftRunner | GraphDraftRunner:
        backend = Backend.of(dcfg, self.device)
        head = self.head_in(dcfg.draft_dtype)
        dtype = head.fc.weight.dtype
        shape = TreeShape.of(dcfg)
        depth, k, _ = shape
        store_rows = 1 + shape.pool_nodes  # row 0: the root's hidden
        if not backend.static:
            key: tuple = ("eager", dtype, store_rows)
            if key not in self._runners:
                self._runners[key] = EagerDraftRunner(head, store_rows)
        else:
            key = (dcfg.capture, dcfg.max_len, depth, k, dtype)
            if key not in self._runners:
                self._runners[key] = GraphDraftRunner(
                    head,
                    dcfg.max_len,
                    commit_rows=depth + 1,
                    tree_rows=k,
                    depth=depth,
                    store_rows=store_rows,
                    capture=backend.graphs,
                )
        runner = self._runners[key]
        runner.reset()
        return runner

    def extra_nodes(self, dcfg: DecodingConfig) -> int:
        return 0

    def draft_runner(
        self, prompt_ids: list[int], prompt_features: torch.Tensor, dcfg: DecodingConfig
    ) -> EagerDraftRunner | GraphDraftRunner:
        """The draft runner decoding with ``dcfg`` uses, holding the prompt as after the first ``propose`` (the
        prompt, then its last token as the root, committed; the tree dropped): what the cost measurement of
        ``decoding.shape=auto`` times (:meth:`~vsd.decoding.draft_runner.EagerDraftRunner.timed_draft`)."""
        self.reset(prompt_ids, prompt_features)
        self.propose(int(prompt_ids[-1]), dcfg)
        return self.runner

    def captured_step(self, target_runner, dcfg: DecodingConfig) -> CapturedStep | None:
        """The whole speculative step as captured graphs (:mod:`vsd.decoding.captured_step`) when
        ``decoding.captured_step`` is on, both runners are static-shape (``capture`` != none) and the tree has no
        host-built lookup branch; else None (the engine's per-call path). Built once per shape and reused."""
        lookup = dcfg.ngram_branch > 0 and dcfg.temperature <= 0
        if not dcfg.captured_step or lookup or not isinstance(target_runner, GraphRunner):
            return None
        run = self._runner_for(dcfg)
        if not isinstance(run, GraphDraftRunner):
            return None
        depth, k, total = TreeShape.of(dcfg)
        key = (id(target_runner), id(run), depth, k, total, dcfg.temperature > 0, dcfg.temperature,
               dcfg.target_top_k, dcfg.top_p)  # fmt: skip
        if key not in self._steps:
            self._steps[key] = CapturedStep(target_runner, run, dcfg)
        return self._steps[key]

    def reset(self, prompt_ids: list[int], prompt_features: torch.Tensor | None) -> None:
        if prompt_features is None:
            raise ValueError("EagleDrafter needs target features (drafter.needs_features is True)")
        self.runner = None  # chosen by the first propose, which knows the decoding config
        self.pending_feats = prompt_features
        self.pending_next = list(prompt_ids[1:])

    def commit(self, accepted: list[int], features: torch.Tensor | None) -> None:
        """accepted = [root, accepted draft tokens]; features (len(accepted), 3H) of those positions."""
        if features is None:
            raise ValueError("EagleDrafter needs target features (drafter.needs_features is True)")
        self.pending_feats = features
        self.pending_next = list(accepted[1:])

    @torch.no_grad()
    def propose(self, root: int, dcfg: DecodingConfig, generator: torch.Generator | None = None) -> DraftTree:
        assert self.pending_feats is not None, "propose before reset"
        if self.runner is None:
            self.runner = self._runner_for(dcfg)
        run = self.runner
        root_logp = run.commit(self.pending_feats, [*self.pending_next, root])
        self.pending_feats, self.pending_next = None, []
        if dcfg.temperature <= 0:  # the whole tree in tensor ops (one captured graph on CUDA)
            depth, k, total = TreeShape.of(dcfg)
            tree = run.grow_greedy(root_logp, depth, k, total)
        else:
            tree = grow_sampled(root_logp, run.expand_level, dcfg, generator, run.token_map)
        run.drop_tree()
        return tree


def load_draft(path: str | Path, target, device: str | torch.device | None = None) -> EagleDrafter:
    """A draft dir of any format vsd reads (its own, the official EAGLE-3 layout, speculators; see
    vsd.models.formats) -> an :class:`EagleDrafter` on ``device`` (the target's by default)."""
    from vsd.models.formats import load_head

    head, _ = load_head(path, target, device=device or target.device, key="draft.checkpoint")
    return EagleDrafter(head, target.dtype, kernel=getattr(target, "kernel", "dense"))
