"""EAGLE-3 head: shapes, vocab maps, TTT attention == decoding KV attention, save/load round trip."""

import pytest
import torch

from vsd.config import compose
from vsd.data.vocab import build_vocab
from vsd.features.dataset import collate
from vsd.models.draft import DraftHead, build_head
from vsd.models.target import load_target
from vsd.train.toy_data import make_toy_items


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    _, cfg = compose(["model=tiny_random"])[0]
    target = load_target(cfg.model, tmp_path_factory.mktemp("c"), "cpu", "float32")
    counts = torch.arange(target.vocab_size).float() % 7  # deterministic, with ties
    vocab = build_vocab(counts, 32)
    head = build_head(target, cfg.model.draft, vocab["d2t"], seed=0)
    return cfg, target, vocab, head


def test_vocab_maps(setup):
    _, target, vocab, head = setup
    d2t, t2d = head.d2t, head.t2d
    assert d2t.shape == (32,) and t2d.shape == (target.vocab_size,)
    assert torch.equal(t2d[d2t], torch.arange(32))
    assert int((t2d >= 0).sum()) == 32
    assert torch.all(d2t[1:] > d2t[:-1])  # sorted target ids
    # the 32 most frequent: count 6 ids first (ties broken by lower id), then count 5
    counts = torch.arange(target.vocab_size) % 7
    assert counts[d2t].min() >= 5 and counts[d2t].float().mean() > 5


def test_shapes_and_frozen_embedding(setup):
    _, target, _, head = setup
    H = target.hidden_size
    assert head.fc.weight.shape == (H, 3 * H)
    layer = head.layers[0]
    assert layer.q_proj.weight.shape[1] == 2 * H and layer.k_proj.weight.shape[1] == 2 * H
    assert not head.embed_tokens.weight.requires_grad
    assert torch.equal(head.embed_tokens.weight, target.model.get_input_embeddings().weight)
    trainable = head.num_trainable_parameters()
    assert trainable == sum(p.numel() for n, p in head.named_parameters() if not n.startswith("embed"))
    B, T = 2, 5
    feats = torch.randn(B, T, 3 * H)
    ids = torch.randint(0, target.vocab_size, (B, T))
    h, logits = head.step(head.fuse(feats), ids, torch.arange(T)[None])
    assert h.shape == (B, T, H) and logits.shape == (B, T, 32)


def test_ttt_step_equals_decoding_with_kv_cache(setup):
    """TTT step k at position t == a depth-(k+1) node over a KV cache of positions <= t (the alignment)."""
    _, target, _, head = setup
    H, T, t = target.hidden_size, 7, 3
    torch.manual_seed(0)
    feats, ids = torch.randn(1, T, 3 * H), torch.randint(0, 200, (1, T))
    pos = torch.arange(T)[None]
    cache = head.new_ttt_cache()
    h0, l0 = head.step(head.fuse(feats), ids, pos, cache)
    ids1 = torch.roll(ids, -1, 1)
    h1, l1 = head.step(h0, ids1, pos + 1, cache)
    # decoding: prefix entries 0..t, then the depth-2 node at position t+1 sees them and itself
    kv = head.new_kv_cache()
    hd, ld = head.step(head.fuse(feats[:, : t + 1]), ids[:, : t + 1], pos[:, : t + 1], kv)
    assert torch.allclose(ld, l0[:, : t + 1], atol=1e-5)
    _, ln = head.step(hd[:, t : t + 1], ids1[:, t : t + 1], torch.tensor([[t + 1]]), kv)
    assert torch.allclose(ln[0, 0], l1[0, t], atol=1e-5)


def test_save_load_roundtrip(setup, tmp_path):
    _, target, _, head = setup
    head.save(tmp_path / "d")
    back = DraftHead.load(tmp_path / "d", target)
    assert torch.equal(back.d2t, head.d2t) and torch.equal(back.t2d, head.t2d)
    for (n, a), (_, b) in zip(head.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n
    items = make_toy_items(target, 2, new_tokens=6, greedy=False)
    b = collate(items)
    x = head.step(head.fuse(b["features"]), b["input_ids"], torch.arange(b["input_ids"].shape[1])[None])[1]
    y = back.step(back.fuse(b["features"]), b["input_ids"], torch.arange(b["input_ids"].shape[1])[None])[1]
    assert torch.equal(x, y)


def test_load_errors_name_the_file(setup, tmp_path):
    _, target, _, _ = setup
    from vsd.errors import UserError

    with pytest.raises(UserError, match="missing config.json"):
        DraftHead.load(tmp_path, target)


def _flip(path, offset: int, n: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    offset = min(offset, len(data) - n)
    data[offset : offset + n] = bytes(b ^ 0xFF for b in data[offset : offset + n])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "vocab.safetensors"])
@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_weight_file_is_one_line_naming_it(setup, tmp_path, name, damage):
    import json

    from vsd.errors import UserError

    _, target, _, head = setup
    d = head.save(tmp_path / "d")
    f = d / name
    if damage == "flipped":  # 4 KB of flipped bytes past the header: safetensors itself would load them
        _flip(f, offset=f.stat().st_size // 2)
    else:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(UserError) as ei:
        DraftHead.load(d, target)
    msg = str(ei.value)
    assert "\n" not in msg and str(f) in msg and "sha256" in msg and "download it again" in msg, msg
    assert set(json.loads((d / "config.json").read_text())["sha256"]) == {
        "model.safetensors",
        "vocab.safetensors",
    }


def test_a_checkpoint_saved_before_checksums_loads_with_one_warning(setup, tmp_path):
    import json

    from vsd.errors import UserError

    _, target, _, head = setup
    d = head.save(tmp_path / "old")
    meta = json.loads((d / "config.json").read_text())
    meta.pop("sha256", None)  # as written before checksums existed (some of docs/records)
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="records no sha256"):
        back = DraftHead.load(d, target)
    assert torch.equal(back.d2t, head.d2t)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per checkpoint: the second load is silent
        DraftHead.load(d, target)
    # unchecked, a truncated file is still one line naming it, not a safetensors traceback
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(UserError) as ei:
        DraftHead.load(d, target)
    assert "\n" not in str(ei.value) and str(f) in str(ei.value) and "unreadable" in str(ei.value)


def test_run_py_stops_on_a_corrupt_draft_with_one_line(setup, tmp_path):
    """Before checksums, flipped bytes in model.safetensors ran the eval to `completed` with a garbage tau."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.sweep_helpers import job_env

    _, _, _, head = setup
    d = head.save(tmp_path / "draft")
    _flip(d / "model.safetensors", offset=(d / "model.safetensors").stat().st_size // 2)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "run.py", "experiment=smoke", "stages=[eval]", f"draft.checkpoint={d}"]
    cmd += [
        "eval.max_turns=1",
        "eval.per_category=1",
        "decoding.max_new_tokens=4",
        f"hydra.run.dir={run_dir}",
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: draft checkpoint {d / 'model.safetensors'}: sha256"), r.stderr[-2000:]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "failed" and not (run_dir / "metrics.json").exists()
