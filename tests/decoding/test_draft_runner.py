"""The static-shape draft runner (CUDA graphs on a GPU; run eagerly here) drafts the same trees as the eager
reference runner, and speculative decoding through it stays lossless."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.decoding.helpers import one_thread
from vsd.config import compose
from vsd.data.vocab import build_vocab
from vsd.decoding.draft_runner import EagerDraftRunner, GraphDraftRunner
from vsd.decoding.eagle import EagleDrafter
from vsd.decoding.engine import generate_ar, generate_spec
from vsd.models.draft import build_head
from vsd.models.target import load_target


@pytest.fixture(scope="module")
def setup():
    _, cfg = compose(["model=tiny_random", "decoding=tree"])[0]
    target = load_target(cfg.model, cfg.paths.cache_dir, "cpu", "float32")
    head = build_head(target, cfg.model.draft, build_vocab(torch.ones(target.vocab_size), 200)["d2t"], seed=0)
    g = torch.Generator().manual_seed(1)
    for p in head.parameters():  # peaked draft distributions: distinct top-k, real accepts and rejects
        if p.dim() >= 2 and p.requires_grad:
            p.data = 0.3 * torch.randn(p.shape, generator=g)
    with one_thread():
        yield cfg, target, head


def _d(cfg, **kw):
    base = dict(temperature=0.0, depth=4, top_k=3, total_tokens=10, max_new_tokens=24, max_len=256)
    return dataclasses.replace(cfg.decoding, **{**base, **kw})


def _trees(target, head, dcfg, steps=4, seed=0):
    """Drafts a few trees from random features, committing the first node of each: (tokens, parents, dists)."""
    g = torch.Generator().manual_seed(seed)
    d = EagleDrafter(head)
    feats = torch.randn(7, 3 * target.hidden_size, generator=g)
    d.reset([3, 4, 5, 6, 7, 8, 9], feats)
    out, root = [], 11
    for _ in range(steps):
        tree = d.propose(root, dcfg, torch.Generator().manual_seed(seed))
        out.append(tree)
        acc = [root, int(tree.tokens[0])]
        d.commit(acc, torch.randn(2, 3 * target.hidden_size, generator=g))
        root = int(tree.tokens[-1])
    return d, out


@pytest.mark.parametrize("mode", ["tree", "chain"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_static_runner_drafts_the_eager_trees(setup, mode, temperature):
    cfg, target, head = setup
    eager, static = (
        _d(cfg, mode=mode, temperature=temperature),
        _d(cfg, mode=mode, temperature=temperature, capture="static"),
    )
    de, te = _trees(target, head, eager)
    ds, ts = _trees(target, head, static)
    assert isinstance(de.runner, EagerDraftRunner) and isinstance(ds.runner, GraphDraftRunner)
    assert ds.runner.length == de.runner.length == 7 + 3 * 2  # the last commit is still pending
    for a, b in zip(te, ts):
        assert a.tokens.tolist() == b.tokens.tolist() and a.parents.tolist() == b.parents.tolist()
        assert a.ranks.tolist() == b.ranks.tolist()
        torch.testing.assert_close(a.logq, b.logq, atol=1e-5, rtol=1e-4)
        if temperature > 0:
            torch.testing.assert_close(a.child_dists, b.child_dists, atol=1e-5, rtol=1e-4)
    assert te[0].size == (10 if mode == "tree" else 4)


def test_static_runner_pads_to_fixed_rows(setup):
    """Every expansion after the prompt runs at the fixed row counts (the shapes a GPU captures once)."""
    cfg, target, head = setup
    d, _ = _trees(target, head, _d(cfg, capture="static"))
    # T=0: the whole tree is one fixed-shape call (one graph on CUDA); commits are padded to depth + 1 rows
    assert sorted(d.runner._steps) == [("commit", 5)] and list(d.runner._grows) == [(4, 3, 10)]
    d, _ = _trees(target, head, _d(cfg, capture="static", temperature=1.0))
    assert sorted(d.runner._steps) == [("commit", 5), ("tree", 3)]  # T>0: one call per tree level


def test_cuda_graph_without_cuda_is_the_eager_runner(setup):
    cfg, target, head = setup
    d, _ = _trees(target, head, _d(cfg, capture="cuda_graph"), steps=1)
    assert isinstance(d.runner, EagerDraftRunner)


@pytest.mark.parametrize("mode", ["tree", "chain"])
def test_spec_through_static_runners_equals_ar(setup, mode):
    cfg, target, head = setup
    dcfg = _d(cfg, mode=mode, capture="static")
    d = EagleDrafter(head)
    for text in ["abcabcabc", "the cat sat"]:
        prompt = target.chat_ids([{"role": "user", "content": text}])
        ar = generate_ar(target, prompt, _d(cfg))
        sp = generate_spec(target, d, prompt, dcfg)
        assert sp.tokens == ar.tokens


def test_too_few_slots_is_a_user_error(setup):
    from vsd.errors import UserError

    cfg, target, head = setup
    with pytest.raises(UserError, match="decoding.max_len"):
        _trees(target, head, _d(cfg, capture="static", max_len=12), steps=2)


def test_bf16_draft_head_stays_lossless(setup):
    """decoding.draft_dtype casts a copy of the head once; the trees change, the output does not."""
    cfg, target, head = setup
    d = EagleDrafter(head, torch.bfloat16)
    for capture in ("none", "static"):
        dcfg = _d(cfg, capture=capture, draft_dtype="bfloat16")
        prompt = target.chat_ids([{"role": "user", "content": "abcabcabc"}])
        assert generate_spec(target, d, prompt, dcfg).tokens == generate_ar(target, prompt, _d(cfg)).tokens
        assert d.runner.head.fc.weight.dtype == torch.bfloat16
    assert head.fc.weight.dtype == torch.float32 and d.head_in("target") is d.head_in("bfloat16")


def test_eager_levels_equal_a_reference_head_step(setup):
    """The runner's commit and two tree levels (tables built from the pool on the device) give exactly what the
    head computes on its plain append-only KVCache with explicitly written masks, positions and hiddens."""
    from vsd.decoding.draft_runner import draft_logp
    from vsd.decoding.tree import TensorPool

    cfg, target, head = setup
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(7, 3 * target.hidden_size, generator=g)
    ids = [4, 5, 6, 7, 8, 9, 11]
    run = EagerDraftRunner(head, store_rows=16)
    root = run.commit(feats, ids)
    kv = head.new_kv_cache()
    h0, lg = head.step(head.fuse(feats[None]), torch.tensor([ids]), torch.arange(7)[None], kv)
    torch.testing.assert_close(root, draft_logp(lg[0, -1:]))

    def mask(rows: list[list[int]], n_keys: int) -> torch.Tensor:
        allowed = torch.zeros(len(rows), n_keys, dtype=torch.bool)
        for r, cols in enumerate(rows):
            allowed[r, cols] = True
        return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]

    # level 1: three children of the root, at position 7, each seeing the committed entries and itself
    pool = TensorPool(
        tokens=torch.tensor([20, 21, 22, 30, 31]),
        parents=torch.tensor([-1, -1, -1, 0, 2]),
        depths=torch.tensor([1, 1, 1, 2, 2]),
        scores=torch.zeros(5, dtype=torch.float64),
        ranks=torch.zeros(5, dtype=torch.long),
        logq=torch.zeros(5),
    )
    out1 = run.expand_level(torch.tensor([0, 1, 2]), 1, pool)
    committed = list(range(7))
    h1, lg1 = head.step(
        h0[:, -1:].expand(1, 3, -1),
        torch.tensor([[20, 21, 22]]),
        torch.full((1, 3), 7),
        kv,
        mask([[*committed, 7 + r] for r in range(3)], 10),
    )
    torch.testing.assert_close(out1, draft_logp(lg1[0]))
    # level 2: children of nodes 0 and 2, at position 8, seeing the committed entries, their parent, themselves
    out2 = run.expand_level(torch.tensor([3, 4]), 2, pool)
    _, lg2 = head.step(
        h1[:, [0, 2]],
        torch.tensor([[30, 31]]),
        torch.full((1, 2), 8),
        kv,
        mask([[*committed, 7, 10], [*committed, 9, 11]], 12),
    )
    torch.testing.assert_close(out2, draft_logp(lg2[0]))
    run.drop_tree()
    assert run.length == run.tree_end == 7


@pytest.mark.parametrize("capture", ["none", "static"])
def test_timed_draft_times_each_call_and_winds_back(setup, capture):
    """The timing API shape=auto measures with: a commit and depth - 1 levels, each timed, and the runner
    left as it was (the next commit lands at the same place and returns the same root children)."""
    cfg, target, head = setup
    d = EagleDrafter(head)
    feats = torch.randn(7, 3 * target.hidden_size, generator=torch.Generator().manual_seed(0))
    run = d.draft_runner([3, 4, 5, 6, 7, 8, 9], feats, _d(cfg, capture=capture))
    assert isinstance(run, EagerDraftRunner if capture == "none" else GraphDraftRunner)
    length = run.length
    calls = []

    def timed(fn):
        calls.append(1)
        return 0.5, fn()

    tail, ids = feats[-3:], [8, 9, 11]
    assert run.timed_draft(tail, ids, 4, 3, timed) == [0.5] * 4 and len(calls) == 4
    assert run.length == run.tree_end == length
    first = run.commit(tail, ids)
    run.rewind(length)
    assert torch.equal(first, run.commit(tail, ids))
