"""EagleDrafter: the EAGLE-3 head behind the decoding engine's Drafter protocol (dynamic tree, own KV cache).

Cache layout. Committed entry i pairs the target feature h_i with the token x_{i+1} that follows it (the
training alignment, docs/training.md), at rotary position i. The feature of the newest committed token waits
in ``pending`` until its successor is known: the next root. ``propose(root)`` first appends the pending
entries (their outputs give the root's children), then expands tree nodes: a node with token c whose parent
has hidden output g is the entry [emb(c); g] at position (last committed entry) + depth, attending to every
committed entry and its own ancestors (:func:`vsd.decoding.tree_attention`-style mask). Tree entries are
dropped from the cache once the tree is built; the verified ones come back with real target features on
``commit``.
"""

from __future__ import annotations

import torch

from vsd.config.schema import DecodingConfig
from vsd.decoding.drafter import DraftTree
from vsd.decoding.tree import NodePool, build_dynamic_tree
from vsd.models.draft import DraftHead


class EagleDrafter:
    """Implements vsd.decoding.drafter.Drafter with a :class:`DraftHead`."""

    name = "eagle3"
    needs_features = True

    def __init__(self, head: DraftHead):
        self.head = head.eval()
        self.device = head.fc.weight.device
        self.kv = head.new_kv_cache()
        self.pending_feats: torch.Tensor | None = None  # (P, 3H) features not yet in the cache
        self.pending_next: list[int] = []  # the P-1 tokens that follow pending_feats[:-1]
        self.pool = NodePool()

    @property
    def vocab_size(self) -> int:
        return self.head.hc.target_vocab_size

    def reset(self, prompt_ids: list[int], prompt_features: torch.Tensor | None) -> None:
        if prompt_features is None:
            raise ValueError("EagleDrafter needs target features (drafter.needs_features is True)")
        self.kv = self.head.new_kv_cache()
        self.pending_feats = prompt_features
        self.pending_next = list(prompt_ids[1:])

    def commit(self, accepted: list[int], features: torch.Tensor | None) -> None:
        """accepted = [root, accepted draft tokens]; features (len(accepted), 3H) of those positions."""
        if features is None:
            raise ValueError("EagleDrafter needs target features (drafter.needs_features is True)")
        self.pending_feats = features
        self.pending_next = list(accepted[1:])

    def _to_target_logp(self, logits: torch.Tensor) -> torch.Tensor:
        """(M, V_d) draft logits -> (M, V) log-probs over the target vocab (-inf outside the draft vocab)."""
        lp = torch.log_softmax(logits.float(), dim=-1)
        out = torch.full((lp.shape[0], self.vocab_size), float("-inf"), device=lp.device)
        out[:, self.head.d2t] = lp
        return out.cpu()

    @torch.no_grad()
    def propose(self, root: int, dcfg: DecodingConfig, generator: torch.Generator | None = None) -> DraftTree:
        head, dev = self.head, self.device
        assert self.pending_feats is not None, "propose before reset"
        start = len(self.kv)
        n = self.pending_feats.shape[0]
        ids = torch.tensor([[*self.pending_next, root]], device=dev)
        pos = torch.arange(start, start + n, device=dev)[None]
        hid, logits = head.step(head.fuse(self.pending_feats.to(dev)[None]), ids, pos, self.kv)
        self.pending_feats, self.pending_next = None, []
        committed = len(self.kv)  # entries 0..committed-1; the last one predicts the root's children
        root_hidden, root_logits = hid[0, -1], logits[0, -1:]
        node_hidden: dict[int, torch.Tensor] = {}
        slot: dict[int, int] = {}  # pool index -> cache position of its entry

        def expand(idx: torch.Tensor) -> torch.Tensor:
            nodes = idx.tolist()
            if nodes == [-1]:
                return self._to_target_logp(root_logits)
            m = len(nodes)
            par_h = torch.stack(
                [
                    root_hidden if self.pool.parents[i] < 0 else node_hidden[self.pool.parents[i]]
                    for i in nodes
                ]
            )
            toks = torch.tensor([[self.pool.tokens[i] for i in nodes]], device=dev)
            npos = torch.tensor([[committed - 1 + self.pool.depths[i] for i in nodes]], device=dev)
            kv_len = len(self.kv)
            allowed = torch.zeros(m, kv_len + m, dtype=torch.bool, device=dev)
            allowed[:, :committed] = True
            for r, i in enumerate(nodes):
                allowed[r, kv_len + r] = True
                a = self.pool.parents[i]
                while a >= 0:
                    allowed[r, slot[a]] = True
                    a = self.pool.parents[a]
            dt = par_h.dtype
            mask = torch.zeros(allowed.shape, dtype=dt, device=dev).masked_fill(~allowed, torch.finfo(dt).min)
            h_out, lg = head.step(par_h[None], toks, npos, self.kv, attn_mask=mask[None, None])
            for r, i in enumerate(nodes):
                node_hidden[i] = h_out[0, r]
                slot[i] = kv_len + r
            return self._to_target_logp(lg[0])

        tree = build_dynamic_tree(expand, dcfg, generator, pool=self.pool)
        self.kv.crop(committed)
        return tree
