"""T>0: speculative sampling reproduces the target's warped distribution (chi-square), a broken sampler
does not; plus the warp and without-replacement sampling primitives."""

from __future__ import annotations

import dataclasses
import itertools
import os

import pytest
import torch
from scipy.stats import chisquare
from transformers import LlamaConfig, LlamaForCausalLM

import vsd.decoding.verify as verify_mod
from tests.decoding.helpers import TableDrafter, one_thread
from tests.decoding.tree_reference import children_lists
from vsd.config.schema import DecodingConfig
from vsd.decoding.engine import generate_ar, generate_spec
from vsd.decoding.ngram import NgramDrafter
from vsd.decoding.sampling import gumbel_topk, sample_at, warp
from vsd.models.target import Target

V = 6
PROMPT = [1, 4, 2]
# VSD_TEST_DEVICE=cuda runs the module's model on the GPU, with capture=cuda_graph where these tests say static:
# the distribution check of the captured step on a GPU (docs/bench_gpu.md)
DEVICE = os.environ.get("VSD_TEST_DEVICE", "cpu")
GRAPHED = "cuda_graph" if DEVICE == "cuda" else "static"


@pytest.fixture(scope="module")
def small():
    """A 1-layer llama with a 6-token vocabulary and peaked (non-uniform) next-token distributions."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, eos_token_id=10**6, pad_token_id=0,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        if p.dim() >= 2:
            p.data = 0.8 * torch.randn(p.shape, generator=g)
    model.generation_config.eos_token_id = 10**6  # never generated: every sample has 3 tokens
    model.to(DEVICE)
    with one_thread():
        yield Target(model, tokenizer=None, name="tiny_v6", feature_layers=[0, 0, 1])


def _exact(target, dcfg, prompt=PROMPT):
    """P(t2, t3) marginalised over t1, from the warped target distribution, as a (V*V,) vector."""

    def dist(seq):
        logits = target.forward(torch.tensor([seq], device=DEVICE), use_cache=False).logits[0, -1].cpu()
        return warp(logits, dcfg.temperature, dcfg.target_top_k, dcfg.top_p)

    p1 = dist(prompt)
    out = torch.zeros(V, V)
    for a in range(V):
        if p1[a] == 0:
            continue
        p2 = dist(prompt + [a])
        for b in range(V):
            if p2[b] > 0:
                out[b] += p1[a] * p2[b] * dist(prompt + [a, b])
    return out.flatten()


def _counts(fn, n):
    c = torch.zeros(V * V)
    g = torch.Generator().manual_seed(123)
    for _ in range(n):
        toks = fn(g).tokens
        assert len(toks) == 3
        c[toks[1] * V + toks[2]] += 1
    return c


def _pvalue(counts, probs):
    """Chi-square p-value; cells with expected < 5 are pooled; observed mass on p=0 cells fails outright."""
    n = counts.sum()
    assert counts[probs == 0].sum() == 0, "sampled a token the warped target gives zero probability"
    exp = probs * n
    big = exp >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    ex = torch.cat([exp[big], exp[~big].sum()[None]])
    if ex[-1] < 5:  # fold a tiny pooled cell into the smallest kept one
        obs, ex = obs[:-1], ex[:-1]
        obs[-1] += counts[~big].sum()
        ex[-1] += exp[~big].sum()
    ex = ex * obs.sum() / ex.sum()
    return float(chisquare(obs.numpy(), ex.numpy()).pvalue)


DCFG = DecodingConfig(
    mode="tree", depth=2, top_k=2, total_tokens=4, temperature=0.9, target_top_k=5, top_p=0.95,
    max_new_tokens=3,
)  # fmt: skip


def test_spec_tree_sampling_matches_target(small):
    exact = _exact(small, DCFG)
    drafter = TableDrafter(V, scale=3.0)
    spec = _counts(lambda g: generate_spec(small, drafter, PROMPT, DCFG, generator=g), 1200)
    assert _pvalue(spec, exact) > 1e-3
    ar = _counts(lambda g: generate_ar(small, PROMPT, DCFG, generator=g), 400)
    assert _pvalue(ar, exact) > 1e-3


def test_spec_chain_ngram_sampling_matches_target(small):
    d = dataclasses.replace(DCFG, mode="chain", depth=3, top_p=1.0, target_top_k=0)
    prompt = PROMPT + PROMPT  # repeated text: the n-gram drafter has matches to propose
    spec = _counts(lambda g: generate_spec(small, NgramDrafter(V), prompt, d, generator=g), 800)
    assert _pvalue(spec, _exact(small, d, prompt)) > 1e-3


def _accept_always(tree, logits, dcfg, generator):
    """Broken verifier: takes the first child at every node (returns the draft's distribution)."""
    ch = children_lists(tree.parents.tolist())
    path, cur = [], -1
    while ch.get(cur):
        cur = ch[cur][0]
        path.append(cur)
    p = warp(logits[cur + 1], dcfg.temperature, dcfg.target_top_k, dcfg.top_p)
    return path, int(torch.multinomial(p, 1, generator=generator))


def test_broken_sampler_fails(small, monkeypatch):
    exact = _exact(small, DCFG)
    monkeypatch.setattr(verify_mod, "verify_sampled", _accept_always)
    drafter = TableDrafter(V, scale=3.0)
    counts = torch.zeros(V * V)
    g = torch.Generator().manual_seed(5)
    for _ in range(600):
        t = generate_spec(small, drafter, PROMPT, DCFG, generator=g).tokens
        counts[t[1] * V + t[2]] += 1
    with pytest.raises(AssertionError):  # zero-probability tokens sampled, or chi-square rejects
        assert _pvalue(counts, exact) > 1e-3


def test_warp_top_k_top_p():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    p = warp(logits, 1.0, top_k=3)
    assert (p[3:] == 0).all() and torch.allclose(p[:3], torch.softmax(logits[:3], -1))
    full = torch.softmax(logits, -1)
    p = warp(logits, 1.0, top_p=float(full[:2].sum()) - 1e-4)  # the first two reach top_p
    assert (p[2:] == 0).all() and torch.allclose(p[:2], full[:2] / full[:2].sum())
    assert warp(logits, 0.0).argmax() == 0 and warp(logits, 0.0).sum() == 1


def test_gumbel_topk_is_without_replacement_in_sample_order():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    g = torch.Generator().manual_seed(0)
    firsts = torch.zeros(4)
    pairs: dict[tuple[int, int], int] = {}
    n = 4000
    for _ in range(n):
        ids = gumbel_topk(probs, 3, g).tolist()
        assert len(ids) == 3 and len(set(ids)) == 3 and 3 not in ids  # support of 3: never the zero token
        firsts[ids[0]] += 1
        pairs[tuple(ids[:2])] = pairs.get(tuple(ids[:2]), 0) + 1
    assert chisquare(firsts[:3].numpy(), (probs[:3] * n).numpy()).pvalue > 1e-3
    exp = {
        (a, b): float(probs[a] * probs[b] / (1 - probs[a])) for a, b in itertools.permutations(range(3), 2)
    }
    obs = [pairs.get(k, 0) for k in exp]
    tot = sum(exp.values())
    assert chisquare(obs, [exp[k] * n / tot for k in exp]).pvalue > 1e-3


def _eagle_small(target):
    """An EAGLE-3 head on the 6-token target drafting in a 4-token draft vocab (tokens 1 and 4 are never
    drafted, so every sampled tree maps draft ids and scatters draft distributions)."""
    from vsd.config.schema import DraftHeadConfig
    from vsd.decoding.eagle import EagleDrafter
    from vsd.models.draft import build_head

    head = build_head(target, DraftHeadConfig(vocab_size=4), torch.tensor([0, 2, 3, 5]), seed=0)
    g = torch.Generator().manual_seed(2)
    for p in head.parameters():
        if p.requires_grad and p.dim() >= 2:
            p.data = torch.randn(p.shape, generator=g).to(p.device)
    return EagleDrafter(head.to(DEVICE))


@pytest.mark.parametrize("capture", ["none", GRAPHED])
def test_eagle_drafter_in_a_draft_vocab_matches_target(small, capture):
    """capture=static runs the captured step (vsd/decoding/captured_step.py) eagerly: the template tree drafted
    with fixed shapes and the fixed-loop rejection sampling."""
    d = dataclasses.replace(DCFG, capture=capture, max_len=32)
    exact = _exact(small, d)
    drafter = _eagle_small(small)
    spec = _counts(lambda g: generate_spec(small, drafter, PROMPT, d, generator=g), 1200)
    assert bool(drafter._steps) == (capture == GRAPHED)
    assert _pvalue(spec, exact) > 1e-3


def test_broken_captured_sampler_fails(small, monkeypatch):
    """The captured path's chi-square has power: accepting the first valid child at every level (no rejection)
    returns the draft's distribution."""
    import vsd.decoding.captured_step as cs

    def first_child(
        tree, logits, dcfg, kids, level_kmax, u
    ):  # tensor ops only: on a GPU it runs inside the graph
        dev = logits.device
        acc = torch.zeros(tree.size, dtype=torch.bool, device=dev)
        row = torch.zeros(1, dtype=torch.long, device=dev)
        live = torch.ones(1, dtype=torch.bool, device=dev)
        for _ in level_kmax:
            c = kids[:, 0].index_select(0, row)
            live &= (c >= 0) & tree.valid.index_select(0, c.clamp(min=0))
            acc |= (torch.arange(tree.size, device=dev) == c) & live
            row = torch.where(live, c + 1, row)
        p = warp(logits.index_select(0, row)[0], dcfg.temperature, dcfg.target_top_k, dcfg.top_p)
        return acc, sample_at(p, u[-1:])

    monkeypatch.setattr(cs, "accept_sampled", first_child)
    d = dataclasses.replace(DCFG, capture=GRAPHED, max_len=32)
    counts = _counts(lambda g: generate_spec(small, _eagle_small(small), PROMPT, d, generator=g), 600)
    with pytest.raises(AssertionError):
        assert _pvalue(counts, _exact(small, d)) > 1e-3


def test_wrong_draft_vocab_mapping_fails(small, monkeypatch):
    """The test above has power: reading draft-vocab rows as if they were target-vocab rows biases the output."""
    from vsd.decoding.drafter import DraftTree

    def unmapped(self, vocab_size, rows=None):
        q = (self.child_dists if rows is None else self.child_dists[rows]).float()
        return (
            torch.cat([q, q.new_zeros(q.shape[0], vocab_size - q.shape[1])], 1)
            if self.dist_ids is not None
            else q
        )

    monkeypatch.setattr(DraftTree, "full_dists", unmapped)
    exact = _exact(small, DCFG)
    drafter = _eagle_small(small)
    counts = _counts(lambda g: generate_spec(small, drafter, PROMPT, DCFG, generator=g), 600)
    with pytest.raises(AssertionError):
        assert _pvalue(counts, exact) > 1e-3


def test_sample_draws_from_the_distribution():
    from vsd.decoding.sampling import sample

    p = torch.tensor([0.0, 0.5, 0.0, 0.2, 0.3, 0.0])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(6)
    for _ in range(3000):
        counts[sample(p * 7.0, g)] += 1  # unnormalised input
    assert counts[p == 0].sum() == 0
    assert float(chisquare(counts[p > 0].numpy(), (p[p > 0] * 3000).numpy()).pvalue) > 1e-3
    assert sample(torch.tensor([0.0, 0.0, 1.0]), g) == 2
