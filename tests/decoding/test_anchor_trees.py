"""Batched anchor trees (vsd.decoding.anchor_trees) equal the trees the decoding drafter builds one at a time."""

import dataclasses

import pytest
import torch

from vsd.config import compose
from vsd.data.vocab import build_vocab
from vsd.decoding.anchor_trees import accepted_by_reference, grow_anchor_trees
from vsd.decoding.eagle import EagleDrafter
from vsd.models.draft import build_head
from vsd.models.target import load_target


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    _, cfg = compose(
        [
            "model=tiny_random",
            "decoding=tree",
            "decoding.depth=4",
            "decoding.top_k=3",
            "decoding.total_tokens=9",
        ]
    )[0]
    target = load_target(cfg.model, tmp_path_factory.mktemp("c"), "cpu", "float32")
    vocab = build_vocab(torch.ones(target.vocab_size), 200)
    head = build_head(target, cfg.model.draft, vocab["d2t"], seed=0).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 200, (2, 24), generator=g)
    feats = torch.stack([target.forward(ids[b : b + 1], output_features=True).features[0] for b in range(2)])
    return cfg, target, head, ids, feats


def _decoding_tree(head, dcfg, ids: torch.Tensor, feats: torch.Tensor, anchor: int):
    """The tree EagleDrafter drafts after committing y_<anchor with root y_anchor (the engine's call order)."""
    d = EagleDrafter(head)
    d.reset(ids[:anchor].tolist(), feats[:anchor])
    return d.propose(int(ids[anchor]), dcfg)


@pytest.mark.parametrize("k,total", [(3, 9), (2, 5), (4, 16)])
def test_anchor_trees_equal_the_decoding_drafters_trees(setup, k, total):
    cfg, target, head, ids, feats = setup
    dcfg = dataclasses.replace(cfg.decoding, top_k=k, total_tokens=total)
    anchors = torch.tensor([[3, 9, 17], [5, 6, 20]])
    am = torch.ones_like(ids, dtype=torch.bool)
    trees = grow_anchor_trees(head, feats, ids, am, anchors, dcfg.depth, k, total)
    assert trees.tokens.shape == (2, 3, total)
    for b in range(2):
        for a in range(3):
            ref = _decoding_tree(head, dcfg, ids[b], feats[b], int(anchors[b, a]))
            assert head.d2t[trees.tokens[b, a]].tolist() == ref.tokens.tolist(), (b, a)
            assert trees.parents[b, a].tolist() == ref.parents.tolist(), (b, a)
            depth = [1 if p < 0 else 0 for p in ref.parents.tolist()]
            for i, p in enumerate(ref.parents.tolist()):
                depth[i] = 1 if p < 0 else depth[p] + 1
            assert trees.depths[b, a].tolist() == depth


def test_padding_and_ranks_and_reference_acceptance(setup):
    cfg, target, head, ids, feats = setup
    short = ids.clone()
    am = torch.ones_like(ids, dtype=torch.bool)
    am[1, 15:] = False  # row 1 is 15 tokens long: padding must not change its trees
    short[1, 15:] = 0
    anchors = torch.tensor([[4, 10], [4, 10]])
    a = grow_anchor_trees(head, feats, short, am, anchors, 4, 3, 9)
    b = grow_anchor_trees(head, feats[1:, :15], ids[1:, :15], am[1:, :15], anchors[1:], 4, 3, 9)
    assert torch.equal(a.tokens[1], b.tokens[0]) and torch.equal(a.parents[1], b.parents[0])
    # ranks: root children are 0..k-1; siblings share a parent and have distinct ranks
    t = a
    for bb in range(2):
        for aa in range(2):
            by_parent: dict[int, list[int]] = {}
            for p, r in zip(t.parents[bb, aa].tolist(), t.ranks[bb, aa].tolist()):
                by_parent.setdefault(p, []).append(r)
            assert all(len(set(v)) == len(v) for v in by_parent.values())
    assert (t.logq <= 0).all()
    # reference acceptance: make row 0 anchor 0's reference the path of node 0 and its first child
    nodes = t.tokens[0, 0]
    child = next(i for i, p in enumerate(t.parents[0, 0].tolist()) if p == 0)
    ref = torch.full((2, 2, 4), -1, dtype=torch.long)
    ref[0, 0, 0], ref[0, 0, 1] = head.d2t[nodes[0]], head.d2t[nodes[child]]
    acc = accepted_by_reference(t, head.d2t, ref, 4)
    assert acc[0, 0, 0] and acc[0, 0, child] and int(acc[0, 0].sum()) == 2
    assert not acc[1].any() and not acc[0, 1].any()


