"""Packed grouped-query attention (vsd/models/attention.py) equals SDPA over repeated key/value heads."""

import pytest
import torch
import torch.nn.functional as F

from vsd.models.attention import NAME, packed_sdpa, use_packed_attention


def _repeated(q, k, v, mask):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize("heads,kv_heads,tq", [(9, 3, 1), (9, 3, 5), (4, 2, 7), (4, 4, 3)])
def test_packed_equals_repeated_kv(heads, kv_heads, tq):
    g = torch.Generator().manual_seed(0)
    b, s, d = 2, 11, 8
    q = torch.randn(b, heads, tq, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, kv_heads, s, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, kv_heads, s, d, generator=g, dtype=torch.float64)
    allowed = torch.rand(b, 1, tq, s, generator=g) > 0.3
    allowed[..., 0] = True  # every query sees something
    mask = torch.zeros(allowed.shape, dtype=q.dtype).masked_fill(~allowed, torch.finfo(q.dtype).min)
    torch.testing.assert_close(packed_sdpa(q, k, v, mask), _repeated(q, k, v, mask), rtol=0, atol=1e-12)


def test_head_specific_mask_is_refused():
    q, k = torch.zeros(1, 4, 2, 8), torch.zeros(1, 2, 3, 8)
    with pytest.raises(ValueError, match="mask must be"):
        packed_sdpa(q, k, k, torch.zeros(1, 4, 2, 3))


def test_target_tree_step_matches_stock_sdpa(tiny_target):
    """The tiny GQA target through the packed implementation gives the stock SDPA logits for a tree verify
    (several queries, a 4D mask) on a KV cache, and the loaded target uses it."""
    model = tiny_target.model
    assert model.config._attn_implementation == NAME
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # GQA: the packed path runs
    ids = torch.randint(0, tiny_target.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    step = torch.tensor([[5, 6, 7, 8]])
    allowed = torch.ones(4, 16, dtype=torch.bool)
    allowed[:, 12:] = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
    mask = torch.zeros(1, 1, 4, 16).masked_fill(~allowed, torch.finfo(torch.float32).min)
    pos = torch.tensor([[12, 13, 13, 14]])
    outs = {}
    try:
        for impl in ("sdpa", NAME):
            model.set_attn_implementation(impl)
            cache = tiny_target.new_cache()
            tiny_target.forward(ids, cache=cache)
            outs[impl] = tiny_target.forward(step, cache=cache, attention_mask=mask, position_ids=pos).logits
    finally:
        use_packed_attention(model)
    torch.testing.assert_close(outs[NAME], outs["sdpa"], rtol=1e-5, atol=1e-5)
