"""The feature store at scale: memory-mapped shards keep the resident set far below the cache's size, truncated
shards are caught, and the cache's size is checked against the free disk before any compute."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vsd.features.cache as fcache
from vsd.config import compose
from vsd.data.selfdistill import build_selfdistill
from vsd.data.shards import MappedShard, save_shard, shard_name, write_manifest
from vsd.data.sources import TINY_PROMPTS
from vsd.errors import UserError
from vsd.features.dataset import CachedFeatures

H = 256  # hidden size of the synthetic cache: 2,053 bytes per token
SEQ, SEQS, SHARDS = 512, 288, 6  # 6 shards of ~50 MB: a 300 MB cache

READER = """
import sys, torch
from vsd.features.dataset import CachedFeatures
from vsd.data.shards import load_shard

def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
torch.set_num_threads(1)
base = rss("VmRSS:")
store = CachedFeatures(sys.argv[1])
total = 0.0
for i in range(len(store)):
    it = store.get(i)
    total += float(it["features"][:, 0].float().sum()) + float(it["target_hidden"][-1].float().sum())
mapped = rss("VmHWM:") - base
# the control: the same shards loaded whole, as the store did before it was memory-mapped
shards = [load_shard(p) for p in sorted(store.dir.glob("shard_*.safetensors"))]
touched = sum(int(t.reshape(-1).view(torch.uint8)[::4096].sum()) for sh in shards for t in sh.values())
loaded = rss("VmHWM:") - base
print(mapped, loaded, total)
"""


def _synthetic_cache(d: Path) -> tuple[int, float]:
    """A feature cache of SHARDS x SEQS/SHARDS sequences of SEQ tokens with random bf16 values; returns (its
    bytes, the sum the reader computes)."""
    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    per, total = SEQS // SHARDS, 0.0
    for b in range(SHARDS):
        n = per * SEQ
        feats = torch.randn(n, 3 * H, generator=g).to(torch.bfloat16)
        last = torch.randn(n, H, generator=g).to(torch.bfloat16)
        for j in range(per):
            total += float(feats[j * SEQ : (j + 1) * SEQ, 0].float().sum()) + float(
                last[(j + 1) * SEQ - 1].float().sum()
            )
        save_shard(
            d / shard_name(b),
            {
                "input_ids": torch.randint(0, 100, (n,), generator=g, dtype=torch.int32),
                "loss_mask": torch.ones(n, dtype=torch.bool),
                "features": feats,
                "target_hidden": last,
                "offsets": torch.arange(0, n + 1, SEQ, dtype=torch.long),
                "seq_index": torch.arange(b * per, (b + 1) * per),
            },
        )
    man = write_manifest(d, SHARDS, {"key": {}, "stats": {}})
    return man["bytes"], total


def test_mapped_store_keeps_rss_far_below_the_cache(tmp_path):
    """Reading every item of a 300 MB cache raises the peak RSS by less than a 48 MB budget (a fresh process:
    VmHWM); the control, loading the shards whole, exceeds the cache's size, so the budget can fail."""
    size, want = _synthetic_cache(tmp_path / "features" / "k")
    budget = 48 * 2**20
    assert size > 6 * budget
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", READER, str(tmp_path / "features" / "k")],
        capture_output=True,
        text=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    mapped, loaded, total = out.stdout.split()
    assert int(mapped) < budget, (
        f"peak RSS grew {int(mapped) / 2**20:.0f} MiB reading a {size / 2**20:.0f} MiB cache"
    )
    assert int(loaded) > 0.9 * size
    assert float(total) == pytest.approx(want, rel=1e-6)


def test_mapped_rows_equal_the_tensors_and_truncation_is_caught(tmp_path):
    t = {
        "a": torch.randn(7, 3).to(torch.bfloat16),
        "b": torch.arange(10, dtype=torch.int32),
        "m": torch.rand(5) > 0.5,
    }
    save_shard(tmp_path / "s.safetensors", t)
    sh = MappedShard(tmp_path / "s.safetensors")
    assert torch.equal(sh.rows("a", 2, 5), t["a"][2:5]) and sh.rows("a", 2, 5).dtype == torch.bfloat16
    assert torch.equal(sh.tensor("b"), t["b"]) and torch.equal(sh.tensor("m"), t["m"])
    sh.close()
    raw = (tmp_path / "s.safetensors").read_bytes()
    (tmp_path / "s.safetensors").write_bytes(raw[:-8])
    with pytest.raises(UserError, match=r"s.safetensors is corrupt \(truncated"):
        MappedShard(tmp_path / "s.safetensors")
    (tmp_path / "s.safetensors").write_bytes(raw[:5])
    with pytest.raises(UserError, match="is unreadable"):
        MappedShard(tmp_path / "s.safetensors")


def test_size_is_checked_against_free_disk(tiny_target, tmp_path, monkeypatch, capsys):
    """Too little free disk: one line naming the key and the sizes, before any compute, and nothing written."""
    _, cfg = compose(["model=tiny_random", "dataset=tiny", "dataset.gen_max_new_tokens=4"])[0]
    prompts = [
        {"id": f"t{i}", "messages": [{"role": "user", "content": t}], "source": "t"}
        for i, t in enumerate(TINY_PROMPTS[:3])
    ]
    sd, st = build_selfdistill(tiny_target, prompts, cfg.dataset, tmp_path, progress=False)
    need = fcache.estimate_bytes(st["total_tokens"], 3, 1, tiny_target.hidden_size)
    assert need == st["total_tokens"] * (8 * 64 + 5) + 3 * 16 + 1024

    class Usage:
        free = need - 1

    monkeypatch.setattr(fcache.shutil, "disk_usage", lambda p: Usage)
    monkeypatch.setattr(fcache, "compute_item", lambda *a, **k: pytest.fail("computed before the disk check"))
    with pytest.raises(UserError) as e:
        fcache.build_features(tiny_target, sd, tmp_path, progress=False)
    msg = str(e.value)
    assert msg.startswith("paths.cache_dir: the feature cache needs") and "train.features=online" in msg
    assert "\n" not in msg
    assert not any((tmp_path / "features").glob("*/key.json"))  # nothing half-written
    assert "[vsd] feature cache:" in capsys.readouterr().out
    monkeypatch.undo()
    d, st2 = fcache.build_features(tiny_target, sd, tmp_path, progress=False)
    # the estimate is the cache's real size to within the safetensors headers
    real = json.loads((d / "manifest.json").read_text())["bytes"]
    assert need - 1024 <= real <= need
    assert len(CachedFeatures(d)) == 3
