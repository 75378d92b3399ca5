"""The default target's CPU kernels side by side, in one process: what ``eval.target_kernel=auto`` chooses from.

    python benchmarks/cpu_kernels.py                 # SmolLM2-135M as `make run` loads it (dtype=auto)
    python benchmarks/cpu_kernels.py --bf16          # add the dense bf16 target (slow without native bf16)

For each kernel (vsd/models/cpu_kernels.py) and thread count: the fastest KV-cached forward appending 1, 8 and
16 tokens to a 128-token prefix (ms; ``step_ms``), each relative to dense fp32 at the same thread count, and
whether the kernel is batch-invariant: the largest logit difference between verifying 16 tokens in one call and
feeding them one at a time, and whether the greedy tokens agree (a kernel whose logits depend on the batch
cannot keep T=0 speculative output equal to plain AR). Prints a Markdown table; ``--out`` writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from vsd.config import compose
from vsd.models.cpu_kernels import KERNELS, LOSSLESS, step_ms, with_kernel
from vsd.models.target import load_target
from vsd.runtime import cpu_capabilities, native_bf16, usable_cpus


def batch_effect(target, tokens: int = 16) -> tuple[float, bool]:
    """(max |logit difference|, greedy tokens equal) between one call over ``tokens`` new tokens and one call
    per token, after the same 64-token prefix."""
    gen = torch.Generator().manual_seed(1)
    prefix = torch.randint(0, target.vocab_size, (1, 64), generator=gen)
    new = torch.randint(0, target.vocab_size, (1, tokens), generator=gen)
    cache = target.new_cache()
    target.forward(prefix, cache=cache)
    together = target.forward(new, cache=cache).logits[0].float()
    cache = target.new_cache()
    target.forward(prefix, cache=cache)
    alone = torch.cat(
        [target.forward(new[:, i : i + 1], cache=cache).logits[0].float() for i in range(tokens)]
    )
    return float((together - alone).abs().max()), bool((together.argmax(-1) == alone.argmax(-1)).all())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bf16", action="store_true", help="also time the dense bf16 target")
    ap.add_argument("--threads", type=int, nargs="*", default=None, help="default: usable cores and half")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    n = usable_cpus()
    threads = args.threads or sorted({n, max(1, n // 2)}, reverse=True)
    _, cfg = compose(["dtype=float32"])[0]
    base = load_target(cfg.model, cfg.paths.cache_dir, "cpu", "float32")
    variants = {k: with_kernel(base, k) for k in KERNELS}
    if args.bf16:
        variants["dense bf16"] = load_target(cfg.model, cfg.paths.cache_dir, "cpu", "bfloat16")
    rows = []
    for name, target in variants.items():
        diff, same = batch_effect(target)
        for t in threads:
            torch.set_num_threads(t)
            ms = {k: step_ms(target, k) for k in (1, 8, 16)}
            rows.append({"kernel": name, "threads": t, "ms": ms, "max_logit_diff": diff, "greedy_same": same})
    ref = {(r["threads"]): r["ms"] for r in rows if r["kernel"] == "dense"}
    print(
        "| kernel | threads | 1 token ms | 8 tokens ms | 16 tokens ms | vs dense fp32 (1 / 16) "
        "| 16 vs 1 token | batch logit diff | greedy same | auto may pick |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m, d = r["ms"], ref[r["threads"]]
        print(
            f"| {r['kernel']} | {r['threads']} | {m[1]:.1f} | {m[8]:.1f} | {m[16]:.1f} | "
            f"{d[1] / m[1]:.2f}× / {d[16] / m[16]:.2f}× | {m[16] / m[1]:.2f} | {r['max_logit_diff']:.2e} | "
            f"{'yes' if r['greedy_same'] else 'no'} | {'yes' if r['kernel'] in LOSSLESS else 'no'} |"
        )
    caps = cpu_capabilities()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": caps.get("cpu_name"),
        "native_bf16": native_bf16("cpu"),
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "usable_cpus": n,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    print(json.dumps(meta))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
