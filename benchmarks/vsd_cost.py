"""Cost of loss=vsd versus loss=eagle3 on the default target: training tokens/s and E-step seconds per S.

    .venv/bin/python benchmarks/vsd_cost.py --batch 2 --seq-len 256 --steps 2 --samples 1 4 16 40 [--tree]

Batch: real text through the default target's chat template (a user turn + a fixed English passage as the
response; generating the target's own response first would cost minutes and changes nothing measured here).
Cost does not depend on what the draft accepts (the oracle scores every path), so an untrained draft with
the data's draft vocab measures the same thing as a warm-started one. One optimizer step = loss forward +
backward + AdamW step; tokens/s counts response tokens (loss_mask) per second. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch


def build_batch(target, batch: int, seq_len: int) -> list[dict]:
    from vsd.train.toy_data import target_item

    text = (
        "Speculative decoding drafts several tokens with a small model and verifies them with the large "
        "model in one forward pass. The draft head reads the target's hidden states and proposes a tree. "
    ) * 40
    items = []
    for b in range(batch):
        prompt = target.chat_ids(
            [{"role": "user", "content": f"Question {b}: explain speculative decoding."}]
        )
        resp = target.tokenizer(text, add_special_tokens=False)["input_ids"][b * 7 :]
        ids = (prompt + resp)[:seq_len]
        items.append(target_item(target, ids, len(prompt)))
    return items


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per setting (after 1 warm-up step)")
    ap.add_argument("--samples", type=int, nargs="+", default=[1, 4, 16, 40])
    ap.add_argument("--anchors", type=int, default=8)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--tree", action="store_true", help="also the tree E-step (loss.estep=tree, 8 x 32 trees)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from vsd.config import compose
    from vsd.data.vocab import build_vocab, token_counts
    from vsd.features.dataset import collate
    from vsd.losses import build_loss
    from vsd.models.draft import build_head
    from vsd.models.target import load_target
    from vsd.runtime import synchronize

    _, cfg = compose([])[0]
    target = load_target(cfg.model, cfg.paths.cache_dir, args.device, cfg.dtype)
    items = build_batch(target, args.batch, args.seq_len)
    vocab = build_vocab(token_counts(items, target.vocab_size), cfg.model.draft.vocab_size)
    batch = {k: v.to(args.device) for k, v in collate(items).items()}
    n_resp = int(batch["loss_mask"].sum())

    settings = (
        [("eagle3", None)] + [("vsd", s) for s in args.samples] + ([("vsd-tree", 1)] if args.tree else [])
    )
    rows = []
    for name, S in settings:
        over = (
            ["loss=eagle3"]
            if name == "eagle3"
            else [
                "loss=vsd",
                "train.init_from=/x",
                f"loss.num_samples={S}",
                f"loss.anchors_per_seq={args.anchors}",
                f"loss.depth={args.depth}",
                *(["loss.estep=tree"] if name == "vsd-tree" else []),
            ]
        )
        lcfg = compose(over)[0][1].loss
        head = build_head(target, cfg.model.draft, vocab["d2t"], seed=0)
        params = [p for p in head.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        loss = build_loss(lcfg, target, vocab)
        times, estep = [], []
        for i in range(args.steps + 1):
            synchronize(args.device)
            t0 = time.perf_counter()
            opt.zero_grad()
            val, logs = loss(head, batch, i)
            val.backward()
            opt.step()
            synchronize(args.device)
            if i:  # step 0 is warm-up
                times.append(time.perf_counter() - t0)
                estep.append(logs.get("vsd/estep_s", 0.0))
        st = sum(times) / len(times)
        rows.append((name, S, st, sum(estep) / len(estep), n_resp / st))
        print(f"{name} S={S}: {st:.2f} s/step", flush=True)

    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{torch.get_num_threads()}, load avg {load}; target {cfg.model.name} {target.dtype}; batch "
        f"{args.batch} x {batch['input_ids'].shape[1]} tokens ({n_resp} response tokens), anchors "
        f"{args.anchors}, depth {args.depth}\n"
    )
    print("| loss | S | s/step | E-step s/step | response tokens/s | × EAGLE-3 step |")
    print("|---|---|---|---|---|---|")
    for name, S, st, es, tps in rows:
        label = "tree" if name == "vsd-tree" else (S if S else "-")
        print(f"| {name.split('-')[0]} | {label} | {st:.2f} | {es:.2f} | {tps:.1f} | {st / rows[0][2]:.2f} |")


if __name__ == "__main__":
    main()
