"""The whole speculative step on the device: a fixed pair of captured graphs per step and one host read.

The per-call path (:func:`vsd.decoding.engine.generate_spec` with a drafter's ``propose``/``commit``) pays host
work between its graphs: the target step's inputs, verification's small ops and readback, the KV keep, the
draft commit's table. Here every value the next piece needs stays on the device:

- **verify graph**: the target's forward over [root, tree] with the tree mask and positions built from the
  committed length (a device tensor), acceptance (:func:`vsd.decoding.verify.accept_greedy`, or the fixed-loop
  recursive rejection sampling :func:`vsd.decoding.verify.accept_sampled`), the KV keep of root + accepted path,
  the draft diagnostics (:class:`vsd.decoding.diagnostics.DraftStats`), and the next commit's pending entries;
- **draft graph**: commit the pending entries (the root and the accepted path, with their target features) to
  the draft head's cache, then draft the next tree: :func:`vsd.decoding.tree.grow_greedy` at T = 0, the template
  tree of :func:`vsd.decoding.tree.grow_sampled` (Gumbel-top-k per level, absent nodes masked) at T > 0. The
  tree lands in persistent buffers.

Per step the host queues the verify graph, the copy of one small vector (accepted count, next token, the path's
tokens and ranks, the tree's depth and size) and the next tree's draft graph, and waits for the copy alone;
unless the new tokens end the generation it queues the following step at once, before the engine's
bookkeeping, so the device stays busy while the host works (the tree drafted after a generation's last step
goes unused). Random numbers at T > 0 are drawn into buffers before each step from the caller's generator, so
the graphs hold no generator state. With ``decoding.capture=static`` (and on a CPU) the same code runs eagerly:
the tests hold it to plain AR and to the target's distribution there.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from vsd.config.schema import DecodingConfig
from vsd.decoding.diagnostics import DraftStats
from vsd.decoding.draft_runner import GraphDraftRunner, GrowBuffers
from vsd.decoding.drafter import DraftTree
from vsd.decoding.target_runner import GraphRunner, additive_mask, tree_step_inputs
from vsd.decoding.tree import TreeShape, grow_sampled, template_plan
from vsd.decoding.verify import accept_greedy, accept_sampled
from vsd.errors import UserError
from vsd.runtime import capture_graph


@dataclass
class StepOutcome:
    """What the host reads after one captured step."""

    accepted: list[int]  # accepted draft tokens (target ids), in path order
    next_token: int  # bonus or correction token: the next root
    ranks: list[int]  # the draft's sibling ranks along the accepted path
    tree_depth: int  # deepest level of the verified tree
    drafted: int  # nodes verified (absent template nodes excluded)


class CapturedStep:
    """Persistent state, buffers and (on CUDA) the two captured graphs for one (target runner, draft runner,
    tree shape, temperature). Built by :meth:`vsd.decoding.eagle.EagleDrafter.captured_step`."""

    def __init__(self, target_runner: GraphRunner, draft: GraphDraftRunner, dcfg: DecodingConfig):
        self.tr, self.dr, self.dcfg = target_runner, draft, dcfg
        self.sampled = dcfg.temperature > 0
        shape = TreeShape.of(dcfg)
        self.depth, self.k, self.total = shape
        self.stats = DraftStats(self.depth, self.k)
        dev = target_runner.target.device
        self.device = dev
        if self.sampled:
            self.plan = template_plan(self.depth, self.k, self.total, str(draft.device))
            n = self.plan.size
            vd = draft.token_map.numel()
            self.noise = torch.zeros(self.plan.noise_rows, vd, device=draft.device)
            # float64: the last one inverts the target's CDF (a float32 grid would leave tokens undrawable)
            self.draws = torch.zeros(self.plan.accept_draws, device=dev, dtype=torch.float64)
        else:
            self.plan, n = None, shape.max_nodes
        self.n = n  # tree nodes (fixed)
        self.path = min(self.depth, n)  # most nodes one step accepts
        c = self.path + 1  # pending entries: the root and the accepted nodes
        long = dict(dtype=torch.long, device=dev)
        # ---- state that persists across replays (allocated outside every graph)
        self.length = torch.zeros(1, **long)  # target: committed entries
        self.root = torch.zeros(1, **long)
        self.draft_length = torch.zeros(1, dtype=torch.long, device=draft.device)
        self.pend_ids = torch.zeros(c, dtype=torch.long, device=draft.device)
        self.pend_count = torch.ones(1, dtype=torch.long, device=draft.device)
        self.pend_feats = torch.zeros(
            1, c, 3 * draft.head.hc.hidden_size, device=draft.device, dtype=draft.dtype
        )
        dd = draft.device
        self.tree = DraftTree(
            torch.zeros(n, dtype=torch.long, device=dd),
            torch.full((n,), -1, dtype=torch.long, device=dd),
            torch.zeros(n + 1, draft.token_map.numel(), device=dd) if self.sampled else None,
            torch.ones(n, dtype=torch.long, device=dd),
            self.depth,
            torch.eye(n, dtype=torch.bool, device=dd),
            ranks=torch.zeros(n, dtype=torch.long, device=dd),
            logq=torch.zeros(n, device=dd),
            dist_ids=draft.token_map if self.sampled else None,
            valid=torch.ones(n, dtype=torch.bool, device=dd),
        )
        if self.sampled:  # the template's shape is fixed: only tokens, log-probs, presence and rows change
            for name in ("parents", "depths", "ancestors", "ranks"):
                getattr(self.tree, name).copy_(getattr(self.plan, name))
        self.read_dev = torch.zeros(4 + 2 * self.path, **long)
        pin = dev.type == "cuda"
        self.read_host = torch.zeros(4 + 2 * self.path, dtype=torch.long, pin_memory=pin)
        self._grow_io = GrowBuffers(draft.token_map.numel(), draft.device)
        self.stats.allocate(dev)
        self.capture = target_runner.capture and draft.capture
        self.g_draft = self.g_verify = None
        self._copied: torch.cuda.Event | None = None
        self._queued = False
        if self.capture:
            # capture_graph's warm-up runs really step; the state is set afresh by start() anyway
            self.g_draft, _ = capture_graph(self._draft)
            self.g_verify, _ = capture_graph(self._verify, self.g_draft.pool())

    # ------------------------------------------------------------------------------------- the two graphs
    def _draft(self) -> None:
        dr, t = self.dr, self.tree
        x = dr.commit_table_device(self.pend_ids, self.pend_count, self.draft_length)
        logp = dr.run_table(x, self.pend_feats, dr.max_len)
        root_logp = logp.index_select(0, self.pend_count - 1)
        length = self.draft_length + self.pend_count
        if self.sampled:
            new = grow_sampled(
                root_logp, dr.expander(length, self.k), self.dcfg, None, dr.token_map, self.noise, fixed=True
            )
            t.tokens.copy_(new.tokens)
            t.logq.copy_(new.logq)
            t.valid.copy_(new.valid)
            t.child_dists.copy_(new.child_dists)
        else:
            g = self._grow_io
            g.root.copy_(root_logp)
            g.length.copy_(length[0])
            new = dr.grow_at(g, self.depth, self.k, self.total)
            for name in ("tokens", "parents", "depths", "ancestors", "ranks", "logq"):
                getattr(t, name).copy_(getattr(new, name))
        self.draft_length.copy_(length)

    def _verify(self) -> None:
        tr, t, n = self.tr, self.tree, self.n
        dev = self.device
        rows = n + 1
        length = self.length
        ids, offsets, block = tree_step_inputs(self.root, t, rows, dev)
        ids, pos = ids[None], (length + offsets)[None]
        slots = length + torch.arange(rows, device=dev)
        cols = torch.arange(tr.max_len, device=dev)
        rel = cols - length
        in_block = (rel >= 0) & (rel < rows)
        allowed = (cols < length)[None] | (block[:, rel.clamp(0, rows - 1)] & in_block[None])
        mask = additive_mask(allowed, tr.target.dtype)
        tr.cache.set_slots(slots)
        out = tr.target.forward(
            ids, cache=tr.cache, attention_mask=mask[None, None], position_ids=pos, output_features=True
        )
        logits = out.logits[0]
        if self.sampled:
            acc, nxt = accept_sampled(t, logits, self.dcfg, self.plan.kids, self.plan.level_kmax, self.draws)
        else:
            acc, nxt = accept_greedy(t, logits)
        count = acc.sum().reshape(1)
        ar = torch.arange(n, device=dev)
        path = torch.where(acc, ar, n).sort().values[: self.path]  # accepted nodes by depth, then n
        keep = torch.cat([torch.zeros(1, dtype=torch.long, device=dev), path + 1]).clamp(max=n)
        tr.cache.keep_rows(length, keep)
        self.stats.accumulate(t, torch.cat([torch.ones(1, dtype=torch.bool, device=dev), acc]))
        # the next draft commit: the root and the accepted path with their features, each entry paired with
        # the token that follows it (the path's next token, then the new root)
        tok_ext = torch.cat([t.tokens.to(dev), torch.zeros(1, dtype=torch.long, device=dev)])
        path_tok = tok_ext.index_select(0, path.clamp(max=n))
        r = torch.arange(self.path + 1, device=dev)
        follow = torch.where(r < count, torch.cat([path_tok, nxt]), nxt)
        dd = self.dr.device
        self.pend_ids.copy_(follow.to(dd))
        self.pend_count.copy_((count + 1).to(dd))
        self.pend_feats[0].copy_(out.features[0].index_select(0, keep))
        self.root.copy_(nxt)
        self.length.add_(count + 1)
        valid = t.valid.to(dev)
        ranks = torch.cat([t.ranks.to(dev), torch.zeros(1, dtype=torch.long, device=dev)])
        self.read_dev.copy_(
            torch.cat(
                [
                    count,
                    nxt,
                    path_tok,
                    ranks.index_select(0, path.clamp(max=n)),
                    torch.where(valid, t.depths.to(dev), 0).max().reshape(1),
                    valid.sum().reshape(1),
                ]
            )
        )

    # ------------------------------------------------------------------------------------- host API
    def start(
        self,
        prompt_ids: list[int],
        prompt_features: torch.Tensor,
        root: int,
        generator: torch.Generator | None,
        timer: AbstractContextManager,
    ) -> None:
        """New generation after the target's prefill: commit the prompt to the draft head (all but its last
        entry, which waits for the root), set the step's state and draft the first tree."""
        dr = self.dr
        dr.reset()
        if len(prompt_ids) > 1:
            with timer:
                dr.commit(prompt_features[:-1], list(prompt_ids[1:]))
        self.length.fill_(len(prompt_ids))
        self.root.fill_(root)
        self.draft_length.fill_(dr.length)
        self.pend_ids[0].fill_(root)
        self.pend_count.fill_(1)
        self.pend_feats[0, 0].copy_(prompt_features[-1])
        # host copies of the committed lengths, for the slot checks (the device holds the true ones)
        self._host_length, self._host_draft = len(prompt_ids), dr.length
        self.stats.calib.zero_()
        self.stats.rank_counts.zero_()
        self._queued = False  # a step queued by an interrupted generation is overwritten by the next one
        self._check_draft_slots()
        self._draft_next(generator, timer)
        self._host_draft += 1  # the first tree's commit: the root

    def _uniform(self, buf: torch.Tensor, generator: torch.Generator | None) -> None:
        if generator is None or generator.device == buf.device:
            buf.uniform_(generator=generator)
        else:
            buf.copy_(torch.rand(buf.shape, generator=generator, device=generator.device, dtype=buf.dtype))

    def _check_draft_slots(self) -> None:
        # a commit writes path + 1 fixed rows, then tree level d >= 1 sits at (d - 1) k + [0, k) after it; the
        # captured step drafts one tree ahead, so this holds even for the tree after a generation's last step
        need = self.path + 1 + (self.depth - 1) * self.k
        if self._host_draft + need > self.dr.max_len:
            raise UserError(
                f"decoding.max_len: {self.dr.max_len} KV slots are too few for this generation (the draft's "
                f"cache needs the committed tokens + {need} for the tree drafted ahead)"
            )

    @staticmethod
    def _run(
        graph: torch.cuda.CUDAGraph | None, eager: Callable[[], None], timer: AbstractContextManager
    ) -> None:
        with timer:
            if graph is not None:
                graph.replay()
            else:
                eager()

    def _draft_next(self, generator: torch.Generator | None, timer: AbstractContextManager) -> None:
        """Queue the next tree: its random numbers (T > 0), then the draft graph (slots checked by the caller)."""
        if self.sampled:
            self._uniform(self.noise, generator)
        self._run(self.g_draft, self._draft, timer)

    def _launch(
        self,
        generator: torch.Generator | None,
        draft_timer: AbstractContextManager,
        verify_timer: AbstractContextManager,
    ) -> None:
        """Queue one step: verify the drafted tree and commit, the host copy of the outcome, the next tree."""
        if self._host_length + self.n + 1 > self.tr.max_len:
            raise UserError(f"decoding.max_len: {self.tr.max_len} KV slots are too few for this generation")
        self._check_draft_slots()  # before anything runs: a failed check leaves the state as it was
        if self.sampled:
            self._uniform(self.draws, generator)
        self._run(self.g_verify, self._verify, verify_timer)
        self.read_host.copy_(self.read_dev, non_blocking=self.capture)
        if self.capture:
            self._copied = torch.cuda.Event()
            self._copied.record()
        self._draft_next(generator, draft_timer)  # its slot check bounds this step's commit by depth + 1
        self._queued = True

    def step(
        self,
        generator: torch.Generator | None,
        draft_timer: AbstractContextManager,
        verify_timer: AbstractContextManager,
        more: Callable[[list[int]], bool] | None = None,
    ) -> StepOutcome:
        """The outcome of the next step. The step is queued (if it is not already) and the host waits for the
        copy of its outcome alone, while the device drafts the next tree; when ``more(new tokens)`` says the
        generation goes on, the following step is queued at once, so the device keeps working through the
        caller's bookkeeping. (The tree drafted after a generation's last step goes unused.)"""
        if not self._queued:
            self._launch(generator, draft_timer, verify_timer)
        if self._copied is not None:
            self._copied.synchronize()
        self._queued = False
        v = self.read_host.tolist()
        a, d = v[0], self.path
        self._host_length += a + 1
        self._host_draft += a + 1
        out = StepOutcome(v[2 : 2 + a], v[1], v[2 + d : 2 + d + a], v[2 + 2 * d], v[3 + 2 * d])
        if more is not None and more([*out.accepted, out.next_token]):
            self._launch(generator, draft_timer, verify_timer)
        return out
