"""``decoding.shape=auto``, beside the model (:mod:`vsd.decoding.shape`): measure (or load) this device's costs and the draft's acceptance,
then pick the tree shape with the best predicted bound (the model itself: :mod:`vsd.decoding.shape`).

Measurement (well under a minute on a 2-core CPU for the default draft):
- acceptance: speculative decoding of ``decoding.shape_prompts`` first turns of the packaged **val** split
  (disjoint from the test prompts the eval reports on; also for ``eval=file``), ``decoding.shape_max_new``
  tokens each, with a generous tree (depth ``shape_max_depth``, top-k ``shape_max_top_k``,
  ``shape_max_nodes`` nodes) at the configured temperature; the per (depth, rank) counts of every run are
  summed into an :class:`~vsd.decoding.shape.AcceptanceTable`;
- costs: :func:`measure_shape_costs` on the first of those prompts (through the engine's target runner and the
  drafter's own draft runners).

Both are cached as JSON in ``<paths.cache_dir>/shapes/``, keyed by the device (CPU model or GPU name and the
torch thread count), the target (name, dtype), the draft (sha256 of its weights, decoding dtype), the capture
mode, the sampling settings and the measuring settings. ``decoding.shape_remeasure=true`` measures again. The
choice is recomputed from the cached measurement every time (cheap), so the search limits can change freely.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vsd.config.schema import DecodingConfig, EvalConfig
from vsd.decoding.drafter import DraftTree
from vsd.decoding.shape import (
    TOP_KS,
    AcceptanceTable,
    CostProfile,
    Shape,
    candidate_shapes,
    choose_shape,
    describe,
)
from vsd.decoding.target_runner import make_runner
from vsd.decoding.tree import TreeShape
from vsd.runtime import synchronize

CACHE_VERSION = 2  # bump when the engine's costs or the measurement change (stale caches are then ignored)
VERIFY_NODES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # tree sizes c_verify is measured at for shape=auto


def verify_tree_size(dcfg: DecodingConfig) -> int:
    """Draft nodes verified per step at the configured size (root excluded)."""
    return TreeShape.of(dcfg).nodes


def representative_tree(dcfg: DecodingConfig, vocab_size: int, n: int | None = None):
    """A DraftTree of the configured size (or ``n`` nodes) and shape class: a chain, or ``top_k`` branches
    (4D-mask path)."""
    n = verify_tree_size(dcfg) if n is None else n
    tokens = torch.arange(n, dtype=torch.long) % vocab_size
    shape = TreeShape.of(dcfg)
    if shape.top_k == 1:
        return DraftTree.chain(tokens.tolist())
    k = min(shape.top_k, n)
    parents = torch.tensor([i - k if i >= k else -1 for i in range(n)], dtype=torch.long)
    return DraftTree(tokens, parents)


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
    over ``repeats``, in units of the 1-token step's median. Needs a model drafter: its ``draft_runner`` and
    the runner's ``timed_draft`` (vsd.decoding.draft_runner).
    """
    import dataclasses

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
        draft_runs[k] = drafter.draft_runner(list(prompt_ids), feats, probe)
    commit_rows = min(commit_rows, len(prompt_ids))
    tail = feats[-commit_rows:]
    ids = [int(t) for t in prompt_ids[-commit_rows + 1 :]] + [root]

    def step(tree) -> None:
        rows = 1 if tree is None else tree.size + 1
        runner.step(root, tree, False, rows=rows)
        runner.keep([])

    def draft(k: int) -> list[float]:
        return draft_runs[k].timed_draft(tail, ids, max_depth, k, lambda fn: _timed(fn, dev))

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


def device_name(device: torch.device) -> str:
    """The accelerator's name, or the CPU model (``/proc/cpuinfo``), for cache keys and reports."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer (name, dtype, shape, bytes): identifies a draft's weights."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def generous(dcfg: DecodingConfig) -> DecodingConfig:
    """The measuring tree: the largest candidate in every direction."""
    chain = dcfg.mode == "chain"
    return dataclasses.replace(
        dcfg,
        depth=dcfg.shape_max_depth,
        top_k=1 if chain else dcfg.shape_max_top_k,
        total_tokens=dcfg.shape_max_depth if chain else dcfg.shape_max_nodes,
        max_new_tokens=dcfg.shape_max_new,
        shape="fixed",
    )


def cache_key(target, drafter, dcfg: DecodingConfig) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "device": device_name(target.device),
        "threads": torch.get_num_threads(),
        "target": target.name,
        "target_dtype": str(target.dtype),
        **({"target_kernel": target.kernel} if target.kernel != "dense" else {}),  # dense: earlier keys hold
        "draft": weights_hash(drafter.head),
        "draft_dtype": dcfg.draft_dtype,
        "capture": dcfg.capture,
        "mode": dcfg.mode,
        "temperature": dcfg.temperature,
        "top_p": dcfg.top_p,
        "target_top_k": dcfg.target_top_k,
        "max_depth": dcfg.shape_max_depth,
        "max_top_k": dcfg.shape_max_top_k,
        "max_nodes": dcfg.shape_max_nodes,
        "prompts": dcfg.shape_prompts,
        "max_new": dcfg.shape_max_new,
    }


def measure_prompts(target, n: int) -> list[list[int]]:
    """Chat-template ids of the first turns of ``n`` packaged val prompts, spread over the categories."""
    from vsd.data.eval_prompts import load_suite

    ecfg = EvalConfig(suite="specbench_style", split="val", per_category=max(1, math.ceil(n / 5)))
    records = load_suite(ecfg)
    # round-robin over categories, so a small n still sees every kind of text
    by_cat: dict[str, list[dict]] = {}
    for r in records:
        by_cat.setdefault(r["category"], []).append(r)
    order = [r for group in zip(*by_cat.values(), strict=False) for r in group]
    order += [r for r in records if r not in order]
    return [target.chat_ids([{"role": "user", "content": r["turns"][0]}]) for r in order[:n]]


@torch.no_grad()
def measure(target, drafter, dcfg: DecodingConfig, seed: int = 0) -> tuple[AcceptanceTable, CostProfile]:
    """Acceptance on val prompts with the measuring tree, and this device's costs (see the module docstring)."""
    from vsd.decoding.engine import generate_spec

    gcfg = generous(dcfg)
    prompts = measure_prompts(target, dcfg.shape_prompts)
    parts = []
    for i, ids in enumerate(prompts):
        g = torch.Generator(device=target.device).manual_seed(seed + i)
        parts.append(generate_spec(target, drafter, ids, gcfg, generator=g).rank_counts)
    table = AcceptanceTable.from_counts(parts)
    ks = [1] if dcfg.mode == "chain" else [k for k in TOP_KS if k <= dcfg.shape_max_top_k]
    nodes = sorted({n for n in VERIFY_NODES if n <= dcfg.shape_max_nodes} | {dcfg.shape_max_nodes})
    costs = measure_shape_costs(target, drafter, prompts[0], dcfg, dcfg.shape_max_depth, ks, nodes)
    return table, costs


