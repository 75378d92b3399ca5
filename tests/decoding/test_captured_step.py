"""The captured speculative step (vsd/decoding/captured_step.py; CUDA graphs on a GPU, run eagerly here): at T=0
it takes exactly the per-call path's steps, so its output equals plain AR; its diagnostics equal the per-call
path's; at T>0 it keeps the target's distribution (tests/decoding/test_sampling.py); it is used only where it
applies."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.decoding.helpers import one_thread
from tests.decoding.test_anchor_trees import setup, trained  # noqa: F401 (module fixtures: a briefly trained tiny draft)
from tests.decoding.tree_reference import walk_sampled
from vsd.config.schema import DecodingConfig
from vsd.decoding.captured_step import CapturedStep
from vsd.decoding.eagle import EagleDrafter
from vsd.decoding.engine import generate_ar, generate_spec, make_runner
from vsd.decoding.tree import drop_absent, grow_sampled, template_plan
from vsd.decoding.verify import accept_sampled


def _dcfg(cfg, **kw):
    base = dict(capture="static", ngram_branch=0, max_new_tokens=40, max_len=256, temperature=0.0)
    return dataclasses.replace(cfg.decoding, **{**base, **kw})


@pytest.mark.parametrize("mode", ["tree", "chain"])
def test_captured_step_equals_the_per_call_step_and_ar(setup, trained, mode):  # noqa: F811
    cfg, target, *_ = setup
    head, prompts = trained
    d = _dcfg(cfg, mode=mode)
    total = 0
    with one_thread():
        for prompt in prompts[:3]:
            ar = generate_ar(target, prompt, d)
            per_call = generate_spec(
                target, EagleDrafter(head), prompt, dataclasses.replace(d, captured_step=False)
            )
            drafter = EagleDrafter(head)
            cap = generate_spec(target, drafter, prompt, d)
            assert drafter._steps, "the captured step was not used"
            assert cap.tokens == ar.tokens == per_call.tokens  # fp32: lossless
            for f in ("accepted", "tree_depth", "accepted_ranks", "drafted", "target_forwards"):
                assert getattr(cap, f) == getattr(per_call, f), f
            assert torch.equal(cap.calib, per_call.calib) and torch.equal(
                cap.rank_counts, per_call.rank_counts
            )
            total += sum(cap.accepted)
    assert total > 10  # real acceptances, not only empty steps


def test_captured_step_is_reused_across_generations(setup, trained):  # noqa: F811
    """One captured step serves every generation: its state is reset by start(), not left from the last one."""
    cfg, target, *_ = setup
    head, prompts = trained
    d = _dcfg(cfg)
    drafter = EagleDrafter(head)
    with one_thread():
        first = [generate_spec(target, drafter, p, d).tokens for p in prompts[:3]]
        again = [generate_spec(target, drafter, p, d).tokens for p in reversed(prompts[:3])]
    assert len(drafter._steps) == 1 and first == again[::-1]
    assert not next(iter(drafter._steps.values()))._queued  # no step is queued past the end of a generation
    # each result keeps its own diagnostics: the next generation's accumulators are not its tensors
    with one_thread():
        r1 = generate_spec(target, drafter, prompts[0], d)
        kept = r1.calib.clone(), r1.rank_counts.clone()
        generate_spec(target, drafter, prompts[1], d)
    assert torch.equal(r1.calib, kept[0]) and torch.equal(r1.rank_counts, kept[1])


def test_captured_step_only_where_it_applies(setup, trained):  # noqa: F811
    cfg, target, *_ = setup
    head, _ = trained
    drafter = EagleDrafter(head)
    d = _dcfg(cfg)
    assert isinstance(drafter.captured_step(make_runner(target, d), d), CapturedStep)
    for off in (dict(captured_step=False), dict(ngram_branch=3), dict(capture="none")):
        dd = dataclasses.replace(d, **off)
        assert drafter.captured_step(make_runner(target, dd), dd) is None, off
    # at T>0 the lookup branch is not drafted, so the captured step applies
    dd = dataclasses.replace(d, ngram_branch=3, temperature=1.0)
    assert isinstance(drafter.captured_step(make_runner(target, dd), dd), CapturedStep)


def test_captured_step_at_t1_records_consistent_diagnostics(setup, trained):  # noqa: F811
    cfg, target, *_ = setup
    head, prompts = trained
    d = _dcfg(cfg, temperature=1.0)
    with one_thread():
        res = generate_spec(
            target, EagleDrafter(head), prompts[0], d, generator=torch.Generator().manual_seed(0)
        )
    assert len(res.tokens) == d.max_new_tokens
    assert [len(r) for r in res.accepted_ranks] == res.accepted
    for k in range(1, d.depth + 1):
        assert (
            res.calib[k - 1, :, 2].sum()
            == sum(a >= k for a in res.accepted)
            == res.rank_counts[k - 1, :, 1].sum()
        )
    assert all(n == d.total_tokens for n in res.drafted)  # the uniform draft head has full support


def _toy_logp(vocab: int, support: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(vocab, generator=g)
    x[support:] = float("-inf")  # rows with a small support: sampled ranks past it are absent
    return torch.log_softmax(x[torch.randperm(vocab, generator=g)], -1)


def test_fixed_sampled_tree_marks_absent_nodes_and_drop_absent_removes_them():
    d = DecodingConfig(mode="tree", depth=3, top_k=3, total_tokens=8, temperature=1.0)
    plan = template_plan(3, 3, 8)

    def expand(idx, depth, pool):
        return torch.stack(
            [_toy_logp(12, 1 + depth % 2, int(pool.tokens[i]) + 10 * depth) for i in idx.tolist()]
        )

    t = grow_sampled(_toy_logp(12, 2, 0)[None], expand, d, torch.Generator().manual_seed(1), fixed=True)
    assert t.size == plan.size and (t.depths == 3).any() and not t.valid.all()
    # rows of support s keep ranks below s only (s = 2, 2, 1 at depths 1, 2, 3), and nothing below an absent node
    absent = (t.ranks >= torch.where(t.depths == 3, 1, 2)) | (
        (t.parents >= 0) & ~t.valid[t.parents.clamp(min=0)]
    )
    assert torch.equal(~t.valid, absent)
    assert (t.logq[t.valid] > float("-inf")).all()
    small = drop_absent(t)
    assert small.size == int(t.valid.sum()) and small.valid is None
    keep = t.valid.nonzero().flatten()
    assert small.tokens.tolist() == t.tokens[keep].tolist()
    for i, p in enumerate(small.parents.tolist()):  # parents re-indexed into the kept nodes
        assert p == -1 or keep[p] == t.parents[keep[i]]


@pytest.mark.parametrize("broken", [False, True])
def test_fixed_loop_acceptance_has_the_host_walks_law(broken):
    """accept_sampled (fixed loops, captured) and walk_sampled (the host walk) give the same joint law of
    (accepted path, next token) on one tree: chi-square on 4000 draws each. The test has power: uniforms
    shrunk by 0.7 (a biased acceptance) fail it."""
    from scipy.stats import chi2_contingency

    d = DecodingConfig(mode="tree", depth=2, top_k=2, total_tokens=3, temperature=1.0, top_p=0.95)
    plan = template_plan(2, 2, 3)

    def expand(idx, depth, pool):
        return torch.stack([_toy_logp(5, 5, int(pool.tokens[i]) + 7) for i in idx.tolist()])

    tree = grow_sampled(_toy_logp(5, 5, 3)[None], expand, d, torch.Generator().manual_seed(0), fixed=True)
    logits = 3 * torch.randn(plan.size + 1, 5, generator=torch.Generator().manual_seed(4))
    logits[0] = torch.tensor([1.0, 0.3, 0.5, 1.5, 1.0])  # the root's first draw (token 1) is mostly rejected
    g = torch.Generator().manual_seed(9)
    seen: dict[tuple, list[int]] = {}
    for which in (0, 1):
        for _ in range(4000):
            if which == 0:
                u = torch.rand(plan.accept_draws, generator=g)
                acc, nxt = accept_sampled(
                    tree, logits, d, plan.kids, plan.level_kmax, 0.7 * u if broken else u
                )
                key = (tuple(acc.nonzero().flatten().tolist()), int(nxt))
            else:
                path, nxt = walk_sampled(tree, logits, d, g)
                key = (tuple(path), nxt)
            seen.setdefault(key, [0, 0])[which] += 1
    table = torch.tensor([v for v in seen.values() if sum(v) >= 20]).T
    assert (chi2_contingency(table.numpy()).pvalue > 1e-3) != broken
    assert any(len(k[0]) == 2 for k in seen) and any(
        len(k[0]) == 0 for k in seen
    )  # deep accepts and rejections


def test_too_few_slots_on_the_captured_path_is_a_one_line_user_error(setup, trained):  # noqa: F811
    from vsd.errors import UserError

    cfg, target, *_ = setup
    head, prompts = trained
    d = _dcfg(cfg, max_len=len(prompts[0]) + 20)
    drafter = EagleDrafter(head)
    with one_thread(), pytest.raises(UserError, match="decoding.max_len"):
        generate_spec(target, drafter, prompts[0], d)
    assert drafter._steps  # raised by the captured step's own slot check


def test_captured_chain_at_t1_and_a_one_token_prompt(setup, trained):  # noqa: F811
    """Chain mode samples a one-child template; a prompt of one token commits nothing before the first tree."""
    cfg, target, *_ = setup
    head, prompts = trained
    with one_thread():
        for d, prompt in (
            (_dcfg(cfg, mode="chain", temperature=1.0), prompts[0]),
            (_dcfg(cfg), prompts[0][:1]),
        ):
            res = generate_spec(
                target, EagleDrafter(head), prompt, d, generator=torch.Generator().manual_seed(1)
            )
            assert (
                len(res.tokens) == d.max_new_tokens and [len(r) for r in res.accepted_ranks] == res.accepted
            )
            if d.temperature == 0:
                assert res.tokens == generate_ar(target, prompt, d).tokens


@pytest.mark.parametrize(
    "shape", [dict(depth=4, top_k=3, total_tokens=3), dict(depth=2, top_k=2, total_tokens=8)]
)  # fewer nodes than the depth; more nodes asked for than a greedy tree of this depth and width can hold
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_captured_step_with_small_trees(setup, trained, shape, temperature):  # noqa: F811
    cfg, target, *_ = setup
    head, prompts = trained
    d = _dcfg(cfg, temperature=temperature, **shape)
    with one_thread():
        cap = generate_spec(
            target, EagleDrafter(head), prompts[0], d, generator=torch.Generator().manual_seed(2)
        )
        if temperature == 0:
            per_call = generate_spec(
                target, EagleDrafter(head), prompts[0], dataclasses.replace(d, captured_step=False)
            )
            assert cap.tokens == per_call.tokens == generate_ar(target, prompts[0], d).tokens
            assert cap.accepted == per_call.accepted and cap.drafted == per_call.drafted
    assert len(cap.tokens) == d.max_new_tokens
