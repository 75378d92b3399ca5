"""T=0 losslessness, accepted lengths and KV-cache compaction of the speculative engine (tiny_random, fp32)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.decoding.helpers import OracleDrafter
from vsd.decoding.engine import generate_ar, generate_spec, keep_cache_rows, verify_forward
from vsd.decoding.ngram import NgramDrafter
from vsd.decoding.verify import verify_greedy

PROMPTS = ["the cat sat on the mat. the cat sat on the", "abcabcabcabc", "def f(x):\n    return x"]


def _dcfg(cfg, **kw):
    return dataclasses.replace(cfg.decoding, temperature=0.0, **kw)


def _ids(target, text):
    return target.tokenizer(text)["input_ids"]


@pytest.mark.parametrize("mode", ["chain", "tree"])
def test_ngram_spec_equals_ar(tiny, mode):
    target, cfg = tiny
    d = _dcfg(cfg, mode=mode, depth=4, top_k=3, total_tokens=10, max_new_tokens=40)
    for text in PROMPTS:
        ids = _ids(target, text)
        ar = generate_ar(target, ids, d)
        sp = generate_spec(target, NgramDrafter(target.vocab_size), ids, d)
        assert sp.tokens == ar.tokens
        assert all(0 <= a <= min(n, d.depth) for a, n in zip(sp.accepted, sp.drafted))
        assert sp.target_forwards == 1 + len(sp.accepted)


@pytest.mark.parametrize("mode,noise", [("chain", 0.3), ("tree", 0.6)])
def test_oracle_spec_equals_ar_with_accepts_and_rejects(tiny, mode, noise):
    target, cfg = tiny
    d = _dcfg(cfg, mode=mode, depth=4, top_k=3, total_tokens=12, max_new_tokens=40)
    acc: list[int] = []
    for i, text in enumerate(PROMPTS):
        ids = _ids(target, text)
        ar = generate_ar(target, ids, d)
        sp = generate_spec(target, OracleDrafter(target, noise, seed=i), ids, d)
        assert sp.tokens == ar.tokens, text
        assert all(0 <= a <= d.depth for a in sp.accepted)
        assert all(n <= (d.depth if mode == "chain" else d.total_tokens) for n in sp.drafted)
        assert all(t <= d.depth for t in sp.tree_depth)
        assert len(sp.tokens) <= sp.target_forwards + sum(sp.accepted)
        acc += sp.accepted
    assert max(acc) >= 2 and min(acc) < d.depth, acc  # both long accepts and rejections happened
    assert sum(acc) / len(acc) > 0.5


def test_kv_cache_after_steps_equals_fresh_forward(tiny):
    target, cfg = tiny
    d = _dcfg(cfg, mode="tree", depth=4, top_k=3, total_tokens=12)
    ids = _ids(target, PROMPTS[0])
    drafter = OracleDrafter(target, 0.6, seed=1)
    cache = target.new_cache()
    out = target.forward(torch.tensor([ids]), cache=cache)
    drafter.reset(ids, None)
    committed = list(ids)
    root = int(out.logits[0, -1].argmax())
    gathered = 0
    for _ in range(6):
        tree = drafter.propose(root, d, None)
        out = verify_forward(target, cache, root, tree, len(committed), False)
        path, nxt = verify_greedy(tree, out.logits[0])
        rows = [0] + [i + 1 for i in path]
        gathered += rows != list(range(len(rows)))
        keep_cache_rows(cache, len(committed), rows, tree.size + 1)
        acc = tree.tokens[path].tolist()
        committed += [root, *acc]
        drafter.commit([root, *acc], None)
        root = nxt
        fresh = target.new_cache()
        target.forward(torch.tensor([committed]), cache=fresh)
        assert cache.get_seq_length() == len(committed)
        for a, b in zip(cache.layers, fresh.layers):
            torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-4)
    assert gathered > 0  # at least one accepted path was not the contiguous prefix of the block


def test_eos_and_budget_stop(tiny):
    target, cfg = tiny
    d = _dcfg(cfg, mode="chain", depth=4, max_new_tokens=7)
    ids = _ids(target, PROMPTS[1])
    ar = generate_ar(target, ids, d, record_gaps=True)
    sp = generate_spec(target, NgramDrafter(target.vocab_size), ids, d)
    assert len(ar.tokens) == 7 and sp.tokens == ar.tokens and len(ar.top2_gap) == 7
    eos = next(iter(target.eos_token_ids))
    target.model.generation_config.eos_token_id = ar.tokens[3]  # make the 4th greedy token the EOS
    try:
        ar2 = generate_ar(target, ids, d)
        sp2 = generate_spec(target, NgramDrafter(target.vocab_size), ids, d)
    finally:
        target.model.generation_config.eos_token_id = eos
    first = ar.tokens.index(ar.tokens[3])
    assert ar2.tokens == ar.tokens[: first + 1] == sp2.tokens
