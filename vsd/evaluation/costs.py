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

VERIFY_NODES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # tree sizes c_verify is measured at for shape=auto


def verify_tree_size(dcfg: DecodingConfig) -> int:
    """Draft nodes verified per step at the configured size (root excluded)."""
    from vsd.decoding.tree import TreeShape

    return TreeShape.of(dcfg).nodes


def representative_tree(dcfg: DecodingConfig, vocab_size: int, n: int | None = None):
    """A DraftTree of the configured size (or ``n`` nodes) and shape class: a chain, or ``top_k`` branches
    (4D-mask path)."""
    from vsd.decoding.drafter import DraftTree

    n = verify_tree_size(dcfg) if n is None else n
    tokens = torch.arange(n, dtype=torch.long) % vocab_size
    from vsd.decoding.tree import TreeShape

    shape = TreeShape.of(dcfg)
    if shape.top_k == 1:
        return DraftTree.chain(tokens.tolist())
    k = min(shape.top_k, n)
    parents = torch.tensor([i - k if i >= k else -1 for i in range(n)], dtype=torch.long)
    return DraftTree(tokens, parents)


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
    from vsd.decoding.runner import make_runner

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


def _timed(fn: Callable[[], Any], device) -> tuple[float, Any]:
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


@torch.no_grad()
def measure_shape_costs(
    target,
    drafter,
    prompt_ids: list[int],
    dcfg: DecodingConfig,
    max_depth: int,
    top_ks: list[int],
    nodes: list[int],
    repeats: int = 5,
    commit_rows: int = 3,
):
    """The :class:`vsd.decoding.shape.CostProfile` of this device for ``decoding.shape=auto``, on top of the
    KV caches of ``prompt_ids``, through the engine's own target runner and the drafter's own draft runners.

    Per repeat, interleaved: a 1-token target step and a verify step over root + n nodes for every n in
    ``nodes``; then for every k in ``top_ks``, right after a target step (as in decoding, where the target's
    weights have just streamed through the caches): the draft's commit of ``commit_rows`` entries and
    ``max_depth - 1`` tree levels of k rows, each call timed. Every step is rolled back afterwards. Medians
    over ``repeats``, in units of the 1-token step's median. Needs an :class:`EagleDrafter`-like drafter
    (``runner`` with ``commit`` / ``expand_level`` / ``rewind``).
    """
    import dataclasses

    from vsd.decoding.runner import make_runner
    from vsd.decoding.shape import CostProfile
    from vsd.decoding.tree import grow_greedy

    dev = target.device
    runner = make_runner(target, dcfg)
    out = runner.prefill(list(prompt_ids), True)
    feats = out.features[0]
    root = int(prompt_ids[-1])
    trees = {n: representative_tree(dcfg, target.vocab_size, n) for n in nodes}
    draft_runs = {}
    for k in top_ks:  # one draft runner per width, as decoding builds them; the prompt committed once
        probe = dataclasses.replace(
            dcfg, mode="tree", depth=max_depth, top_k=k, total_tokens=k, temperature=0.0
        )
        drafter.reset(list(prompt_ids), feats)
        drafter.propose(root, probe)
        draft_runs[k] = drafter.runner
    commit_rows = min(commit_rows, len(prompt_ids))
    tail = feats[-commit_rows:]
    ids = [int(t) for t in prompt_ids[-commit_rows + 1 :]] + [root]

    def step(tree) -> None:
        rows = 1 if tree is None else tree.size + 1
        runner.step(root, tree, False, rows=rows)
        runner.keep([])

    def draft(k: int) -> list[float]:
        run, times = draft_runs[k], []
        start = run.length
        t, logp = _timed(lambda: run.commit(tail, ids), dev)
        times.append(t)

        def expand(idx, d, pool):
            t, lp = _timed(lambda: run.expand_level(idx, d, pool), dev)
            times.append(t)
            return lp

        grow_greedy(logp, expand, max_depth, k, k, run.token_map)
        run.rewind(start)
        return times

    step(None)  # warm-up: every shape once
    for n in nodes:
        step(trees[n])
    for k in top_ks:
        draft(k)
    t1s: list[float] = []
    tv: dict[int, list[float]] = {n: [] for n in nodes}
    td: dict[int, list[list[float]]] = {k: [] for k in top_ks}
    for _ in range(repeats):
        for n in nodes:
            t1s.append(_timed(lambda: step(None), dev)[0])
            tv[n].append(_timed(lambda n=n: step(trees[n]), dev)[0])
        for k in top_ks:
            step(None)
            td[k].append(draft(k))
    t1 = statistics.median(t1s)
    commit = statistics.median(t[0] for k in top_ks for t in td[k])
    levels = {k: [statistics.median(t[d] for t in td[k]) / t1 for d in range(1, max_depth)] for k in top_ks}
    return CostProfile(
        t1_s=t1,
        verify_nodes=list(nodes),
        c_verify=[statistics.median(tv[n]) / t1 for n in nodes],
        c_commit=commit / t1,
        c_level=levels,
    )
