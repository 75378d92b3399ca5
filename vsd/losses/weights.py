"""VSD E-step bookkeeping: accepted prefixes, the oracle filter, importance weights, ESS and ARW.

Shapes: ``G`` groups (one group = the S sampled paths of one anchor), ``S`` samples per group, ``D`` tokens
per path. Everything here is no-grad arithmetic on oracle outputs; weights are detached by construction.
The formulas (and which parts are this project's choices) are written out in docs/method.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def accepted_lengths(accept: torch.Tensor) -> torch.Tensor:
    """Accepted-prefix length U per path from 0/1 per-token acceptances.

    accept: (..., D) bool (or 0/1). Returns (...,) long: the number of leading accepted tokens.
    """
    return accept.to(torch.long).cumprod(dim=-1).sum(dim=-1)


def expected_utility(accept_prob: torch.Tensor) -> torch.Tensor:
    """U(z) = sum_k prod_{t<=k} a_t for acceptance probabilities a (..., D) -> (...,) float."""
    return accept_prob.to(torch.float32).cumprod(dim=-1).sum(dim=-1)


def sample_acceptance(accept_prob: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Realised per-token acceptances of stochastic verification: r_t < a_t with r_t ~ U[0, 1). (..., D) bool."""
    r = torch.rand(accept_prob.shape, generator=generator, device=accept_prob.device)
    return r < accept_prob.to(torch.float32)


def kept_token_mask(U: torch.Tensor, depth: int, oracle_filter: bool) -> torch.Tensor:
    """(..., D) bool: the path tokens the M-step trains on.

    ``oracle_filter``: the accepted prefix z_<=U only (a path with U = 0 keeps nothing, i.e. is dropped);
    otherwise the whole path (the self-training control).
    """
    t = torch.arange(depth, device=U.device)
    if oracle_filter:
        return t < U[..., None]
    return torch.ones(*U.shape, depth, dtype=torch.bool, device=U.device)


def importance_log_weights(
    logp: torch.Tensor, logq: torch.Tensor, kept: torch.Tensor, clip: float
) -> torch.Tensor:
    """log w~ = sum over kept tokens of (log p - log q), clipped to [-clip, clip].

    logp, logq: (G, S, D) per-token log-probs of the sampled token under target and proposal;
    kept: (G, S, D) bool, or float token weights (``loss.acceptance=expected``: each token counts with the
    probability that its prefix is accepted). Returns (G, S) float32. Clipping in log space bounds any single
    ratio to e^clip.
    """
    lw = ((logp.float() - logq.float()) * kept.float()).sum(-1)
    return lw.clamp(-clip, clip)


