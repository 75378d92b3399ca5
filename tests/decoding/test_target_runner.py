"""The static-shape (graph) runner gives the same tokens as the eager DynamicCache runner; without CUDA,
capture=cuda_graph falls back cleanly. (On a GPU the same runner replays captured CUDA graphs.)"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.decoding.helpers import OracleDrafter
from vsd.decoding.engine import generate_ar, generate_spec
from vsd.decoding.target_runner import DynamicRunner, GraphRunner, make_runner
from vsd.decoding.tree_attention import node_depths

PROMPTS = ["the cat sat on the mat. the cat sat on the", "def f(x):\n    return x"]


def _d(cfg, **kw):
    base = dict(temperature=0.0, depth=4, top_k=3, total_tokens=12, max_new_tokens=32, max_len=256)
    return dataclasses.replace(cfg.decoding, **{**base, **kw})


@pytest.mark.parametrize("mode", ["chain", "tree"])
def test_static_runner_equals_dynamic(tiny, mode):
    target, cfg = tiny
    dyn, sta = _d(cfg, mode=mode), _d(cfg, mode=mode, capture="static")
    assert isinstance(make_runner(target, sta), GraphRunner)
    for i, text in enumerate(PROMPTS):
        ids = target.tokenizer(text)["input_ids"]
        ar_d, ar_s = generate_ar(target, ids, dyn), generate_ar(target, ids, sta)
        assert ar_s.tokens == ar_d.tokens and ar_s.target_forwards == ar_d.target_forwards
        sp_d = generate_spec(target, OracleDrafter(target, 0.6, seed=i), ids, dyn)
        sp_s = generate_spec(target, OracleDrafter(target, 0.6, seed=i), ids, sta)
        assert sp_s.tokens == sp_d.tokens == ar_d.tokens
        assert sp_s.accepted == sp_d.accepted and max(sp_s.accepted) >= 1
        # trees that carry their depths: the runner builds the step's inputs with tensor ops instead
        sp_t = generate_spec(target, OracleDrafter(target, 0.6, seed=i, device_tree=True), ids, sta)
        assert sp_t.tokens == sp_d.tokens and sp_t.accepted == sp_d.accepted


def test_static_step_logits_match_dynamic(tiny):
    target, cfg = tiny
    ids = target.tokenizer(PROMPTS[0])["input_ids"]
    dyn, sta = DynamicRunner(target), GraphRunner(target, 128, capture=False)
    a, b = dyn.prefill(ids, True), sta.prefill(ids, True)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-4, rtol=1e-4)
    tree = OracleDrafter(target, 0.6, seed=0)
    tree.reset(ids, None)
    t = tree.propose(int(a.logits[0, -1].argmax()), _d(cfg), None)
    root = int(a.logits[0, -1].argmax())
    x, y = dyn.step(root, t, True), sta.step(root, t, True, rows=t.size + 4)  # padded rows are ignored
    torch.testing.assert_close(x.logits, y.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x.features, y.features, atol=1e-4, rtol=1e-4)
    # the same tree with its depths: inputs built by tensor ops give the same step, mask and positions
    shape = sta._shapes[(t.size + 4, True)]
    host_mask, host_in = shape.mask.clone(), shape.dev.clone()
    t.depths, t.depth_bound = node_depths(t.parents), 4
    z = sta.step(root, t, True, rows=t.size + 4)
    assert torch.equal(shape.mask, host_mask) and torch.equal(shape.dev, host_in)
    torch.testing.assert_close(z.logits, y.logits, atol=0, rtol=0)


def test_cuda_graph_without_cuda_falls_back(tiny):
    target, cfg = tiny
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the graph path is exercised by benchmarks/gpu.py")
    with pytest.warns(UserWarning, match="cuda_graph needs CUDA"):
        r = make_runner(target, _d(cfg, capture="cuda_graph"))
    assert isinstance(r, DynamicRunner)


def test_too_small_max_len_is_a_one_line_user_error(tiny):
    from vsd.errors import UserError

    target, cfg = tiny
    ids = target.tokenizer(PROMPTS[0])["input_ids"]
    with pytest.raises(UserError, match="decoding.max_len"):
        generate_ar(target, ids, _d(cfg, capture="static", max_len=len(ids) + 4, max_new_tokens=16))


@pytest.mark.parametrize("parents", [[-1, -1, 0, 1, 2, 2], [-1, 0, 1, 2]])
def test_dynamic_step_from_the_drafters_ancestors_equals_the_parents_walk(tiny, parents):
    """A tree that carries its depths and ancestor matrix (the EAGLE drafter's) gets the same mask, positions
    and logits as one built from its parents alone."""
    from vsd.decoding.drafter import DraftTree
    from vsd.decoding.tree_attention import ancestor_matrix

    target, _ = tiny
    ids = target.tokenizer(PROMPTS[0])["input_ids"]
    par = torch.tensor(parents)
    bare = DraftTree(torch.arange(5, 5 + len(parents)), par)
    rich = DraftTree(bare.tokens, par, depths=node_depths(par), ancestors=ancestor_matrix(par))
    outs = []
    for tree in (bare, rich):
        r = DynamicRunner(target)
        r.prefill(ids, False)
        outs.append(r.step(3, tree, False).logits)
    torch.testing.assert_close(outs[0], outs[1])
