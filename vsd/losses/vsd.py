"""Variational Speculative Decoding loss: L = eagle3_weight * L_EAGLE3 + vsd_weight * L_M + car_weight * CAR.

Per batch (docs/method.md has the formulas and which parts are this project's choices):
  1. anchors: ``anchors_per_seq`` random positions i per sequence whose next token is a response token;
  2. E-step (no grad, timed as vsd/estep_s): the draft samples S paths of D tokens after each anchor with
     its own sampler (vsd.decoding.sampling.warp at proposal_temperature / proposal_top_k), exactly as a
     decoding-time chain hanging off the anchor; the target scores every path of every anchor in one
     forward (vsd.losses.oracle); acceptances -> U, oracle filter, importance weights, ARW;
  3. M-step: the draft re-scores the fixed paths with grad; L_M = weighted NLL of the kept tokens;
  4. CAR at teacher-forced positions (draft step 0) and kept path positions (``loss.car_paths=kept``) or every
     sampled path position (``sampled``: the ELBO's KL over the draft's own paths, whatever the oracle kept).

Draft alignment (vsd.models.draft): anchor i (prefix y_<=i) = draft step 0 at position i-1, which reads
[emb(y_i); fuse(h_{i-1})] and predicts z_1 at position i+1; path step k sits at rotary position i-1+k and
attends to step-0 keys at positions <= i-1 plus its own chain.

Regimes (docs/method.md): ``loss.estep=tree`` replaces the S chains by the greedy tree decoding drafts after the
anchor, verified by the greedy oracle, and trains on its accepted path; ``loss.acceptance=expected`` (T > 0
oracle) weighs each path token by the probability that its prefix is accepted instead of drawing acceptance.

Randomness: the E-step draws from generators seeded by (run seed, DDP rank); their state is part of the
trainer checkpoint (:meth:`VSDLoss.state_dict`), and held-out evaluation draws from its own generators,
re-seeded identically at every evaluation (:meth:`VSDLoss.heldout_mode`), so evaluating never changes training.

Diagnostics (logged per step, train and held-out, as counters summed over micro-batches and ranks and turned
into ratios by :func:`finalize_vsd_logs`): ``vsd/novel_frac`` (kept tokens that differ from the data token at
the same position, among kept tokens the data has a token for: where the E-step adds paths EAGLE-3 never
trains on), ``vsd/oracle_vs_data`` (positions whose
context is the data's where the oracle's argmax is not the data token), ``vsd/distinct_prefixes`` (distinct kept
paths per anchor with any), ``vsd/arw_at_cap`` and ``vsd/ess_adapt`` (ARW), ``vsd/grad_cos`` (every
``loss.grad_cosine_every`` steps: cosine between the gradients of L_M and L_EAGLE3 on the draft).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from vsd.config.schema import LossConfig
from vsd.decoding.anchor_trees import grow_anchor_trees
from vsd.decoding.sampling import warp
from vsd.decoding.tree_attention import gate_by_ancestors, tree_attention_mask
from vsd.losses.car import car_loss
from vsd.losses.eagle3 import Eagle3Loss
from vsd.losses.oracle import run_oracle, target_logits_on, tree_oracle
from vsd.losses.weights import (
    Weights,
    accepted_lengths,
    estep_weights,
    kept_token_mask,
    sample_acceptance,
)
from vsd.models.draft import shift_left


def select_anchors(
    batch: dict[str, torch.Tensor], num: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` anchors per sequence, uniformly without replacement among valid positions.

    Valid anchor i: 1 <= i, y_i real, and y_{i+1} a real response token (the draft is asked to continue
    the response). Returns (anchors (B, num) long, valid (B, num) bool); rows with fewer valid positions
    are padded with anchor 1, valid False.
    """
    am = batch["attention_mask"].bool()
    ok = shift_left(batch["loss_mask"].bool() & am, 1) & am
    ok[:, 0] = False
    B = ok.shape[0]
    anchors = torch.ones(B, num, dtype=torch.long)
    valid = torch.zeros(B, num, dtype=torch.bool)
    for b in range(B):
        cand = ok[b].nonzero()[:, 0].cpu()
        pick = cand[torch.randperm(cand.numel(), generator=generator)[:num]].sort().values
        anchors[b, : pick.numel()] = pick
        valid[b, : pick.numel()] = True
    return anchors.to(am.device), valid.to(am.device)


