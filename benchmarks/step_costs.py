"""Benchmark: the target's one-token AR step with and without an explicit attention mask, and verify steps.

Why it exists: with no mask, transformers' SDPA attention hands SmolLM2's grouped-query attention to
``F.scaled_dot_product_attention(..., enable_gqa=True)``, whose bf16 CPU kernel is several times slower for a single
query than the path HF takes when a 4D mask is given (it packs the query per key/value head). The engine's AR step
used to pass no mask; ``DynamicRunner`` now always does. Prints, per cached length: the maskless AR forward (the old
path), the runner's AR step, verify steps over 6 and 16 nodes, and c_verify(6) against either AR step.
Interleaved in one process, medians.

    .venv/bin/python benchmarks/step_costs.py [--lengths 100,300,600] [--repeats 9] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vsd.config import compose  # noqa: E402
from vsd.decoding.shape_measure import representative_tree  # noqa: E402
from vsd.decoding.target_runner import DynamicRunner  # noqa: E402
from vsd.models.target import load_target  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default="100,300,600")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    _, cfg = compose([])[0]
    t = load_target(cfg.model, cfg.paths.cache_dir, "cpu", cfg.dtype)
    print("| cached tokens | AR step, no mask (old) | AR step (runner) | verify 6 nodes | verify 16 nodes | "
          "c_verify(6) old -> now |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for length in (int(x) for x in args.lengths.split(",")):
        m = measure(t, cfg, length, args.repeats)
        print(
            f"| {length} | {m['old']:.1f} ms | {m['ar']:.1f} ms | {m['v6']:.1f} ms | {m['v16']:.1f} ms | "
            f"{m['v6'] / m['old']:.2f} -> {m['v6'] / m['ar']:.2f} |"
        )


def measure(t, cfg, length: int, repeats: int) -> dict[str, float]:
    """Median milliseconds of each step kind on top of ``length`` cached tokens."""
    r = DynamicRunner(t)
    r.prefill(list(range(1000, 1000 + length)), False)
    trees = {n: representative_tree(cfg.decoding, t.vocab_size, n) for n in (6, 16)}

    def old() -> None:
        t.forward(torch.tensor([[5]]), cache=r.cache)
        r.cache.crop(-1)

    def step(tree=None) -> None:
        r.step(5, tree, False)
        r.keep([])

    fns = {"old": old, "ar": step, "v6": lambda: step(trees[6]), "v16": lambda: step(trees[16])}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


if __name__ == "__main__":
    main()
