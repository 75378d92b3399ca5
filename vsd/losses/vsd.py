"""Variational Speculative Decoding loss: L = L_EAGLE3 + vsd_weight * L_M + car_weight * CAR.

Per batch (docs/method.md has the formulas and which parts are this project's choices):
  1. anchors: ``anchors_per_seq`` random positions i per sequence whose next token is a response token;
  2. E-step (no grad, timed as vsd/estep_s): the draft samples S paths of D tokens after each anchor with
     its own sampler (vsd.decoding.sampling.warp at proposal_temperature / proposal_top_k), exactly as a
     decoding-time chain hanging off the anchor; the target scores every path of every anchor in one
     forward (vsd.losses.oracle); acceptances -> U, oracle filter, importance weights, ARW;
  3. M-step: the draft re-scores the fixed paths with grad; L_M = weighted NLL of the kept tokens;
  4. CAR at teacher-forced positions (draft step 0) and kept path positions.

Draft alignment (vsd.models.draft): anchor i (prefix y_<=i) = draft step 0 at position i-1, which reads
[emb(y_i); fuse(h_{i-1})] and predicts z_1 at position i+1; path step k sits at rotary position i-1+k and
attends to step-0 keys at positions <= i-1 plus its own chain.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from vsd.config.schema import LossConfig
from vsd.decoding.sampling import warp
from vsd.decoding.tree_attention import tree_attention_mask
from vsd.losses.car import car_loss
from vsd.losses.eagle3 import Eagle3Loss, shift_left
from vsd.losses.oracle import run_oracle, target_logits_on
from vsd.losses.weights import (
    Weights,
    accepted_lengths,
    estep_weights,
    kept_token_mask,
    sample_acceptance,
)


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


class VSDLoss(Eagle3Loss):
    """``loss(head, batch, step) -> (scalar, logs)``; the EAGLE-3 loss plus the VSD terms."""

    name = "vsd"

    def __init__(self, lcfg: LossConfig, target, vocab: dict[str, torch.Tensor], seed: int = 0):
        super().__init__(lcfg, target, vocab)
        self.cfg = lcfg
        self.target = target
        self.d2t = vocab["d2t"].to(target.device)
        self.lm_head = target.model.get_output_embeddings()
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self._device_gens: dict[str, torch.Generator] = {}
        self._labels_for: torch.Tensor | None = None
        self._labels: tuple[torch.Tensor, torch.Tensor] | None = None

    def _gen(self, device: torch.device) -> torch.Generator:
        """The sampling generator on ``device``: the CPU one itself, else one seeded from it (no host copies)."""
        if device.type == "cpu":
            return self.generator
        key = str(device)
        if key not in self._device_gens:
            seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
            self._device_gens[key] = torch.Generator(device=device).manual_seed(seed)
        return self._device_gens[key]

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
        S, D = cfg.num_samples, cfg.depth
        ids, am = batch["input_ids"], batch["attention_mask"].bool()
        B, T = ids.shape
        A = anchors.shape[1]
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
        """Sample, verify with the target oracle, weigh. Returns a dict of detached tensors / floats."""
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
        if cfg.verify_temperature > 0:
            accept = sample_acceptance(orc.accept_prob, self._gen(orc.accept_prob.device))
        else:
            accept = orc.accept_prob > 0.5
        U = accepted_lengths(accept) * valid[..., None]  # (B, A, S)
        kept = kept_token_mask(U, D, cfg.oracle_filter) & valid[..., None, None]
        w: Weights = estep_weights(
            U.view(B * A, S),
            kept.view(B * A, S, D),
            orc.logp.view(B * A, S, D),
            logq.view(B * A, S, D),
            importance=cfg.importance,
            log_weight_clip=cfg.log_weight_clip,
            arw=cfg.arw,
            arw_target_ess=cfg.arw_target_ess,
        )
        return {"z": z, "U": U, "kept": kept, "w": w, "oracle": orc, "valid": valid}

    # ------------------------------------------------------------------ loss
    def __call__(self, head, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict]:
        base, logs = super().__call__(head, batch, step)
        if not self.active(step):
            return base, logs
        cfg = self.cfg
        B = batch["input_ids"].shape[0]
        A, S, D = cfg.anchors_per_seq, cfg.num_samples, cfg.depth

        t0 = time.perf_counter()
        anchors, valid = select_anchors(batch, A, self.generator)
        e = self.estep(head, batch, anchors, valid)
        estep_s = time.perf_counter() - t0

        # M-step: re-score the fixed paths with grad (log q at temperature 1: the draft's own distribution)
        _, _, outs = self._draft_paths(head, batch, anchors, e["z"].view(B, A * S, D))
        logits0 = outs[0]
        path_logits = torch.stack(outs[1:], dim=2)  # (B, A*S, D, V_d)
        lq = F.log_softmax(path_logits.float(), -1).gather(-1, e["z"].view(B, A * S, D, 1))[..., 0]
        kept = e["kept"].view(B, A * S, D)
        w = e["w"].w.view(B, A * S, 1).to(lq.device)
        n_groups = max(int(kept.view(B * A, S, D).any(-1).any(-1).sum()), 1)
        m_loss = -(w * lq * kept).sum() / n_groups  # mean over anchors with a kept sample
        total = base + cfg.vsd_weight * m_loss if cfg.vsd_weight > 0 else base

        car_val = torch.zeros((), device=lq.device)
        if cfg.car:
            tlogits, base_valid = self.labels(batch)
            tf_valid = shift_left(base_valid, 1) & batch["attention_mask"].bool()
            tf_t = shift_left(tlogits, 1)[tf_valid]
            path_t = target_logits_on(self.lm_head, e["oracle"].hidden.view(B, A * S, D, -1)[kept], self.d2t)
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
                "vsd/m_loss": float(m_loss.detach()),
                "vsd/estep_s": estep_s,
            }
        )
        return total, logs
