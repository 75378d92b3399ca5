"""The one distribution warp used by plain AR sampling, draft sampling and speculative verification.

Keeping a single function guarantees that speculative sampling targets exactly the distribution that
plain autoregressive sampling draws from (temperature, then target top-k, then top-p).
"""

from __future__ import annotations

import torch


def warp(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Probabilities (..., V) float32 from logits (..., V).

    ``temperature == 0`` gives the one-hot argmax (greedy). ``top_k > 0`` keeps the k largest logits;
    ``top_p < 1`` keeps the smallest set of most likely tokens whose mass reaches ``top_p`` (the token
    that crosses the threshold is kept, as in HF).
    """
    x = logits.float()
    if temperature <= 0:
        out = torch.zeros_like(x)
        return out.scatter_(-1, x.argmax(-1, keepdim=True), 1.0)
    x = x / temperature
    if 0 < top_k < x.shape[-1]:
        kth = x.topk(top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    probs = torch.softmax(x, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # mass strictly before each token: a token is dropped once the mass before it already reaches top_p
        before = sorted_p.cumsum(-1) - sorted_p
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def on_generator(t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``t`` on ``generator``'s device: draws happen where the generator lives (the eval's is on the target's
    device, while T>0 draft rows may sit on the host)."""
    return t if generator is None else t.to(generator.device)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One draw from a (V,) probability vector (need not be normalised), by inverting its CDF: the first token
    whose cumulative mass exceeds u * total, u ~ U[0, 1). A token of zero probability adds no mass, so it is
    never drawn. (``torch.multinomial`` takes ~0.8 ms for one draw over a 49k vocab on a CPU, this ~0.05 ms.)"""
    probs = on_generator(probs, generator)
    u = torch.rand((1,), generator=generator, device=probs.device, dtype=torch.float64)
    return int(sample_at(probs, u))


def sample_at(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """:func:`sample` with its uniform ``u`` (1,) given: a (1,) long tensor, no host read (capturable)."""
    cdf = probs.double().cumsum(-1)
    return torch.searchsorted(cdf, u.double() * cdf[-1], right=True).clamp_(max=probs.numel() - 1)


def gumbel_keys(
    probs: torch.Tensor, generator: torch.Generator | None, u: torch.Tensor | None = None
) -> torch.Tensor:
    """Gumbel-perturbed log-probs (..., V) on ``generator``'s device: the order of ``log p + Gumbel noise``
    along the last dim is the order of successive draws without replacement from each row. Tokens of zero
    probability get -inf. ``u`` (probs' shape) optional uniforms (drawn ahead of a captured step)."""
    if u is None:
        probs = on_generator(probs, generator)
        u = torch.rand(probs.shape, generator=generator, device=probs.device)
    return probs.log() - torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))


def gumbel_topk(probs: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """Up to k distinct ids drawn WITHOUT replacement from (V,) ``probs``, in sample order.

    Gumbel-top-k (:func:`gumbel_keys`). Tokens of zero probability are never returned (fewer than k ids if the
    support is small).
    """
    keys = gumbel_keys(probs, generator)
    top = keys.topk(min(k, keys.numel()))
    return top.indices[top.values > float("-inf")]
