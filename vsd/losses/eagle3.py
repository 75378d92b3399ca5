"""EAGLE-3 loss: training-time-test unroll, soft cross-entropy against the target over the draft vocab.

Batch (from :func:`vsd.features.dataset.collate`, or built from ``target.forward(output_features=True)``):
  input_ids (B, T) long; attention_mask (B, T) bool (right padding); loss_mask (B, T) bool, 1 on response
  tokens; features (B, T, 3H); target_hidden (B, T, H) final normed target hidden (logits = lm_head of it).

Step k (0-based) at position t predicts x_{t+k+2}; its soft label is softmax over the draft vocab of the
target logits at position j = t+k+1. It counts when x_{j+1} is a real response token and the target's
full-vocab argmax at j lies inside the draft vocab. With S_k = sum of CE over counted positions and
N = number of response tokens (loss_mask) in the batch:
  loss = sum_k step_decay^k * S_k / N
Dividing by N (not by each step's count) keeps the loss additive over sequences, so gradient accumulation
and DDP (which weight micro-batches by their N) reproduce the single-batch loss exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vsd.config.schema import LossConfig
from vsd.models.draft import shift_left

TEACHER_CHUNK = 2048  # positions per LM-head chunk (a 128k target vocab at 2048 rows is ~1 GB fp32)


class DraftVocabTeacher:
    """Target logits restricted to the draft vocab, and whether the full-vocab argmax lies inside it."""

    def __init__(self, lm_head: torch.nn.Module, d2t: torch.Tensor):
        self.weight = lm_head.weight.detach()  # (V, H)
        bias = getattr(lm_head, "bias", None)
        self.bias = bias.detach() if bias is not None else None
        self.d2t = d2t.to(self.weight.device)

    @torch.no_grad()
    def __call__(self, target_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """target_hidden (B, T, H) -> (logits over the draft vocab (B, T, V_d) fp32, in_vocab (B, T) bool)."""
        b, t, h = target_hidden.shape
        flat = target_hidden.reshape(-1, h).to(device=self.weight.device, dtype=self.weight.dtype)
        out, ok = [], []
        for s in range(0, flat.shape[0], TEACHER_CHUNK):
            full = F.linear(flat[s : s + TEACHER_CHUNK], self.weight, self.bias).float()
            sub = full[:, self.d2t]
            ok.append(sub.max(-1).values >= full.max(-1).values)
            out.append(sub)
        if not out:
            return flat.new_zeros(b, t, self.d2t.numel(), dtype=torch.float32), flat.new_zeros(b, t).bool()
        return torch.cat(out).view(b, t, -1), torch.cat(ok).view(b, t)


def finalize_logs(sums: dict[str, float], ttt_steps: int, step_decay: float) -> dict[str, float]:
    """Derived metrics from counters summed over micro-batches / ranks / held-out batches.

    Counters: n_resp, n_valid_<k>, n_correct_<k>, s_ce_<k>. Returns loss, loss_<k> (mean CE per counted
    position), acc_<k>, sim_tau = 1 + sum_k prod_{i<=k} acc_i.
    """
    out: dict[str, float] = {}
    n_resp = max(sums.get("n_resp", 0.0), 1.0)
    total, tau, run = 0.0, 1.0, 1.0
    for k in range(ttt_steps):
        nv = sums.get(f"n_valid_{k}", 0.0)
        s_ce = sums.get(f"s_ce_{k}", 0.0)
        acc = sums.get(f"n_correct_{k}", 0.0) / nv if nv > 0 else 0.0
        total += step_decay**k * s_ce / n_resp
        out[f"loss_{k}"] = s_ce / nv if nv > 0 else 0.0
        out[f"acc_{k}"] = acc
        run *= acc
        tau += run
    out["loss"] = total
    out["sim_tau"] = tau
    return out


class Eagle3Loss:
    """``loss(head, batch, step) -> (scalar, logs)``. logs: floats, the counters of :func:`finalize_logs`
    (summed by the trainer) plus their derived values for this batch alone."""

    name = "eagle3"

    def __init__(self, lcfg: LossConfig, target, vocab: dict[str, torch.Tensor]):
        self.ttt_steps = lcfg.ttt_steps
        self.step_decay = lcfg.step_decay
        self.teacher = DraftVocabTeacher(target.model.get_output_embeddings(), vocab["d2t"])

    def labels(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher logits (B, T, V_d) at each target position j and base validity (B, T) bool:
        x_{j+1} is a real response token and the target argmax at j is in the draft vocab."""
        tlogits, in_vocab = self.teacher(batch["target_hidden"])
        nxt = shift_left(batch["loss_mask"].bool() & batch["attention_mask"].bool(), 1)
        return tlogits, in_vocab & nxt

    def unroll(
        self, head, batch: dict[str, torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Run the TTT unroll with ground-truth tokens. Returns per step k: draft logits (B, T, V_d)
        (with grad), teacher logits (B, T, V_d), validity mask (B, T), all aligned at draft position t."""
        tlogits, base = self.labels(batch)
        ids, am = batch["input_ids"], batch["attention_mask"].bool()
        cache = head.new_ttt_cache(am)
        hidden = head.fuse(batch["features"])
        pos = torch.arange(ids.shape[1], device=ids.device)[None]
        d_out, t_out, v_out = [], [], []
        for k in range(self.ttt_steps):
            hidden, logits = head.step(hidden, shift_left(ids, k + 1), pos + k, cache)
            d_out.append(logits)
            t_out.append(shift_left(tlogits, k + 1))
            v_out.append(shift_left(base, k + 1) & am)
        return d_out, t_out, v_out

    def __call__(self, head, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict]:
        d_out, t_out, v_out = self.unroll(head, batch)
        n_resp = float(batch["loss_mask"].bool().logical_and(batch["attention_mask"].bool()).sum())
        logs: dict[str, float] = {"n_resp": n_resp}
        total = d_out[0].new_zeros((), dtype=torch.float32)
        for k, (dl, tl, valid) in enumerate(zip(d_out, t_out, v_out)):
            d, t = dl[valid].float(), tl[valid]
            ce = -(F.softmax(t, -1) * F.log_softmax(d, -1)).sum(-1)  # (N_k,)
            s_ce = ce.sum()
            total = total + self.step_decay**k * s_ce / max(n_resp, 1.0)
            logs[f"n_valid_{k}"] = float(valid.sum())
            logs[f"n_correct_{k}"] = float((d.argmax(-1) == t.argmax(-1)).sum())
            logs[f"s_ce_{k}"] = float(s_ce.detach())
        logs.update(finalize_logs(logs, self.ttt_steps, self.step_decay))
        return total, logs
