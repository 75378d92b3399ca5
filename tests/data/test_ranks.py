"""Self-distillation and feature building split across ranks (two gloo processes on the CPU): each rank builds
its own shards, rank 0 writes the manifests, and the caches equal a one-process build byte for byte."""

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

OV = [
    "model=tiny_random",
    "dataset=tiny",
    "dataset.source=tiny",
    "dataset.gen_batch_size=2",
    "dataset.gen_max_new_tokens=5",
    "dataset.max_seq_len=80",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _build(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank)
        )
    import vsd.features.cache as fcache
    from vsd.config import compose
    from vsd.data.selfdistill import build_selfdistill
    from vsd.data.sources import TINY_PROMPTS
    from vsd.models.target import load_target
    from vsd.runtime import init_distributed

    fcache.SEQS_PER_SHARD = 2  # 7 sequences: 4 feature shards, as the 4 generation batches
    info = init_distributed("cpu")
    _, cfg = compose(OV)[0]
    target = load_target(cfg.model, out, "cpu", "float32")
    prompts = [
        {"id": f"t{i}", "messages": [{"role": "user", "content": t}], "source": "t"}
        for i, t in enumerate(TINY_PROMPTS[:7])
    ]
    cache = Path(out) / f"cache{world}"
    d, st = build_selfdistill(target, prompts, cfg.dataset, cache, progress=False, dist_info=info)
    fd, fst = fcache.build_features(target, d, cache, progress=False, dist_info=info)
    again = fcache.build_features(target, d, cache, progress=False, dist_info=info)[1]
    row = {
        "data": d.name,
        "features": fd.name,
        "sd_computed": st["shards_computed"],
        "sequences": st["sequences"],
    }
    row.update(f_computed=fst["shards_computed"], f_reused=again["reused"], tokens=fst["tokens"])
    (Path(out) / f"w{world}r{rank}.json").write_text(json.dumps(row))
    if world > 1:
        torch.distributed.destroy_process_group()


def _shas(d: Path) -> list[str]:
    return [s["sha256"] for s in json.loads((d / "manifest.json").read_text())["shards"]]


@pytest.mark.slow
def test_two_ranks_build_their_own_shards_and_equal_one_process(tmp_path, monkeypatch):
    import vsd.features.cache as fcache

    monkeypatch.setattr(fcache, "SEQS_PER_SHARD", fcache.SEQS_PER_SHARD)  # _build changes it: undone after
    out = str(tmp_path)
    _build(0, 1, 0, out)
    mp.start_processes(_build, args=(2, _free_port(), out), nprocs=2, join=True, start_method="spawn")
    one, r0, r1 = (json.loads((tmp_path / f).read_text()) for f in ("w1r0.json", "w2r0.json", "w2r1.json"))
    assert one["data"] == r0["data"] == r1["data"] and one["features"] == r0["features"] == r1["features"]
    assert one["sd_computed"] == 4 and (r0["sd_computed"], r1["sd_computed"]) == (2, 2)  # shards 0, 2 | 1, 3
    assert one["f_computed"] == 4 and (r0["f_computed"], r1["f_computed"]) == (2, 2)
    assert r0["sequences"] == r1["sequences"] == 7 and r0["tokens"] == one["tokens"]  # both read the manifest
    assert r0["f_reused"] == r1["f_reused"] == 1  # a second call on both ranks computes nothing
    for kind, key in (("selfdistill", "data"), ("features", "features")):
        a, b = tmp_path / "cache1" / kind / one[key], tmp_path / "cache2" / kind / one[key]
        assert _shas(a) == _shas(b) and len(_shas(a)) == 4
