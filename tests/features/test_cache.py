"""Feature cache: exact features, reuse without target compute, resume, corruption detection, online mode,
the trainer contract (make_train_source / collate), and the data + features stages end to end."""

import json
import threading
from pathlib import Path

import pytest
import torch

import vsd.features.cache as fcache
from vsd.config import compose
from vsd.data.selfdistill import Interrupted, build_selfdistill, load_sequences
from vsd.data.shards import shard_name
from vsd.data.sources import TINY_PROMPTS, load_prompts, prompt_text, select_prompts
from vsd.errors import UserError
from vsd.features.cache import build_features, compute_item
from vsd.features.dataset import CachedFeatures, OnlineFeatures, collate, load_vocab, make_train_source

OV = [
    "model=tiny_random",
    "dataset=tiny",
    "dataset.source=tiny",
    "dataset.num_prompts=6",
    "dataset.gen_batch_size=3",
    "dataset.gen_max_new_tokens=5",
    "dataset.max_seq_len=80",
    "dataset.heldout_fraction=0.2",
    "tracker=none",
]


@pytest.fixture()
def small_shards(monkeypatch):
    monkeypatch.setattr(fcache, "SEQS_PER_SHARD", 2)


@pytest.fixture()
def dataset_dir(tiny_target, tmp_path):
    _, cfg = compose(OV)[0]
    prompts = [
        {"id": f"tiny:{i}", "messages": [{"role": "user", "content": t}], "source": "tiny"}
        for i, t in enumerate(TINY_PROMPTS[:5])
    ]
    d, _ = build_selfdistill(tiny_target, prompts, cfg.dataset, tmp_path / "cache", progress=False)
    return d


def test_features_exact_and_reused(tiny_target, dataset_dir, tmp_path, small_shards, monkeypatch):
    d, st = build_features(tiny_target, dataset_dir, tmp_path / "cache", progress=False)
    assert st["reused"] == 0 and st["shards"] == 3 and st["sequences"] == 5 and st["size_mb"] > 0
    assert st["lm_head_max_abs_diff"] == 0.0
    man = json.loads((d / "manifest.json").read_text())
    assert len(man["shards"]) == 3 and all(len(s["sha256"]) == 64 for s in man["shards"])
    store = CachedFeatures(d)
    seqs = load_sequences(dataset_dir)
    for i in (0, 4):
        it, ids = store.get(i), seqs[i]["input_ids"]
        out = tiny_target.forward(ids[None], use_cache=False, output_features=True)
        assert torch.equal(it["input_ids"], ids) and torch.equal(it["loss_mask"], seqs[i]["loss_mask"])
        assert it["features"].dtype == torch.bfloat16 and it["features"].shape == (len(ids), 3 * 64)
        assert torch.equal(it["features"], out.features[0].to(torch.bfloat16))
        # the stored final hidden state reproduces the target logits through the LM head
        logits = tiny_target.model.lm_head(it["target_hidden"].float())
        assert torch.equal(logits.argmax(-1), out.logits[0].argmax(-1))
        assert torch.allclose(logits, out.logits[0], atol=0.05 * out.logits.abs().max().item())
    # second build: no target compute at all
    monkeypatch.setattr(fcache, "compute_item", lambda *a, **k: pytest.fail("recomputed features"))
    d2, st2 = build_features(tiny_target, dataset_dir, tmp_path / "cache", progress=False)
    assert d2 == d and st2["reused"] == 1 and st2["shards_computed"] == 0


