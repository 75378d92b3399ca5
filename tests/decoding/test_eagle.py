"""EagleDrafter with the decoding engine: lossless at T=0 (fp32), tree entries are cleaned from the cache."""

import pytest
import torch

from vsd.config import compose
from vsd.data.vocab import build_vocab
from vsd.decoding.eagle import EagleDrafter, load_draft
from vsd.decoding.engine import generate_ar, generate_spec
from vsd.models.draft import build_head
from vsd.models.target import load_target


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    _, cfg = compose(
        [
            "model=tiny_random",
            "decoding=tree",
            "decoding.max_new_tokens=24",
            "decoding.depth=4",
            "decoding.top_k=3",
            "decoding.total_tokens=10",
        ]
    )[0]
    target = load_target(cfg.model, tmp_path_factory.mktemp("c"), "cpu", "float32")
    vocab = build_vocab(torch.ones(target.vocab_size), 200)
    head = build_head(target, cfg.model.draft, vocab["d2t"], seed=0)
    return cfg, target, head


@pytest.mark.parametrize("mode", ["tree", "chain"])
def test_t0_spec_equals_ar(setup, mode, tmp_path):
    cfg, target, head = setup
    head.save(tmp_path / "d")
    drafter = load_draft(tmp_path / "d", target)
    assert isinstance(drafter, EagleDrafter)
    import dataclasses

    dcfg = dataclasses.replace(cfg.decoding, mode=mode)
    for text in ["abcabcabc"]:
        prompt = target.chat_ids([{"role": "user", "content": text}])
        ar = generate_ar(target, prompt, dcfg)
        sp = generate_spec(target, drafter, prompt, dcfg)
        assert sp.tokens == ar.tokens
        assert sp.target_forwards <= ar.target_forwards


def test_cache_holds_committed_entries_only(setup):
    """Tree entries are dropped after each propose: the committed KV entries equal those of a drafter that
    committed the same entries in one go, and the next tree is drafted right after them."""
    cfg, target, head = setup
    d = EagleDrafter(head)
    H = target.hidden_size
    g = torch.Generator().manual_seed(0)
    prompt, f1, f2 = [5, 6, 7, 8], torch.randn(4, 3 * H, generator=g), torch.randn(2, 3 * H, generator=g)
    d.reset(prompt, f1)
    tree = d.propose(9, cfg.decoding)
    assert d.runner.length == d.runner.tree_end == 4 and tree.size == cfg.decoding.total_tokens
    assert torch.isfinite(tree.tokens.float()).all() and set(tree.tokens.tolist()) <= set(head.d2t.tolist())
    tok = int(tree.tokens[0])
    d.commit([9, tok], f2)
    t2 = d.propose(11, cfg.decoding)
    assert d.runner.length == d.runner.tree_end == 6  # 4 prompt entries + root 9 + accepted token
    ref = EagleDrafter(head)
    ref.reset([*prompt, 9, tok], torch.cat([f1, f2]))
    t_ref = ref.propose(11, cfg.decoding)
    for a, b in ((d.runner.cache.k, ref.runner.cache.k), (d.runner.cache.v, ref.runner.cache.v)):
        torch.testing.assert_close(a[..., :6, :], b[..., :6, :])
    assert t2.tokens.tolist() == t_ref.tokens.tolist() and t2.parents.tolist() == t_ref.parents.tolist()


def test_the_head_follows_the_targets_cpu_kernel(setup, tmp_path):
    """On the fp16-weight target (eval.target_kernel) the loaded head's layers run the same kernel, except fc
    (the runners read dtype and device from it); its proposals only propose, so T=0 output still equals AR;
    the dense target keeps a dense head."""
    import dataclasses

    from vsd.models.cpu_kernels import with_kernel

    cfg, target, head = setup
    head.save(tmp_path / "d")
    fp16 = with_kernel(target, "fp16_weights")
    drafter = load_draft(tmp_path / "d", fp16)
    q = drafter.head_in("target")
    quantized = torch.ao.nn.quantized.dynamic.Linear
    assert isinstance(q.lm_head, quantized) and isinstance(q.layers[0].q_proj, quantized)
    assert type(q.fc) is torch.nn.Linear and q.fc.weight.dtype == torch.float32
    assert type(load_draft(tmp_path / "d", target).head_in("target").lm_head) is torch.nn.Linear
    dcfg = dataclasses.replace(cfg.decoding, mode="tree")
    prompt = fp16.chat_ids([{"role": "user", "content": "abcabcabc"}])
    assert generate_spec(fp16, drafter, prompt, dcfg).tokens == generate_ar(fp16, prompt, dcfg).tokens
