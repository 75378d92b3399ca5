"""Benchmark: what one speculative step costs on this machine, in units of a plain-AR target forward (t1).

For each draft dtype, on a few MT-Bench prompts with the real default target and a draft directory (an
untrained head drafts as fast as a trained one): plain AR and speculative decoding at the configured tree,
interleaved per prompt in one process after warm-up. Prints
  c_draft per level = drafter seconds per verification step / (depth * t1)   (eval/c_draft)
  c_verify          = t(verify forward over root + N nodes) / t1             (eval/c_verify, via the runner)
  step              = speculative wall seconds per verification step / t1    (everything: draft, verify, loop)
It uses only the engine's public calls (generate_ar, generate_spec, measure_forward_costs, load_draft), so the
same script measures an older checkout: ``PYTHONPATH=/path/to/old/checkout python benchmarks/draft_cost.py``.

    .venv/bin/python benchmarks/draft_cost.py --draft DIR [--dtypes float32,bfloat16] [--prompts 4]
        [--max-new 64] [--temperature 0] [--depth 5 --top-k 8 --total 32] [--threads 1]
        [--kernel fp16_weights]

``--kernel K`` runs the target with the CPU kernel K (eval.target_kernel; vsd/models/cpu_kernels.py) and
compares, in float32, the draft head left dense with the head following the target's kernel (what the eval
decodes with). t1 is then K's one-token step.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch

if "PYTHONPATH" not in os.environ:  # this checkout, unless another one is asked for
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vsd.config import compose  # noqa: E402
from vsd.decoding.eagle import load_draft  # noqa: E402
from vsd.decoding.engine import generate_ar, generate_spec  # noqa: E402
from vsd.evaluation.costs import measure_forward_costs  # noqa: E402
from vsd.models.target import load_target  # noqa: E402

PROMPTS = [
    "Write a short travel blog post about a trip to Hawaii, highlighting cultural experiences.",
    "Explain the difference between a list and a tuple in Python, with code examples.",
    "A train travels 60 miles in 1.5 hours. What is its average speed? Explain step by step.",
    "Summarise the main causes of the French Revolution in five bullet points.",
    "Translate into French: The weather is lovely today and we are going to the beach.",
    "Write a Python function that checks whether a string is a palindrome.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draft", required=True)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--total", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--kernel",
        default="dense",
        choices=["dense", "fp16_weights", "int8"],  # vsd.models.cpu_kernels.KERNELS
        help="the target's CPU kernel; not dense: the head dense against the head on the target's kernel",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, cfg = compose(["dtype=float32"] if args.kernel != "dense" else [])[0]
    target = load_target(cfg.model, cfg.paths.cache_dir, "cpu", cfg.dtype)
    if args.kernel != "dense":
        from vsd.models.cpu_kernels import with_kernel

        target = with_kernel(target, args.kernel)
    drafter = load_draft(args.draft, target)
    base = dataclasses.replace(
        cfg.decoding,
        max_new_tokens=args.max_new,
        temperature=args.temperature,
        depth=args.depth,
        top_k=args.top_k,
        total_tokens=args.total,
    )
    if args.kernel == "dense":  # row label -> (drafter, decoding config)
        rows = {dt: (drafter, dataclasses.replace(base, draft_dtype=dt)) for dt in args.dtypes.split(",")}
    else:
        from vsd.decoding.eagle import EagleDrafter

        fp32 = dataclasses.replace(base, draft_dtype="float32")
        dense = EagleDrafter(drafter.head, target.dtype, kernel="dense")
        rows = {"float32, head dense": (dense, fp32), f"float32, head {args.kernel}": (drafter, fp32)}
    dtypes = list(rows)
    ids = [target.chat_ids([{"role": "user", "content": t}]) for t in PROMPTS[: args.prompts]]
    gen = torch.Generator().manual_seed(0)
    for dt in dtypes:  # warm-up
        generate_ar(target, ids[0], rows[dt][1], generator=gen)
        generate_spec(target, rows[dt][0], ids[0], rows[dt][1], generator=gen)
    ar_s = ar_tok = 0.0
    per = {dt: [0.0, 0.0, 0, 0] for dt in dtypes}  # wall, draft seconds, steps, new tokens
    for i, x in enumerate(ids):
        order = dtypes if i % 2 == 0 else dtypes[::-1]
        ar = generate_ar(target, x, base, generator=gen)
        ar_s += ar.wall_s
        ar_tok += len(ar.tokens)
        for dt in order:
            r = generate_spec(target, rows[dt][0], x, rows[dt][1], generator=gen)
            p = per[dt]
            p[0] += r.wall_s
            p[1] += r.draft_s
            p[2] += len(r.accepted)
            p[3] += len(r.tokens)
    costs = [measure_forward_costs(target, ids[0], base) for _ in range(3)]
    t1 = statistics.median(c["t1_s"] for c in costs)
    c_verify = statistics.median(c["c_verify"] for c in costs)
    print(
        f"t1 {1000 * t1:.1f} ms (AR in the loop: {1000 * ar_s / ar_tok:.1f} ms/token); "
        f"c_verify({int(costs[0]['verify_tokens'])} tokens) {c_verify:.2f}"
    )
    print(f"target kernel {target.kernel}, {torch.get_num_threads()} thread(s), {len(ids)} prompts")
    print("| draft | c_draft per level | draft ms per level | step (t1) | tau | speedup vs AR in the loop |")
    print("|---|---|---|---|---|---|")
    for dt in dtypes:
        wall, dr, steps, new = per[dt]
        lvl = dr / steps / args.depth
        speed = (ar_s / ar_tok) / (wall / new)
        print(
            f"| {dt} | {lvl / t1:.3f} | {1000 * lvl:.2f} | {wall / steps / t1:.2f} | {new / steps:.2f} | "
            f"{speed:.2f}x |"
        )
    breakdown(target, rows[dtypes[-1]][0], ids, rows[dtypes[-1]][1], args.depth)


def breakdown(target, drafter, ids, dcfg, depth: int) -> None:
    """Where a step's draft time goes (this checkout's runners only): commit, tree levels, the rest."""
    from vsd.decoding import draft_runner

    cls = draft_runner.EagerDraftRunner
    if not hasattr(cls, "expand_level"):
        return  # an older checkout
    spent = {"commit": 0.0, "expand": 0.0, "propose": 0.0}
    originals = {"commit": cls.commit, "expand": cls.expand_level, "propose": type(drafter).propose}

    def timed(fn, key):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            spent[key] += time.perf_counter() - t0
            return out

        return wrapper

    cls.commit, cls.expand_level = timed(cls.commit, "commit"), timed(cls.expand_level, "expand")
    type(drafter).propose = timed(type(drafter).propose, "propose")
    try:
        steps = 0
        for x in ids:
            r = generate_spec(target, drafter, x, dcfg)
            steps += len(r.accepted)
    finally:
        cls.commit, cls.expand_level = originals["commit"], originals["expand"]
        type(drafter).propose = originals["propose"]
    ms = {k: 1000 * v / steps for k, v in spent.items()}
    print(
        f"{dcfg.draft_dtype}, per step: propose {ms['propose']:.2f} ms = commit {ms['commit']:.2f} + "
        f"{depth - 1} levels {ms['expand']:.2f} ({ms['expand'] / max(depth - 1, 1):.2f} each) + tree bookkeeping "
        f"{ms['propose'] - ms['commit'] - ms['expand']:.2f} (the prompt's commit included)"
    )


if __name__ == "__main__":
    main()