def test_features_resume_and_lock(tiny_target, dataset_dir, tmp_path, small_shards):
    with pytest.raises(Interrupted):
        build_features(tiny_target, dataset_dir, tmp_path / "c1", progress=False, stop_after_shards=2)
    d, st = build_features(tiny_target, dataset_dir, tmp_path / "c1", progress=False)
    assert st["shards_computed"] == 1 and len(CachedFeatures(d)) == 5
    res = []
    ts = [
        threading.Thread(
            target=lambda: res.append(
                build_features(tiny_target, dataset_dir, tmp_path / "c2", progress=False)
            )
        )
        for _ in range(2)
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert sorted(r[1]["shards_computed"] for r in res) == [0, 3]


def test_corrupt_shard_detected(tiny_target, dataset_dir, tmp_path, small_shards):
    d, _ = build_features(tiny_target, dataset_dir, tmp_path / "cache", progress=False)
    p = d / shard_name(1)
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte inside the tensor data: same size, valid header
    p.write_bytes(bytes(raw))
    with pytest.raises(UserError) as e:
        CachedFeatures(d)
    assert str(p) in str(e.value) and "corrupt" in str(e.value) and "\n" not in str(e.value)
    p.write_bytes(bytes(raw[:-100]))  # truncated: caught before any use, even on reuse
    with pytest.raises(UserError, match=f"{shard_name(1)} is corrupt"):
        build_features(tiny_target, dataset_dir, tmp_path / "cache", progress=False)


def test_online_equals_cache(tiny_target, dataset_dir, tmp_path):
    """Online items are the cache's ids and masks; their features come per batch (tests/features/test_online.py)."""
    d, _ = build_features(tiny_target, dataset_dir, tmp_path / "cache", progress=False)
    cached, online = CachedFeatures(d), OnlineFeatures(tiny_target, dataset_dir)
    assert len(cached) == len(online)
    a, b = cached.get(3), online.get(3)
    assert b.keys() == {"input_ids", "loss_mask"} and all(torch.equal(a[k], b[k]) for k in b)
    assert compute_item(tiny_target, a["input_ids"])["target_hidden"].shape == (len(a["input_ids"]), 64)


def _ctx(tmp_path: Path, overrides):
    from vsd.pipeline import RunContext
    from vsd.records import RunRecord
    from vsd.tracking import NullTracker

    _, cfg = compose(OV + overrides)[0]
    run = tmp_path / "run"
    record = RunRecord(run, 0, {})
    record.close()  # only writes files here; the contexts of this test share one run dir
    return RunContext(cfg, run, tmp_path / "cache", "cpu", NullTracker(), record)


def test_stages_contract_and_disjointness(tmp_path, monkeypatch):
    import vsd.data.stage as dstage
    import vsd.features.stage as fstage

    # pretend an eval set contains the training prompt that the selection would take first
    ctx0 = _ctx(tmp_path, [])
    first = select_prompts(load_prompts(ctx0.cfg.dataset)[0], 6, ctx0.cfg.dataset.seed, len, 10**6, None)[0][
        0
    ]
    injected = prompt_text(first)
    monkeypatch.setattr(
        dstage, "load_eval_texts", lambda f=None: (["unrelated eval text", injected], ["test"])
    )
    ctx = _ctx(tmp_path, ["model.draft.vocab_size=100", "train.max_seq_len=40"])
    m = dstage.run(ctx)
    card = json.loads((ctx.run_dir / "data_card.json").read_text())
    assert card["disjointness"]["checked"] and card["disjointness"]["dropped"] == 1
    assert card["disjointness"]["dropped_examples"][0]["id"] == first["id"]
    kept = [
        json.loads(x)["id"]
        for x in (Path(ctx.artifacts["dataset_dir"]) / "prompts.jsonl").read_text().split("\n")
        if x
    ]
    assert first["id"] not in kept and len(kept) == 6
    assert m["data/sequences"] == 6 and m["data/dropped_eval_overlap"] == 1 and m["data/vocab_size"] == 100
    assert (
        card["tokens"]["total_tokens"] == card["tokens"]["prompt_tokens"] + card["tokens"]["response_tokens"]
    )
    assert 0 < m["data/vocab_coverage"] <= 1 and card["split"] == {
        "train": 5,
        "heldout": 1,
        "heldout_fraction": 0.2,
    }
    v = load_vocab(ctx.artifacts["vocab_path"])
    assert v["d2t"].shape == (100,) and v["t2d"].shape == (261,)

    f1 = fstage.run(ctx)
    assert f1["features/reused"] == 0 and f1["features/size_mb"] > 0
    train, held = make_train_source(ctx)
    assert (len(train), len(held)) == (5, 1)
    items = [train[0], train[1], held[0]]
    assert all(len(it["input_ids"]) <= 40 for it in items)  # train.max_seq_len
    b = collate(items)
    T = max(len(it["input_ids"]) for it in items)
    assert b["input_ids"].shape == (3, T) and b["input_ids"].dtype == torch.long
    assert b["features"].shape == (3, T, 192) and b["features"].dtype == torch.bfloat16
    assert b["target_hidden"].shape == (3, T, 64) and b["loss_mask"].dtype == torch.bool
    assert b["attention_mask"].dtype == torch.bool
    assert b["attention_mask"].sum(1).tolist() == [len(it["input_ids"]) for it in items]
    assert not (b["loss_mask"] & ~b["attention_mask"]).any()

    # a second run (same target, data, settings) computes nothing
    ctx2 = _ctx(tmp_path, ["model.draft.vocab_size=100", "train.max_seq_len=40"])
    assert dstage.run(ctx2)["data/reused"] == 1
    assert fstage.run(ctx2)["features/reused"] == 1

    # online mode: same items without a cache
    ctx3 = _ctx(tmp_path, ["model.draft.vocab_size=100", "train.max_seq_len=40", "train.features=online"])
    dstage.run(ctx3)
    assert fstage.run(ctx3)["features/online"] == 1 and ctx3.artifacts["features_dir"] is None
    t3, _ = make_train_source(ctx3)
    assert t3.collate is not collate and train.collate is collate
    on, off = t3.collate([t3[1], t3[0]]), collate([train[1], train[0]])
    assert on.keys() == off.keys()
    for k in off:
        torch.testing.assert_close(on[k].float(), off[k].float(), rtol=1e-2, atol=1e-2)


@pytest.mark.slow
def test_real_target_features(default_target, tmp_path):
    """SmolLM2 (bf16): layers 2/15/27, hidden 576, and lm_head(target_hidden) is exactly the logits path."""
    _, cfg = compose(["dataset.gen_batch_size=2", "dataset.gen_max_new_tokens=8"])[0]
    prompts = [
        {"id": f"tiny:{i}", "messages": [{"role": "user", "content": t}], "source": "tiny"}
        for i, t in enumerate(TINY_PROMPTS[:2])
    ]
    d, st = build_selfdistill(default_target, prompts, cfg.dataset, tmp_path, progress=False)
    assert st["sequences"] == 2 and default_target.decode(load_sequences(d)[0]["input_ids"].tolist())
    fd, fs = build_features(default_target, d, tmp_path, progress=False)
    assert fs["lm_head_max_abs_diff"] == 0.0 and fs["feature_layers"] == [2, 15, 27]
    it = CachedFeatures(fd).get(0)
    assert it["features"].shape == (len(it["input_ids"]), 3 * 576) and it["target_hidden"].shape[1] == 576
    assert fs["size_mb"] * 2**20 / fs["tokens"] == pytest.approx(4613, rel=0.05)


def test_batched_features_match_batch_one(tiny_target, dataset_dir, tmp_path, small_shards):
    """train.features_batch_size > 1: right padding leaves every real position's values (fp32 model, stored
    in bf16) as the batch-1 forward gives them; the cache key differs, so the two caches never mix."""
    d1, _ = build_features(tiny_target, dataset_dir, tmp_path / "cache", progress=False)
    d4, st = build_features(tiny_target, dataset_dir, tmp_path / "cache", progress=False, batch_size=4)
    assert d1 != d4 and st["sequences"] == 5 and st["lm_head_max_abs_diff"] == 0.0
    one, four = CachedFeatures(d1), CachedFeatures(d4)
    seqs = load_sequences(dataset_dir)
    assert len({len(s["input_ids"]) for s in seqs}) > 1  # the batches really are padded
    for i in range(len(seqs)):
        a, b = one.get(i), four.get(i)
        assert torch.equal(a["input_ids"], b["input_ids"])
        for k in ("features", "target_hidden"):
            torch.testing.assert_close(a[k].float(), b[k].float(), rtol=1e-2, atol=1e-2)