@pytest.fixture(scope="module")
def trained(setup):
    """A tiny draft trained briefly with EAGLE-3 on the target's own greedy text, so that trees get accepted."""
    from vsd.data.vocab import token_counts
    from vsd.features.dataset import collate
    from vsd.losses import build_loss
    from vsd.train.toy_data import make_toy_items

    cfg, target, _, _, _ = setup
    items = make_toy_items(target, 16, prompt_len=6, new_tokens=28, seed=1)
    vocab = build_vocab(token_counts(items, target.vocab_size) + 1, 200)
    head = build_head(target, cfg.model.draft, vocab["d2t"], seed=0)
    loss = build_loss(
        compose(["model=tiny_random", "loss=eagle3", "loss.ttt_steps=3"])[0][1].loss, target, vocab
    )
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=3e-3)
    batch = collate(items)
    for s in range(25):
        opt.zero_grad()
        loss(head, batch, s)[0].backward()
        opt.step()
    return head.eval(), [it["input_ids"][:6].tolist() for it in items]


@pytest.mark.parametrize("mode", ["tree", "chain"])
def test_reference_steps_equal_the_engines_steps(setup, trained, mode):
    """eval.method=reference: the jump chain over the AR output takes exactly the engine's verification steps."""
    from vsd.decoding.engine import generate_ar, generate_spec
    from vsd.evaluation.reference import reference_steps

    cfg, target, _, _, _ = setup
    head, prompts = trained
    dcfg = dataclasses.replace(cfg.decoding, mode=mode, max_new_tokens=40)
    total_acc = 0
    for prompt in prompts[:3]:  # the training prompts: the draft has learnt their continuations
        ar = generate_ar(target, prompt, dcfg)
        sp = generate_spec(target, EagleDrafter(head), prompt, dcfg)
        assert sp.tokens == ar.tokens  # fp32: lossless
        run = reference_steps(head, target, {"prompt_ids": prompt, "new_ids": ar.tokens}, dcfg, chunk=7)
        # the engine's last step may also count draft tokens past the end
        assert run["accepted"][:-1] == sp.accepted[:-1]
        assert run["accepted"][-1] <= sp.accepted[-1]
        assert run["tree_depth"] == sp.tree_depth and run["drafted"] == sp.drafted
        assert run["target_forwards"] == sp.target_forwards and run["new_tokens"] == len(sp.tokens)
        total_acc += sum(sp.accepted)
    assert total_acc > 10  # the comparison covered real acceptances, not only empty steps


def test_add_branch_shares_nodes_and_hangs_the_rest():
    from vsd.decoding.drafter import DraftTree
    from vsd.decoding.lookup_branch import add_branch

    # root -> 5 (0) -> 7 (2); root -> 6 (1)
    tree = DraftTree(
        torch.tensor([5, 6, 7]),
        torch.tensor([-1, -1, 0]),
        ranks=torch.tensor([0, 1, 0]),
        logq=torch.tensor([-0.1, -2.0, -0.3]),
    )
    assert add_branch(tree, [], 8) is tree and add_branch(tree, [5, 7], 8) is tree  # nothing new
    t = add_branch(tree, [5, 7, 9, 4], 8)  # shares 5 -> 7, then 9 -> 4 below node 2
    assert t.tokens.tolist() == [5, 6, 7, 9, 4] and t.parents.tolist() == [-1, -1, 0, 2, 3]
    assert t.depths.tolist() == [1, 1, 2, 3, 4] and t.ranks.tolist() == [0, 1, 0, 8, 8]
    assert t.logq.tolist()[3:] == [0.0, 0.0] and t.ancestors[4].tolist() == [True, False, True, True, True]
    t = add_branch(tree, [3, 5], 8)  # nothing shared: a new child of the root
    assert t.parents.tolist() == [-1, -1, 0, -1, 3] and t.depths.tolist()[3:] == [1, 2]


@pytest.mark.parametrize("mode", ["tree", "chain"])
def test_lookup_branch_is_lossless_and_the_reference_takes_its_steps(setup, trained, mode):
    """decoding.ngram_branch: decoding with prompt lookup's branch equals AR (fp32), and eval.method=reference
    reproduces its steps."""
    from vsd.decoding.engine import generate_ar, generate_spec
    from vsd.decoding.lookup_branch import LookupBranchDrafter
    from vsd.evaluation.reference import reference_steps

    cfg, target, _, _, _ = setup
    head, prompts = trained
    dcfg = dataclasses.replace(cfg.decoding, mode=mode, max_new_tokens=40, ngram_branch=6)
    for prompt in prompts[3:6]:
        ar = generate_ar(target, prompt, dcfg)
        sp = generate_spec(target, LookupBranchDrafter(EagleDrafter(head), target.vocab_size), prompt, dcfg)
        assert sp.tokens == ar.tokens
        run = reference_steps(head, target, {"prompt_ids": prompt, "new_ids": ar.tokens}, dcfg, chunk=9)
        assert run["target_forwards"] == sp.target_forwards
        assert run["accepted"][:-1] == sp.accepted[:-1]
        assert run["tree_depth"][:-1] == sp.tree_depth[:-1] and run["drafted"][:-1] == sp.drafted[:-1]
        assert [len(r) for r in run["accepted_ranks"]] == run["accepted"]
