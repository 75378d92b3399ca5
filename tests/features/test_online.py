"""train.features=online: one batched target forward per training batch, no cache, features equal to the cached
ones within bf16 tolerance, and a trainer step on them."""

import dataclasses

import pytest
import torch

from vsd.config import compose
from vsd.data.selfdistill import build_selfdistill
from vsd.data.sources import TINY_PROMPTS
from vsd.data.vocab import build_vocab, token_counts
from vsd.features.cache import build_features
from vsd.features.dataset import CachedFeatures, FeatureDataset, OnlineCollate, OnlineFeatures, collate

OV = [
    "model=tiny_random",
    "dataset=tiny",
    "dataset.source=tiny",
    "dataset.gen_batch_size=3",
    "dataset.gen_max_new_tokens=7",
    "dataset.max_seq_len=80",
]


@pytest.fixture(scope="module")
def stores(tiny, tmp_path_factory):
    target, _ = tiny
    tmp = tmp_path_factory.mktemp("online")
    _, cfg = compose(OV)[0]
    prompts = [
        {"id": f"t{i}", "messages": [{"role": "user", "content": t}], "source": "t"}
        for i, t in enumerate(TINY_PROMPTS[:6])
    ]
    d, _ = build_selfdistill(target, prompts, cfg.dataset, tmp, progress=False)
    fd, _ = build_features(target, d, tmp, progress=False)  # batch-1 forwards: the reference
    return target, CachedFeatures(fd), OnlineFeatures(target, d)


def test_one_batched_forward_matches_the_cache(stores, monkeypatch):
    target, cached, online = stores
    calls = []
    base = target.model.get_decoder()
    real = base.forward
    monkeypatch.setattr(base, "forward", lambda *a, **k: calls.append(k["input_ids"].shape) or real(*a, **k))
    batcher = OnlineCollate(target)
    idx = [4, 0, 2, 5]
    on = batcher([online.get(i) for i in idx])
    off = collate([cached.get(i) for i in idx])
    assert len(calls) == 1 and calls[0][0] == 4 and batcher.forwards == 1  # one forward for the whole batch
    lens = off["attention_mask"].sum(1)
    assert len(set(lens.tolist())) > 1  # the batch really is padded
    assert on.keys() == off.keys()
    for k in ("input_ids", "loss_mask", "attention_mask"):
        assert torch.equal(on[k], off[k])
    for k in ("features", "target_hidden"):
        assert on[k].dtype == torch.bfloat16 and on[k].shape == off[k].shape
        torch.testing.assert_close(on[k].float(), off[k].float(), rtol=1e-2, atol=1e-2)
        assert not on[k][~on["attention_mask"]].any()  # zero padding, as the cache's collate pads
    # a broken batcher (features of another layer) is far outside that tolerance: the check can fail
    layers = target.feature_layers
    target.feature_layers = [1, 3, 0]
    try:
        bad = OnlineCollate(target)([online.get(i) for i in idx])
    finally:
        target.feature_layers = layers
    assert not torch.allclose(bad["features"].float(), off["features"].float(), atol=1e-2)


def test_trainer_steps_on_online_batches(stores):
    from vsd.losses import build_loss
    from vsd.models.draft import build_head
    from vsd.train.trainer import Trainer

    target, cached, online = stores
    _, cfg = compose(["model=tiny_random", "train=tiny", "loss=eagle3", "loss.ttt_steps=2"])[0]
    seqs = [online.get(i) for i in range(len(online))]
    vocab = build_vocab(token_counts(seqs, target.vocab_size), 64)
    batcher = OnlineCollate(target)
    ds = FeatureDataset(online, list(range(6)), 80, batcher)
    tr = Trainer(
        dataclasses.replace(cfg.train, steps=2, batch_size=4, grad_accum=2),
        build_head(target, cfg.model.draft, vocab["d2t"], seed=0),
        build_loss(cfg.loss, target, vocab),
        ds,
        None,
        ds.collate,
        seed=0,
        device="cpu",
        ckpt_dir=None,
        run_dir=None,
        progress=False,
    )
    out = tr.train_step()
    assert batcher.forwards == 2 and torch.isfinite(torch.tensor(out["loss"]))  # one forward per micro-batch


def test_hooked_layers_are_the_targets_features(tiny_target):
    """Layer 0 (the embeddings), a middle layer and layer L (the final normed state) through the hooks equal
    ``Target.forward(..., output_features=True)``."""
    ids = torch.tensor(tiny_target.chat_ids([{"role": "user", "content": "hello there"}]))
    layers = tiny_target.feature_layers
    tiny_target.feature_layers = [0, 2, tiny_target.num_layers]
    try:
        ref = tiny_target.forward(ids[None], use_cache=False, output_features=True).features[0]
        on = OnlineCollate(tiny_target)(
            [{"input_ids": ids, "loss_mask": torch.ones(len(ids), dtype=torch.bool)}]
        )
    finally:
        tiny_target.feature_layers = layers
    assert torch.equal(on["features"][0], ref.to(torch.bfloat16))