def path_masks(
    attention_mask: torch.Tensor, anchors: torch.Tensor, num_samples: int, depth: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draft attention for path steps 1..D-1 on top of the step-0 KV cache (T positions).

    Nodes are depth-major: step k's A*S nodes follow step k-1's in the cache. Returns (mask (B, 1, M, T+M)
    additive, position ids (B, M)), M = (D-1)*A*S; step k uses rows/cols of the first k*A*S nodes.
    """
    B, T = attention_mask.shape
    AS = anchors.shape[1] * num_samples
    M = (depth - 1) * AS
    idx = torch.arange(M, device=anchors.device)
    parents = torch.where(idx < AS, torch.full_like(idx, -1), idx - AS)  # chain, depth-major
    mask = tree_attention_mask(parents, T, dtype).expand(B, 1, M, T + M).clone()
    node_anchor = anchors.repeat_interleave(num_samples, dim=1).repeat(1, depth - 1)  # (B, M)
    j = torch.arange(T, device=anchors.device)
    hide = (j[None, None, :] > (node_anchor - 1)[:, :, None]) | ~attention_mask.bool()[:, None, :]
    mask[:, 0, :, :T].masked_fill_(hide, torch.finfo(dtype).min)
    pos = node_anchor - 1 + (idx // AS + 1)[None]
    return mask, pos


def stream_seed(seed: int, rank: int, stream: str) -> int:
    """A 62-bit seed for one random stream of one rank of a run (independent of PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{rank}:{stream}".encode()).digest()[:8], "big") >> 2


class Generators:
    """One random stream: a CPU generator (anchor choice) and, per device, one seeded from it on first use (so
    draws on a GPU need no host copy). ``state_dict`` holds every generator's state."""

    def __init__(self, seed: int):
        self.cpu = torch.Generator(device="cpu").manual_seed(seed)
        self.devices: dict[str, torch.Generator] = {}

    def on(self, device: torch.device) -> torch.Generator:
        if device.type == "cpu":
            return self.cpu
        key = str(device)
        if key not in self.devices:
            seed = int(torch.randint(0, 2**62, (1,), generator=self.cpu))
            self.devices[key] = torch.Generator(device=device).manual_seed(seed)
        return self.devices[key]

    def state_dict(self) -> dict:
        return {"cpu": self.cpu.get_state(), "devices": {k: g.get_state() for k, g in self.devices.items()}}

    def load_state_dict(self, st: dict) -> None:
        self.cpu.set_state(st["cpu"])
        self.devices = {}
        for k, state in st["devices"].items():
            g = torch.Generator(device=k)
            g.set_state(state)
            self.devices[k] = g


class VSDLoss(Eagle3Loss):
    """``loss(head, batch, step) -> (scalar, logs)``; the EAGLE-3 loss plus the VSD terms."""

    name = "vsd"

    def __init__(
        self, lcfg: LossConfig, target, vocab: dict[str, torch.Tensor], seed: int = 0, rank: int = 0
    ):
        super().__init__(lcfg, target, vocab)
        self.cfg = lcfg
        self.target = target
        self.seed, self.rank = seed, rank
        self.d2t = vocab["d2t"].to(target.device)
        self.lm_head = target.model.get_output_embeddings()
        self.gens = Generators(stream_seed(seed, rank, "estep"))
        self._labels_for: torch.Tensor | None = None
        self._labels: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def generator(self) -> torch.Generator:
        """The CPU generator of the current stream (training, or held-out inside :meth:`heldout_mode`)."""
        return self.gens.cpu

    def _gen(self, device: torch.device) -> torch.Generator:
        return self.gens.on(device)

    def state_dict(self) -> dict:
        """The training stream's generator states (saved with the trainer checkpoint)."""
        return {"generators": self.gens.state_dict()}

    def load_state_dict(self, st: dict) -> None:
        self.gens.load_state_dict(st["generators"])

    @contextlib.contextmanager
    def heldout_mode(self) -> Iterator[None]:
        """Draw from a held-out stream, re-seeded identically each time: held-out metrics compare across steps
        (same anchors and samples for the same draft) and evaluating never moves the training stream."""
        train = self.gens
        self.gens = Generators(stream_seed(self.seed, self.rank, "heldout"))
        try:
            yield
        finally:
            self.gens = train

    def active(self, step: int) -> bool:
        return step >= self.cfg.vsd_start_step and (self.cfg.vsd_weight > 0 or self.cfg.car)

    def labels(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The EAGLE-3 teacher, computed once per batch (CAR reuses it)."""
        th = batch["target_hidden"]
        if self._labels_for is not th or self._labels is None:
            self._labels, self._labels_for = super().labels(batch), th
        return self._labels

    # ------------------------------------------------------------------ draft over paths
    def _draft_paths(
        self,
        head,
        batch: dict[str, torch.Tensor],
        anchors: torch.Tensor,
        paths: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Run the draft along S chains per anchor. ``paths`` None: sample them (proposal sampler).

        Returns (paths (B, A, S, D) draft ids, proposal log q (B, A, S, D) (zeros when re-scoring),
        logits list [step-0 (B, T, V_d), then per depth t (B, A*S, V_d) predicting z_t]).
        """
        cfg = self.cfg
        ids, am = batch["input_ids"], batch["attention_mask"].bool()
        B, T = ids.shape
        A = anchors.shape[1]
        S = cfg.num_samples if paths is None else paths.numel() // (B * A * paths.shape[-1])
        D = cfg.depth if paths is None else paths.shape[-1]
        cache = head.new_kv_cache()
        pos0 = torch.arange(T, device=ids.device)[None]
        hidden, logits0 = head.step(head.fuse(batch["features"]), shift_left(ids, 1), pos0, cache, am)
        gi = (anchors - 1).clamp_min(0)
        h = hidden.gather(1, gi[..., None].expand(B, A, hidden.shape[-1])).repeat_interleave(S, dim=1)
        lg = logits0.gather(1, gi[..., None].expand(B, A, logits0.shape[-1])).repeat_interleave(S, dim=1)
        mask, pos = path_masks(am, anchors, S, D, hidden.dtype) if D > 1 else (None, None)
        sampling = paths is None
        z = (
            torch.empty(B, A * S, D, dtype=torch.long, device=ids.device)
            if sampling
            else paths.view(B, -1, D)
        )
        logq = torch.zeros(B, A * S, D, device=ids.device)
        outs = [logits0, lg]
        AS = A * S
        for t in range(D):
            if sampling:
                probs = warp(lg, cfg.proposal_temperature, cfg.proposal_top_k)  # (B, AS, V_d)
                flat = probs.reshape(-1, probs.shape[-1])
                draw = torch.multinomial(flat, 1, generator=self._gen(flat.device)).view(B, AS)
                z[:, :, t] = draw
                logq[:, :, t] = probs.gather(-1, draw[..., None])[..., 0].clamp_min(1e-30).log()
            if t == D - 1:
                break
            rows = slice(t * AS, (t + 1) * AS)
            m = mask[:, :, rows, : T + (t + 1) * AS]
            h, lg = head.step(h, self.d2t[z[:, :, t]], pos[:, rows], cache, m)
            outs.append(lg)
        return z.view(B, A, S, D), logq.view(B, A, S, D), outs

    # ------------------------------------------------------------------ E-step
    @torch.no_grad()
    def estep(self, head, batch: dict[str, torch.Tensor], anchors: torch.Tensor, valid: torch.Tensor) -> dict:
        """Sample (or draft the tree), verify with the target oracle, weigh. Returns detached tensors:
        z (B, A, S, D) draft ids, tw (B, A, S, D) float token weights of the M-step (1/0 kept tokens; prefix
        acceptance probabilities under ``acceptance=expected``), U (B, A, S) accepted lengths, w (Weights),
        hidden (B, A, S, D, H) oracle hidden states (CAR), greedy (B, A, S, D) oracle argmax (target ids)."""
        if self.cfg.estep == "tree":
            return self._estep_tree(head, batch, anchors, valid)
        cfg = self.cfg
        B, A = anchors.shape
        S, D = cfg.num_samples, cfg.depth
        z, logq, _ = self._draft_paths(head, batch, anchors, None)
        paths_t = self.d2t[z]
        orc = run_oracle(
            self.target.model,
            batch["input_ids"],
            batch["attention_mask"],
            anchors,
            paths_t,
            verify_temperature=cfg.verify_temperature,
            proposal_logq=logq,
        )
        vmask = valid[..., None, None].float()
        if cfg.verify_temperature > 0 and cfg.acceptance == "expected":
            prefix = orc.accept_prob.float().cumprod(-1) * vmask  # P(z_<=t accepted)
            U = prefix.sum(-1)  # expected accepted length (the path's expected utility)
            tw = prefix if cfg.oracle_filter else vmask.expand(B, A, S, D)
        else:
            if cfg.verify_temperature > 0:
                accept = sample_acceptance(orc.accept_prob, self._gen(orc.accept_prob.device))
            else:
                accept = orc.accept_prob > 0.5
            U = (accepted_lengths(accept) * valid[..., None]).float()
            tw = kept_token_mask(U.long(), D, cfg.oracle_filter).float() * vmask
        w: Weights = estep_weights(
            U.view(B * A, S),
            tw.reshape(B * A, S, D),
            orc.logp.view(B * A, S, D),
            logq.view(B * A, S, D),
            importance=cfg.importance,
            log_weight_clip=cfg.log_weight_clip,
            arw=cfg.arw,
            arw_target_ess=cfg.arw_target_ess,
        )
        return {"z": z, "tw": tw, "U": U, "w": w, "hidden": orc.hidden, "greedy": orc.greedy, "valid": valid}

    @torch.no_grad()
    def _estep_tree(
        self, head, batch: dict[str, torch.Tensor], anchors: torch.Tensor, valid: torch.Tensor
    ) -> dict:
        """``loss.estep=tree``: the greedy tree decoding would draft after each anchor (depth ``loss.depth``,
        ``tree_top_k`` children, ``tree_total_tokens`` nodes), scored by the greedy oracle in one forward; the
        accepted path (the one decoding would accept) is the anchor's single kept sample (S = 1, weight 1)."""
        cfg = self.cfg
        B, A = anchors.shape
        D = cfg.depth
        trees = grow_anchor_trees(
            head,
            batch["features"],
            batch["input_ids"],
            batch["attention_mask"],
            anchors,
            D,
            cfg.tree_top_k,
            cfg.tree_total_tokens,
        )
        toks_t = self.d2t[trees.tokens]
        greedy, hidden = tree_oracle(
            self.target.model,
            batch["input_ids"],
            batch["attention_mask"],
            anchors,
            toks_t,
            trees.ancestors(D),
            trees.depths,
            trees.parents,
        )
        # oracle vs data (diagnostic) at every node whose path so far is the data's: greedy there vs the data token
        ids, am = batch["input_ids"], batch["attention_mask"].bool()
        T = ids.shape[1]
        pos = anchors[..., None] + trees.depths  # (B, A, N): the position the node's token would fill
        inside = (pos < T) & am.gather(1, pos.clamp(max=T - 1).view(B, -1)).view(pos.shape)
        data = torch.where(inside, ids.gather(1, pos.clamp(max=T - 1).view(B, -1)).view(pos.shape), -1)
        on_data = gate_by_ancestors(toks_t == data, trees.parents, D)
        pa = trees.parents
        ctx = torch.where(pa >= 0, on_data.gather(-1, pa.clamp(min=0)), True) & inside & valid[..., None]
        acc = gate_by_ancestors(toks_t == greedy, trees.parents, D)  # it and every ancestor match
        acc &= valid[..., None]
        N = trees.tokens.shape[-1]
        # the accepted path as a chain: the accepted node of each depth (at most one: siblings are distinct)
        at_depth = acc[..., None, :] & (
            trees.depths[..., None, :] == torch.arange(1, D + 1, device=acc.device)[:, None]
        )
        has = at_depth.any(-1)  # (B, A, D)
        node = at_depth.float().argmax(-1)  # (B, A, D) node index (0 where none)
        z = torch.where(has, trees.tokens.gather(-1, node), torch.zeros_like(node))
        U = has.long().cumprod(-1).sum(-1).float()  # (B, A)
        tw = has.float()
        H = hidden.shape[-1]
        h_path = hidden.gather(2, node[..., None].expand(B, A, D, H))
        w = Weights(
            w=(U > 0).float().view(B * A, 1),
            beta=0.0,
            ess_frac=1.0 if bool((U > 0).any()) else 0.0,
            num_kept=int((U > 0).sum()),
        )
        return {
            "z": z[:, :, None],
            "tw": tw[:, :, None],
            "U": U[:, :, None],
            "w": w,
            "hidden": h_path[:, :, None],
            "greedy": greedy.gather(-1, node)[:, :, None],
            "valid": valid,
            "tree_nodes": N,
            "oracle_ctx": float(ctx.sum()),
            "oracle_diff": float((ctx & (greedy != data)).sum()),
        }

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self, batch: dict[str, torch.Tensor], anchors: torch.Tensor, e: dict) -> dict[str, float]:
        """Counters of what the E-step kept against the data (see the module docstring)."""
        z, tw, greedy = e["z"], e["tw"], e["greedy"]
        B, A, S, D = z.shape
        ids, am = batch["input_ids"], batch["attention_mask"].bool()
        T = ids.shape[1]
        pos = anchors[:, :, None] + torch.arange(1, D + 1, device=ids.device)  # (B, A, D): z_t's position
        inside = (pos < T) & am.gather(1, pos.clamp(max=T - 1).view(B, -1)).view(B, A, D)
        data = torch.where(inside, ids.gather(1, pos.clamp(max=T - 1).view(B, -1)).view(B, A, D), -1)
        zt = self.d2t[z]  # (B, A, S, D) target ids
        novel = zt != data[:, :, None]
        kept = tw > 0
        # positions whose context is the data's: z_<t equals the data (t = 1 always), data token known
        same = (zt == data[:, :, None]).long()
        ctx = torch.cat([torch.ones_like(same[..., :1]), same[..., :-1].cumprod(-1)], -1).bool()
        ctx &= inside[:, :, None] & e["valid"][..., None, None]
        # distinct kept paths per anchor (hash of the kept tokens; padding tokens hashed as -1)
        mult = torch.tensor([1000003**i % (2**61 - 1) for i in range(D)], device=z.device)
        h = (torch.where(kept, zt + 1, 0) * mult).sum(-1)  # (B, A, S)
        has = kept.any(-1)
        hs = torch.where(has, h, -1).sort(-1).values
        distinct = ((hs[..., 1:] != hs[..., :-1]) & (hs[..., 1:] >= 0)).sum(-1) + (hs[..., :1] >= 0).sum(-1)
        groups = has.any(-1)
        if (
            "oracle_ctx" in e
        ):  # the tree E-step counted them over its nodes (its chain holds the kept path only)
            n_ctx, n_diff = e["oracle_ctx"], e["oracle_diff"]
        else:
            n_ctx, n_diff = float(ctx.sum()), float((ctx & (greedy != data[:, :, None])).sum())
        return {
            "n_vsd_tok": float(tw.sum()),
            "n_vsd_tok_in": float((tw * inside[:, :, None]).sum()),  # kept tokens the data has a token for
            "s_vsd_novel": float((tw * novel * inside[:, :, None]).sum()),
            "n_vsd_ctx": n_ctx,
            "n_vsd_oracle_diff": n_diff,
            "n_vsd_groups": float(groups.sum()),
            "s_vsd_distinct": float(distinct[groups].sum()),
            "n_vsd_batches": 1.0,
            "n_vsd_cap": float(e["w"].at_cap),
            "n_vsd_adapt_batches": float(e["w"].num_adapt > 0),
        }

    def _grad_cos(self, head, base: torch.Tensor, m_loss: torch.Tensor) -> float:
        params = [p for p in head.parameters() if p.requires_grad]
        ga = torch.autograd.grad(base, params, retain_graph=True, allow_unused=True)
        gb = torch.autograd.grad(m_loss, params, retain_graph=True, allow_unused=True)
        a = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(ga, params)])
        b = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gb, params)])
        return float(F.cosine_similarity(a.float(), b.float(), dim=0))

    # ------------------------------------------------------------------ loss
    def __call__(self, head, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict]:
        base, logs = super().__call__(head, batch, step)
        if not self.active(step):
            return base, logs
        cfg = self.cfg
        B = batch["input_ids"].shape[0]
        A = cfg.anchors_per_seq

        t0 = time.perf_counter()
        anchors, valid = select_anchors(batch, A, self.generator)
        e = self.estep(head, batch, anchors, valid)
        estep_s = time.perf_counter() - t0
        S, D = e["z"].shape[2], e["z"].shape[3]

        # M-step: re-score the fixed paths with grad (log q at temperature 1: the draft's own distribution)
        _, _, outs = self._draft_paths(head, batch, anchors, e["z"].view(B, A * S, D))
        logits0 = outs[0]
        path_logits = torch.stack(outs[1:], dim=2)  # (B, A*S, D, V_d)
        lq = F.log_softmax(path_logits.float(), -1).gather(-1, e["z"].view(B, A * S, D, 1))[..., 0]
        tw = e["tw"].view(B, A * S, D).to(lq.device)
        w = e["w"].w.view(B, A * S, 1).to(lq.device)
        if (
            cfg.vsd_norm == "anchor"
        ):  # each anchor with a kept path contributes one unit of weighted likelihood
            norm = max(int((tw.view(B * A, S, D).sum((-1, -2)) > 0).sum()), 1)
        elif cfg.vsd_norm == "kept_token":
            norm = max(float((w * tw).sum()), 1e-6)
        else:  # response_token: EAGLE-3's divisor, so one kept token weighs what one EAGLE-3 position does
            norm = max(float(logs["n_resp"]), 1.0)
        m_loss = -(w * lq * tw).sum() / norm
        # eagle3_weight == 1 keeps today's expression exactly (no multiply), so the default is bit for bit
        if cfg.eagle3_weight == 1.0:
            total = base
        elif cfg.eagle3_weight > 0:
            total = cfg.eagle3_weight * base
        else:  # not 0 * base: no EAGLE-3 gradient at all (and no NaN from an inf base)
            total = torch.zeros((), device=lq.device)
        if cfg.vsd_weight > 0:
            total = total + cfg.vsd_weight * m_loss

        car_val = torch.zeros((), device=lq.device)
        kept = tw > 0
        if cfg.car_paths == "sampled":  # every valid anchor's sampled tokens, accepted or not
            kept = valid[:, :, None, None].expand(B, A, S, D).reshape(B, A * S, D)
        if cfg.car:
            tlogits, base_valid = self.labels(batch)
            tf_valid = shift_left(base_valid, 1) & batch["attention_mask"].bool()
            tf_t = shift_left(tlogits, 1)[tf_valid]
            path_t = target_logits_on(self.lm_head, e["hidden"].view(B, A * S, D, -1)[kept], self.d2t)
            car_val = car_loss(
                torch.cat([logits0[tf_valid], path_logits[kept]]), torch.cat([tf_t, path_t.float()])
            )
            total = total + cfg.car_weight * car_val

        U, valid_s = e["U"].float(), valid[..., None].expand(B, A, S)
        n_paths = max(int(valid_s.sum()), 1)
        logs.update(
            {
                "loss": float(total.detach()),
                "vsd/mean_U": float(U[valid_s].sum()) / n_paths,
                "vsd/kept_frac": e["w"].num_kept / n_paths,
                "vsd/ess": e["w"].ess_frac,
                "vsd/arw_beta": e["w"].beta,
                "vsd/car": float(car_val.detach()),
                "vsd/car_positions": float(kept.sum()),
                "vsd/m_loss": float(m_loss.detach()),
                "vsd/estep_s": estep_s,
                **self.diagnostics(batch, anchors, e),
            }
        )
        if e["w"].num_adapt:
            logs["vsd/ess_adapt"] = e["w"].ess_adapt
        every = cfg.grad_cosine_every
        # (step + 1): the trainer logs the row of a finished step s when s + 1 is a multiple of train.log_every
        if (
            every
            and head.training
            and (step + 1) % every == 0
            and cfg.vsd_weight > 0
            and m_loss.requires_grad
        ):
            logs["vsd/grad_cos"] = self._grad_cos(head, base, m_loss)
        return total, logs


def finalize_vsd_logs(sums: dict[str, float]) -> dict[str, float]:
    """The E-step diagnostics from counters summed over micro-batches, ranks and held-out batches."""
    if not sums.get("n_vsd_batches"):
        return {}
    out = {
        "vsd/novel_frac": sums.get("s_vsd_novel", 0.0) / max(sums.get("n_vsd_tok_in", 0.0), 1e-9),
        "vsd/oracle_vs_data": sums.get("n_vsd_oracle_diff", 0.0) / max(sums.get("n_vsd_ctx", 0.0), 1.0),
        "vsd/distinct_prefixes": sums.get("s_vsd_distinct", 0.0) / max(sums.get("n_vsd_groups", 0.0), 1.0),
        "vsd/kept_tokens": sums.get("n_vsd_tok", 0.0),
    }
    if sums.get("n_vsd_adapt_batches"):
        out["vsd/arw_at_cap"] = sums.get("n_vsd_cap", 0.0) / sums["n_vsd_adapt_batches"]
    return out