def cache_path(target, drafter, dcfg: DecodingConfig, cache_dir: str | Path | None) -> Path | None:
    """Where the measurement for this device, target, draft and settings is cached (None: no cache dir)."""
    if not cache_dir:
        return None
    digest = hashlib.sha256(json.dumps(cache_key(target, drafter, dcfg), sort_keys=True).encode()).hexdigest()
    return Path(cache_dir).expanduser() / "shapes" / f"{digest[:16]}.json"


def load_or_measure(
    target, drafter, dcfg: DecodingConfig, cache_dir: str | Path | None, log=print
) -> tuple[AcceptanceTable, CostProfile, float, Path | None]:
    """The cached measurement, or a new one (then cached): (acceptance, costs, seconds it took, cache file)."""
    path = cache_path(target, drafter, dcfg, cache_dir)
    if path is not None and path.exists() and not dcfg.shape_remeasure:
        try:
            data = json.loads(path.read_text())
            table = AcceptanceTable.from_json(data["acceptance"])
            return table, CostProfile.from_json(data["costs"]), float(data["measure_s"]), path
        except (ValueError, KeyError, TypeError):
            log(f"[vsd] decoding.shape=auto: unreadable cache {path}; measuring again")
    log("[vsd] decoding.shape=auto: measuring costs and acceptance on val prompts ...")
    t0 = time.perf_counter()
    table, costs = measure(target, drafter, dcfg)
    seconds = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        record = {
            "key": cache_key(target, drafter, dcfg),
            "acceptance": table.to_json(),
            "costs": costs.to_json(),
            "measure_s": seconds,
        }
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
    return table, costs, seconds, path


def auto_candidates(dcfg: DecodingConfig) -> list[Shape]:
    return candidate_shapes(
        dcfg.shape_max_depth, dcfg.shape_max_top_k, dcfg.shape_max_nodes, chain_only=dcfg.mode == "chain"
    )


@dataclass(frozen=True)
class ShapeChoice:
    """``decoding.shape`` resolved once: the tree ``shape`` the speculative run drafts and its ``report`` (what
    run.json records under ``shape`` and the ``eval/shape_*`` metrics read). The HF peers keep the configured
    settings (their knobs, e.g. prompt lookup's depth, are not this drafter's tree)."""

    shape: TreeShape
    report: dict[str, Any]

    def decoding(self, dcfg: DecodingConfig) -> DecodingConfig:
        """The speculative run's settings: ``dcfg`` itself for a fixed shape, else ``dcfg`` drafting the chosen
        one."""
        return self.shape.config(dcfg) if self.report["mode"] == "auto" else dcfg


def resolve_shape(
    target, drafter, dcfg: DecodingConfig, cache_dir: str | Path | None, log=print
) -> ShapeChoice:
    """``decoding.shape=fixed``: the configured shape, reported as such. ``auto``: the measured best, reported
    with its predicted tau and bound and the measurement. A drafter without a draft model keeps the configured
    shape."""
    fixed = {"mode": "fixed", "depth": dcfg.depth, "top_k": dcfg.top_k, "nodes": dcfg.total_tokens}
    if dcfg.shape == "fixed":
        return ShapeChoice(TreeShape.of(dcfg), fixed)
    if getattr(drafter, "head", None) is None:
        log(f"[vsd] decoding.shape=auto needs a model drafter; {dcfg.drafter} keeps the configured shape")
        return ShapeChoice(
            TreeShape.of(dcfg), {**fixed, "auto_skipped": f"drafter {dcfg.drafter} has no draft model"}
        )
    drafter = getattr(drafter, "inner", drafter)  # measure the model's own trees, without a lookup branch
    table, costs, seconds, path = load_or_measure(target, drafter, dcfg, cache_dir, log)
    best, _ = choose_shape(table, costs, dcfg.temperature, auto_candidates(dcfg))
    log(f"[vsd] decoding.shape=auto: {describe(best)} (measured in {seconds:.0f} s; cache {path})")
    report = {
        "mode": "auto",
        "depth": best.depth,
        "top_k": best.top_k,
        "nodes": best.total,
        "pred_tau": best.pred_tau,
        "pred_bound": best.pred_bound,
        "pred_cost": best.cost,
        "measure_s": seconds,
        "cache": str(path) if path else None,
        "key": cache_key(target, drafter, dcfg),
    }
    return ShapeChoice(TreeShape.of(best.tree.config(dcfg)), report)
