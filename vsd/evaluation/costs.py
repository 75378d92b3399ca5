"""The cost model of speculative decoding, measured on this machine after warm-up.

Time per verification step, in units of one plain-AR target forward (appending 1 token, time t1):
    c_verify = t(target forward over [root + N draft nodes] on the KV cache) / t1, N = the configured tree size
    D * c_draft = (drafter time per verification step) / t1, D = decoding.depth
so the speedup over AR can be at most  bound = tau / (c_verify + D * c_draft)  (AR costs 1 per token and
everything else, e.g. sampling and bookkeeping, is extra). The ratio speedup / bound is the engine's
efficiency. c_verify is measured with the engine's own verification forward; the drafter time comes from the
timed (post-warm-up) eval generations themselves (``draft_s`` = time in propose + commit, any drafter).

:func:`measure_shape_costs` measures the curves ``decoding.shape=auto`` needs: c_verify(n) over a range of tree
sizes and the draft's cost per call (commit, each tree level per width), through the same runners.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from vsd.config.schema import DecodingConfig
from vsd.runtime import synchronize


def _median_time(fn: Callable[[], None], device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def measure_forward_costs(
    target, prompt_ids: list[int], dcfg: DecodingConfig, repeats: int = 20, warmup: int = 3
) -> dict[str, float]:
    """t1 (1-token append) and t_verify (the verification forward of the configured tree), both on top of a
    KV cache holding ``prompt_ids``; each timed step is rolled back off the cache (``keep([])``).

    Both go through the decoding runner (``make_runner``), so under ``decoding.capture=cuda_graph`` they are
    graph replays like the decode loop's steps (an eager t1 would make the bound compare against a slower AR).
    Returns ``{"t1_s", "t_verify_s", "c_verify", "verify_tokens"}`` (verify_tokens = N + 1, root included).
    """
    from vsd.decoding.shape_measure import representative_tree
    from vsd.decoding.target_runner import make_runner

    dev = target.device
    runner = make_runner(target, dcfg)
    runner.prefill(list(prompt_ids), False)
    tree = representative_tree(dcfg, target.vocab_size)
    root = int(prompt_ids[-1])

    def step1() -> None:
        runner.step(root, None, False, rows=1)
        runner.keep([])

    def stepn() -> None:
        runner.step(root, tree, False, rows=tree.size + 1)
        runner.keep([])

    for _ in range(warmup):
        step1()
        stepn()
    # Interleaved, so a transient load on a shared machine hits both sides of the ratio alike.
    t1s, tns = [], []
    for _ in range(repeats):
        t1s.append(_median_time(step1, dev, 1))
        tns.append(_median_time(stepn, dev, 1))
    t1, tn = statistics.median(t1s), statistics.median(tns)
    return {"t1_s": t1, "t_verify_s": tn, "c_verify": tn / t1, "verify_tokens": float(tree.size + 1)}


def cost_metrics(
    forward_costs: Mapping[str, float], rows: list[Mapping[str, Any]], dcfg: DecodingConfig, tau: float
) -> dict[str, float]:
    """``eval/c_verify``, ``eval/c_draft``, ``eval/speedup_bound`` from measured forward costs and the
    drafter time per verification step in the timed rows."""
    steps = sum(len(r["spec"]["accepted"]) for r in rows)
    draft_s = sum(float(r["spec"]["draft_s"]) for r in rows)
    t1 = forward_costs["t1_s"]
    per_step = draft_s / steps if steps else 0.0
    c_draft = per_step / (dcfg.depth * t1)
    c_verify = forward_costs["c_verify"]
    return {
        "eval/c_verify": c_verify,
        "eval/c_draft": c_draft,
        "eval/speedup_bound": tau / (c_verify + dcfg.depth * c_draft),
        "eval/t1_ms": 1000 * t1,
        "eval/verify_tokens": forward_costs["verify_tokens"],
    }