def normalise_groups(log_w: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Self-normalise exp(log_w) over the valid samples of each group.

    log_w, valid: (G, S). Returns (G, S) weights >= 0, each group summing to 1 (groups with no valid sample
    are all zero).
    """
    neg = torch.finfo(torch.float32).min
    lw = torch.where(valid, log_w.float(), torch.full_like(log_w, neg, dtype=torch.float32))
    w = torch.softmax(lw, dim=-1) * valid
    return w / w.sum(-1, keepdim=True).clamp_min(1e-30)


def group_ess(w: torch.Tensor) -> torch.Tensor:
    """(G,) effective sample size (sum w)^2 / sum w^2 of each group's weights (0 for an empty group)."""
    s1 = w.sum(-1)
    s2 = (w * w).sum(-1)
    return torch.where(s2 > 0, s1 * s1 / s2.clamp_min(1e-30), torch.zeros_like(s1))


@dataclass
class Weights:
    """Per-sample M-step weights and their diagnostics."""

    w: torch.Tensor  # (G, S) float32, >= 0; each group with a kept sample sums to 1; dropped samples 0
    beta: float  # ARW temperature (0 when ARW is off or has nothing to adapt)
    ess_frac: float  # sum_g ESS_g / number of kept samples (in (0, 1]; 0 when nothing is kept)
    num_kept: int  # kept samples (paths with at least one kept token)
    num_adapt: int = 0  # groups whose weights ARW's beta can change (kept samples with different U)
    ess_adapt: float = 0.0  # ess_frac over those groups only (what ARW's ESS target is about)
    at_cap: bool = False  # ARW's beta reached beta_max (the ESS target was out of reach)


BETA_MAX = 50.0


def adaptable_groups(U: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(G,) bool: groups whose valid samples do not all share one U (ARW's tilt changes only these)."""
    Uf = U.float()
    big = torch.finfo(torch.float32).max
    u_max = torch.where(valid, Uf, torch.full_like(Uf, -big)).amax(-1)
    u_min = torch.where(valid, Uf, torch.full_like(Uf, big)).amin(-1)
    return valid.any(-1) & (u_max > u_min)


def arw_weights(
    log_w: torch.Tensor,
    U: torch.Tensor,
    valid: torch.Tensor,
    depth: int,
    target_ess: float,
    beta_max: float = BETA_MAX,
    iters: int = 50,
) -> tuple[torch.Tensor, float]:
    """Adaptive Rejection Weighting: w_gs ∝ exp(log_w_gs + beta * U_gs / D), normalised per group.

    ESS aggregation (this project's choice): pooled over the groups that beta can change, i.e. groups
    whose valid samples do not all share one U. With n_g valid samples and ESS_g = 1 / sum_s w_gs^2,
    beta >= 0 solves  sum_g ESS_g(beta) = target_ess * sum_g n_g  over those groups, by bisection on
    [0, beta_max]. beta = 0 when the base weights are already at or below the target (ARW only ever
    sharpens toward long accepted prefixes) and when no group can change (all U equal within every group:
    the weights fall back to the base weights, i.e. uniform when the importance correction is off);
    beta = beta_max when even beta_max cannot reach the target (ties at the top U keep ESS up).

    log_w, U, valid: (G, S). Returns (weights (G, S), beta).
    """
    Uf = U.float() / depth
    adapt = adaptable_groups(U, valid)  # (G,) groups whose weights depend on beta

    def weights(beta: float) -> torch.Tensor:
        return normalise_groups(log_w.float() + beta * Uf, valid)

    if not bool(adapt.any()):
        return weights(0.0), 0.0
    target = target_ess * float(valid[adapt].sum())

    def gap(beta: float) -> float:
        return float(group_ess(weights(beta))[adapt].sum()) - target

    if gap(0.0) <= 0:
        return weights(0.0), 0.0
    if gap(beta_max) >= 0:
        return weights(beta_max), beta_max
    lo, hi = 0.0, beta_max
    for _ in range(iters):  # gap(lo) > 0 > gap(hi); ESS is continuous in beta, so a root lies between
        mid = 0.5 * (lo + hi)
        if gap(mid) > 0:
            lo = mid
        else:
            hi = mid
    beta = 0.5 * (lo + hi)
    return weights(beta), beta


def estep_weights(
    U: torch.Tensor,
    kept: torch.Tensor,
    logp: torch.Tensor | None,
    logq: torch.Tensor | None,
    *,
    importance: bool,
    log_weight_clip: float,
    arw: bool,
    arw_target_ess: float,
) -> Weights:
    """M-step weights for one batch of groups.

    U: (G, S) accepted lengths (float: expected lengths under ``loss.acceptance=expected``); kept: (G, S, D)
    tokens the M-step trains on (see :func:`kept_token_mask`), bool or float token weights; logp/logq:
    (G, S, D) target / proposal log-probs of the sampled tokens (needed when ``importance``). A sample is valid
    when it keeps at least one token. Base log-weights are the clipped importance log-weights
    (``importance``) or 0 (uniform); ARW then tilts them by exp(beta * U / D).
    """
    valid = kept.float().sum(-1) > 0
    if importance:
        if logp is None or logq is None:
            raise ValueError("importance weights need logp and logq")
        log_w = importance_log_weights(logp, logq, kept, log_weight_clip)
    else:
        log_w = torch.zeros(U.shape, dtype=torch.float32, device=U.device)
    depth = kept.shape[-1]
    if arw:
        w, beta = arw_weights(log_w, U, valid, depth, arw_target_ess)
    else:
        w, beta = normalise_groups(log_w, valid), 0.0
    n = int(valid.sum())
    ess_g = group_ess(w)
    ess = float(ess_g.sum()) / n if n else 0.0
    adapt = adaptable_groups(U, valid)
    n_adapt_s = int(valid[adapt].sum())
    ess_adapt = float(ess_g[adapt].sum()) / n_adapt_s if n_adapt_s else 0.0
    return Weights(
        w=w.detach(),
        beta=beta,
        ess_frac=ess,
        num_kept=n,
        num_adapt=int(adapt.sum()),
        ess_adapt=ess_adapt,
        at_cap=bool(arw and beta >= BETA_MAX),
    )
