"""Packed grouped-query attention against HF's stock SDPA path on the default target (vsd/models/attention.py).

One process, the same target and KV cache, the two attention implementations alternated per repetition: the
fastest of ``--reps`` forwards that append n tokens (a chain/tree verify; n=1 is a plain AR step) on top of
``--context`` cached tokens, and the largest logit difference between the two.

  python benchmarks/attention.py                      # this CPU, the eval's kernel (fp16 weights), 2 threads
  python benchmarks/attention.py --threads 1 --kernel dense
Numbers: docs/training.md ("Packed GQA attention").
"""

from __future__ import annotations

import argparse
import time

import torch

from vsd.config import compose
from vsd.models.attention import NAME
from vsd.models.cpu_kernels import with_kernel
from vsd.models.target import load_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kernel", default="fp16_weights", choices=("dense", "fp16_weights"))
    ap.add_argument("--context", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, cfg = compose(["dtype=float32"])[0]
    target = with_kernel(load_target(cfg.model, cfg.paths.cache_dir, "cpu", "float32"), args.kernel)
    gen = torch.Generator().manual_seed(0)
    print(f"target {cfg.model.name}, kernel {args.kernel}, {args.threads} threads; fastest of {args.reps}")
    print("| context | new tokens | stock SDPA ms | packed ms | packed / stock | max logit diff |")
    print("|---|---|---|---|---|---|")
    for ctx in args.context:
        cache = target.new_cache()
        target.forward(torch.randint(0, target.vocab_size, (1, ctx), generator=gen), cache=cache)
        for n in args.tokens:
            step = torch.randint(0, target.vocab_size, (1, n), generator=gen)
            mask = torch.zeros(1, 1, n, ctx + n)
            mask[..., ctx:] = torch.full((n, n), torch.finfo(torch.float32).min).triu(1)
            pos = torch.arange(ctx, ctx + n)[None]
            best, logits = {"sdpa": 1e9, NAME: 1e9}, {}
            for _ in range(args.reps + 1):  # the first round warms both up
                for impl in best:
                    target.model.set_attn_implementation(impl)
                    t0 = time.perf_counter()
                    out = target.forward(step, cache=cache, attention_mask=mask, position_ids=pos)
                    best[impl] = min(best[impl], time.perf_counter() - t0)
                    logits[impl] = out.logits
                    cache.crop(-n)
            target.model.set_attn_implementation(NAME)
            s, p = best["sdpa"] * 1e3, best[NAME] * 1e3
            diff = (logits["sdpa"] - logits[NAME]).abs().max().item()
            print(f"| {ctx} | {n} | {s:.1f} | {p:.1f} | {p / s:.2f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
