"""DDP on CPU (2 gloo processes) gives the single-process loss curve at the same global batch.

Tolerance: rel 1e-5 on every logged loss and atol 1e-5 on the final parameters (fp32; only the order of the
gradient summation differs).
"""

import dataclasses
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank)
        )
    from vsd.config import compose
    from vsd.data.vocab import build_vocab, token_counts
    from vsd.features.dataset import collate
    from vsd.losses import build_loss
    from vsd.losses.eagle3 import finalize_logs
    from vsd.models.draft import build_head
    from vsd.models.target import load_target
    from vsd.runtime import init_distributed
    from vsd.train.toy_data import make_toy_items
    from vsd.train.trainer import Trainer

    _, cfg = compose(["model=tiny_random", "train=tiny", "loss=eagle3", "loss.ttt_steps=2"])[0]
    target = load_target(cfg.model, out, "cpu", "float32")
    items = make_toy_items(target, 10, new_tokens=12, greedy=False, seed=0)
    vocab = build_vocab(token_counts(items, target.vocab_size), 128)
    head = build_head(target, cfg.model.draft, vocab["d2t"], seed=0)
    tcfg = dataclasses.replace(
        cfg.train, steps=STEPS, batch_size=4, grad_accum=1, log_every=1, heldout_every=2
    )
    info = init_distributed("cpu")
    tr = Trainer(
        tcfg,
        head,
        build_loss(cfg.loss, target, vocab),
        items[:8],
        items[8:],
        collate,
        seed=0,
        device="cpu",
        ckpt_dir=None,
        run_dir=None,
        dist_info=info,
        progress=False,
        finalize=lambda s: finalize_logs(s, 2, cfg.loss.step_decay),
    )
    tr.fit()
    if info.main:
        rows = [{k: v for k, v in r.items() if "tokens_per_s" not in k} for r in tr.log_rows]
        torch.save({"rows": rows, "params": dict(head.named_parameters())}, f"{out}/result_{world}.pt")
        with open(f"{out}/rows_{world}.json", "w") as fh:
            json.dump(rows, fh)
    if world > 1:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    out = str(tmp_path)
    _train(0, 1, 0, out)
    mp.start_processes(_train, args=(2, _free_port(), out), nprocs=2, join=True, start_method="spawn")
    one = torch.load(f"{out}/result_1.pt", weights_only=False)
    two = torch.load(f"{out}/result_2.pt", weights_only=False)
    assert len(one["rows"]) == len(two["rows"]) == STEPS
    for r1, r2 in zip(one["rows"], two["rows"]):
        for k in ("train/loss", "train/acc_0", "train/acc_1", "train/sim_tau", "train/lr"):
            assert r1[k] == pytest.approx(r2[k], rel=1e-5, abs=1e-7), (r1["step"], k)
        if "heldout/loss" in r1:
            assert r1["heldout/loss"] == pytest.approx(r2["heldout/loss"], rel=1e-5)
    for n, p in one["params"].items():
        assert torch.allclose(p, two["params"][n], atol=1e-5), n


def test_slurm_step_variables_become_torch_env(monkeypatch):
    """Task 1 of a submitit Slurm job of 2 tasks exports torch's env:// variables from its Slurm variables;
    outside submitit (an ``salloc -n 4`` shell: SLURM_NTASKS=4, one process) nothing is exported, so a run
    there never waits for peers."""
    from vsd import runtime

    keys = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    for key in (*keys, "SUBMITIT_EXECUTOR"):
        # set, then delete: monkeypatch then restores each key's original state (absent too) even when an
        # assertion fails, so no exported rank leaks into later tests
        monkeypatch.setenv(key, "unset")
        monkeypatch.delenv(key)
    slurm = {"SLURM_JOB_ID": "17", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0"}
    for k, v in {**slurm, "SLURM_JOB_NODELIST": "node7", "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}.items():
        monkeypatch.setenv(k, v)
    runtime._torch_env_from_job()  # the allocation shell
    assert not any(k in os.environ for k in keys)

    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # task 1 of a submitit job of 2 tasks
    runtime._torch_env_from_job()
    got = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    assert got == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "node7"}
