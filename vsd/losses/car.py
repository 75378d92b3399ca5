"""Confidence-Aware Regularization: the ELBO's KL(q || p) term, weighted by the target's certainty."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def target_confidence(target_logits: torch.Tensor) -> torch.Tensor:
    """c = 1 - H(p) / log|V| per position, detached. target_logits: (N, V) over the draft vocab -> (N,)."""
    with torch.no_grad():
        logp = F.log_softmax(target_logits.float(), dim=-1)
        ent = -(logp.exp() * logp).sum(-1)
        return (1.0 - ent / math.log(target_logits.shape[-1])).clamp(0.0, 1.0)


def car_loss(
    draft_logits: torch.Tensor, target_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over positions of c_t * KL(q_t || p_t), both distributions over the draft vocab.

    draft_logits: (N, V) with grad (q); target_logits: (N, V) (p, the target's logits restricted to the
    draft vocab and renormalised there; no grad); mask: (N,) bool/0-1 selects positions. Returns a scalar;
    the caller multiplies by loss.car_weight. Zero iff q == p at every position where c_t > 0.
    """
    logq = F.log_softmax(draft_logits.float(), dim=-1)
    logp = F.log_softmax(target_logits.detach().float(), dim=-1)
    kl = (logq.exp() * (logq - logp)).sum(-1)  # (N,) KL(q || p): mode-seeking, as in the ELBO
    c = target_confidence(target_logits)
    per = c * kl
    if mask is None:
        return per.mean() if per.numel() else per.sum()
    m = mask.to(per.dtype)
    return (per * m).sum() / m.sum().clamp_min(1.0)
