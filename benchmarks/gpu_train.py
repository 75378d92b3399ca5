"""Draft-training throughput on GPUs: one process vs torchrun DDP at the same global batch.

    python benchmarks/gpu_train.py --config DIR/config.json                       # 1 GPU
    torchrun --nproc_per_node=2 benchmarks/gpu_train.py --config DIR/config.json  # 2 GPUs (NCCL)

The target has the geometry of ``--config`` (e.g. the default SmolLM2-135M's config.json) with random
weights: throughput does not depend on the weights, and the benchmark then needs no model files. Items are
random token sequences with the target's real features (computed on the GPU). Reports training tokens/s
(all tokens of the global batch, and response tokens) over ``--steps`` optimizer steps after a warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--batch", type=int, default=32, help="global batch (sequences)")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--loss", default="eagle3")
    ap.add_argument("--out", default=None)
    ap.add_argument("--data-on-device", action="store_true", help="train.data_on_device=true")
    args = ap.parse_args()

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from vsd.config import compose
    from vsd.data.vocab import build_vocab, token_counts
    from vsd.features.dataset import collate
    from vsd.losses import build_loss
    from vsd.models.draft import build_head
    from vsd.models.target import Target
    from vsd.runtime import init_distributed, local_device
    from vsd.train.toy_data import target_item
    from vsd.train.trainer import Trainer

    info = init_distributed("cuda")
    device = local_device("cuda", info)
    _, cfg = compose(["train.bf16_autocast=true"])[0]
    mc = LlamaConfig.from_pretrained(os.path.dirname(args.config))
    torch.manual_seed(0)
    model = LlamaForCausalLM(mc).to(device=device, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(os.path.dirname(args.config))
    target = Target(model, tok, "bench")
    g = torch.Generator().manual_seed(0)
    n_items = args.batch * 2
    items = []
    for _ in range(n_items):
        ids = torch.randint(0, mc.vocab_size, (args.seq,), generator=g).tolist()
        items.append(target_item(target, ids, args.seq // 4))
    vocab = build_vocab(token_counts(items, mc.vocab_size), cfg.model.draft.vocab_size)
    head = build_head(target, cfg.model.draft, vocab["d2t"], seed=0).to(device)
    tcfg = dataclasses.replace(
        cfg.train,
        steps=args.steps + 2,
        batch_size=args.batch,
        grad_accum=1,
        data_on_device=args.data_on_device,
    )
    tr = Trainer(
        tcfg,
        head,
        build_loss(cfg.loss, target, vocab),
        items,
        None,
        collate,
        seed=0,
        device=device,
        ckpt_dir=None,
        run_dir=None,
        dist_info=info,
        progress=False,
    )
    for _ in range(2):
        tr.train_step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    toks = 0.0
    losses = []
    for _ in range(args.steps):
        out = tr.train_step()
        toks += out["tokens"]
        losses.append(round(out["loss"], 5))
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if info.main:
        res = {
            "world": info.world,
            "gpu": torch.cuda.get_device_name(0),
            "global_batch": args.batch,
            "data_on_device": args.data_on_device,
            "seq": args.seq,
            "steps": args.steps,
            "seconds": round(dt, 3),
            "tokens_per_s": toks / dt,
            "resp_tokens_per_s": toks * 0.75 / dt,
            "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20,
            "loss_curve": losses,  # the same across world sizes and data placement, up to float tolerance
        }
        print(json.dumps(res), flush=True)
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(res, fh)
    if info.world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
