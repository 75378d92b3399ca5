"""Grouped-query attention read in place: the query heads that share a key/value head are stacked along the
query axis, so SDPA never copies the cache once per query head.

Why: for more than one query with a mask (a tree or chain verify), HF's SDPA path (transformers 5.24) calls
``repeat_kv``, which materialises every cached key and value once per query head: on SmolLM2 (9 query heads,
3 KV heads) a verify over ~400 cached tokens copies ~55 MB per step, against ~270 MB of fp16 weights, and it
was the largest cost of the verify after the matmuls (profile in docs/training.md). HF already packs a single
query this way (``pack_gqa``); this does it for any number of queries. Each output row is the same
softmax(q K^T + m) V over the same keys, so the result is the same up to float rounding.

Used by the target (:func:`use_packed_attention`, through transformers' public ``AttentionInterface``, no
modeling code copied) and by the draft head (:func:`packed_sdpa`).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

NAME = "vsd_packed_sdpa"  # the attention implementation's name in transformers' registry


def pack_queries(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, KVH, (H/KVH)*T, D): head h serves key/value head h // (H/KVH) (``repeat_kv``'s order),
    so heads kvh*r .. kvh*r+r-1 become rows [0, r*T) of key/value head kvh."""
    b, h, t, d = q.shape
    return q.reshape(b, kv_heads, (h // kv_heads) * t, d)


def packed_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float | None = None
) -> torch.Tensor:
    """SDPA of q (B, H, T, D) over k/v (B, KVH, S, D) with an additive or boolean mask broadcast over heads
    ((B|1, 1, T, S)) or None (no mask). Returns (B, H, T, D), as with the keys repeated per head."""
    b, h, t, d = q.shape
    kvh = k.shape[1]
    if h == kvh:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    rep = h // kvh
    if mask is not None:
        if mask.dim() != 4 or mask.shape[1] != 1:
            raise ValueError(f"packed_sdpa: mask must be (B|1, 1, T, S), got {tuple(mask.shape)}")
        mask = mask.repeat(1, 1, rep, 1)  # row r*T + i of the packed queries is query i
    out = F.scaled_dot_product_attention(pack_queries(q, kvh), k, v, attn_mask=mask, scale=scale)
    return out.reshape(b, h, t, d)


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature. Several queries with a per-head-shared 4D mask run packed;
    every other case (one query, no mask, dropout in training, position bias, softcap) is the stock SDPA
    function, unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rep = getattr(module, "num_key_value_groups", 1)
    plain = (
        rep == 1
        or query.shape[2] == 1
        or attention_mask is None
        or attention_mask.dim() != 4
        or attention_mask.shape[1] != 1
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
        or (module.training and kwargs.get("dropout", 0.0) > 0)
    )
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    # the stock function on the packed queries, told there is one query head per key/value head
    shim = SimpleNamespace(num_key_value_groups=1, is_causal=False, training=module.training)
    packed_mask = attention_mask.repeat(1, 1, rep, 1)
    out, _ = sdpa_attention_forward(
        shim, pack_queries(query, key.shape[1]), key, value, packed_mask, **kwargs
    )  # (B, rep*T, KVH, D)
    b, h, t, d = query.shape
    return out.transpose(1, 2).reshape(b, h, t, d).transpose(1, 2).contiguous(), None


def use_packed_attention(model: torch.nn.Module) -> None:
    """Run ``model``'s SDPA attention through :func:`packed_sdpa_attention` (masks built as for SDPA). Models
    whose attention does not go through transformers' AttentionInterface keep their own."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return  # eager or a kernel chosen on purpose: left alone
    if hasattr(model, "_can_set_attn_implementation") and not model._can_set_attn_implementation():
        return
    model.set_attn_implementation(NAME)
