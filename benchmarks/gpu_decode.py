"""GPU decoding benchmark: plain AR and speculative decoding, eager vs captured (CUDA graphs), one process.

    python benchmarks/gpu_decode.py --prompts PROMPTS.jsonl [--draft DRAFT_DIR] [--n 10] [--max-new 128]

Prompts: a user prompt file ({"id", "category"?, "turns": [...]}; turn 1 of each is used), e.g. MT-Bench
written out by ``python benchmarks/gpu_decode.py --write-mtbench FILE`` on a machine with the package.
Rows: AR eager, AR graphed, n-gram chain (eager/graphed) and, with ``--draft``, the EAGLE-3 draft in tree mode:
all eager, target graphed with the draft eager (``eagle3_tree_graph_target``), both graphed per call with host
work between the graphs (``eagle3_tree_graph``, ``decoding.captured_step=false``) and the whole step captured
(``eagle3_tree_step``: two graphs, one host read, vsd/decoding/captured_step.py); plus a graphed chain
(captured), larger trees (``--trees``, per-call and captured), the shape ``decoding.shape=auto`` picks from this
device's measured costs (``--auto-shape``), every graphed row with the draft head in bf16 (``--bf16-draft``),
and the tree with the default T=0 config's lookup branch (``eagle3_branch_eager``/``_graph``,
``decoding.ngram_branch=5``, which the captured step does not serve: its graphed row is the per-call path).
A last table pairs each per-call graphed row with the captured step of the same shape (ms per token; issue 29's
question whether the per-call graph path still earns its place).
``--temperatures 0 1`` repeats the AR-graphed and EAGLE-3 rows at each temperature (suffix ``_t1``; every row
records its ``temperature``; T>0 draws from one seeded generator per prompt). The lookup branch is off
(``decoding.ngram_branch=0``) except in the ``eagle3_branch_*`` rows. Every method decodes the same prompt ids
after a warm-up; tokens/s counts new token ids; timers synchronise the device; a step's time splits into draft,
verify (target step and acceptance; CUDA events around the graphs) and the rest (host, and gaps the device
waits for it). T=0 output ids are compared with eager and graphed AR (bf16: divergences at near-ties are
expected, see docs/eval.md; fp32 with ``--overrides dtype=float32``). Prints a Markdown table and
writes JSON next to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch


def write_mtbench(path: str) -> None:
    from vsd.data.eval_prompts import load_mtbench, split_of

    rows = [r for r in load_mtbench() if split_of(r["id"]) == "test"]
    with open(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps({"id": r["id"], "category": r["category"], "turns": list(r["turns"])}) + "\n")
    print(f"wrote {len(rows)} MT-Bench test-split prompts to {path}")


def write_suite(path: str, per_category: int) -> None:
    """The eval's 6-category suite (test split, ``per_category`` prompts each, seed 0) as a prompt file."""
    from vsd.config.schema import EvalConfig
    from vsd.data.eval_prompts import load_suite

    rows = load_suite(EvalConfig(per_category=per_category))
    with open(path, "w") as fh:
        for r in rows:
            fh.write(json.dumps({"id": r["id"], "category": r["category"], "turns": list(r["turns"])}) + "\n")
    print(f"wrote {len(rows)} suite prompts (6 categories, test split) to {path}")


def _tree_spec(text: str) -> tuple[int, int, int]:
    """``--trees`` item DEPTH,TOP_K,TOTAL_TOKENS -> ints; anything else is argparse's one-line error."""
    try:
        d, k, n = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected DEPTH,TOP_K,TOTAL_TOKENS, e.g. 6,10,60"
        ) from None
    if min(d, k, n) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every number must be >= 1")
    return d, k, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts")
    ap.add_argument("--write-mtbench")
    ap.add_argument("--write-suite", help="write the 6-category test suite to this prompt file and exit")
    ap.add_argument("--per-category", type=int, default=4, help="--write-suite: prompts per category")
    ap.add_argument("--temperatures", nargs="*", type=float, default=[0.0])
    ap.add_argument(
        "--auto-shape",
        action="store_true",
        help="add eagle3_tree_step_auto: the shape decoding.shape=auto picks",
    )
    ap.add_argument("--draft", default=None)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="gpu_decode.json")
    ap.add_argument("--overrides", nargs="*", default=[])
    ap.add_argument("--methods", nargs="*", default=None, help="subset of rows (ar_eager is always run)")
    ap.add_argument(
        "--trees",
        nargs="*",
        default=[],
        type=_tree_spec,
        help="extra graphed EAGLE-3 tree rows, each DEPTH,TOP_K,TOTAL_TOKENS (e.g. 6,10,60)",
    )
    ap.add_argument(
        "--bf16-draft",
        action="store_true",
        help="beside every graphed EAGLE-3 row, the same row with decoding.draft_dtype=bfloat16 (suffix _bf16)",
    )
    ap.add_argument(
        "--graph-times",
        action="store_true",
        help="after the rows: the GPU time of every captured graph, and per graphed EAGLE-3 tree row the speedup "
        "those times allow (no host work at all)",
    )
    ap.add_argument(
        "--profile", default=None, help="a row name: print its host-side profile (cProfile, tottime)"
    )
    args = ap.parse_args()
    if args.write_mtbench:
        write_mtbench(args.write_mtbench)
        return
    if args.write_suite:
        write_suite(args.write_suite, args.per_category)
        return

    from vsd.config import compose
    from vsd.data.eval_prompts import load_prompt_file
    from vsd.decoding.engine import generate_ar, generate_spec
    from vsd.decoding.ngram import NgramDrafter
    from vsd.models.target import load_target

    _, cfg = compose([f"device={args.device}", *args.overrides])[0]
    t0 = time.time()
    target = load_target(cfg.model, cfg.paths.cache_dir, args.device, cfg.dtype)
    print(f"target loaded in {time.time() - t0:.1f}s on {target.device} ({target.dtype})", flush=True)
    prompts = [
        target.chat_ids([{"role": "user", "content": r["turns"][0]}]) for r in load_prompt_file(args.prompts)
    ]
    prompts = prompts[: args.n]

    base = dataclasses.replace(
        cfg.decoding, temperature=0.0, max_new_tokens=args.max_new, ngram_branch=0, shape="fixed"
    )
    chain = dataclasses.replace(base, mode="chain", depth=5, total_tokens=5)
    graphed = dataclasses.replace(base, capture="cuda_graph")
    methods: list[tuple[str, object, object]] = [
        ("ar_eager", None, dataclasses.replace(base, capture="none")),
        ("ar_graph", None, graphed),
        ("ngram_eager", "ngram", dataclasses.replace(chain, capture="none")),
        ("ngram_graph", "ngram", dataclasses.replace(chain, capture="cuda_graph")),
    ]
    drafter_eagle = None
    shapes: dict[str, dict] = {}
    if args.draft:
        from vsd.decoding.eagle import load_draft
        from vsd.decoding.lookup_branch import LookupBranchDrafter

        drafter_eagle = load_draft(args.draft, target)
        per_call = dataclasses.replace(graphed, captured_step=False)
        methods += [
            ("eagle3_tree_eager", "eagle3", dataclasses.replace(base, capture="none")),
            ("eagle3_tree_graph_target", "eagle3_eager_draft", per_call),
            ("eagle3_tree_graph", "eagle3", per_call),
            ("eagle3_tree_step", "eagle3", graphed),
            ("eagle3_chain_graph", "eagle3", dataclasses.replace(chain, capture="cuda_graph")),
            # the default T=0 config's lookup branch (conf/decoding/tree.yaml: ngram_branch=5) has no captured
            # step: its graphed row is the per-call path, the eager row what removing that path would leave
            (
                "eagle3_branch_eager",
                "eagle3_branch",
                dataclasses.replace(base, capture="none", ngram_branch=5),
            ),
            ("eagle3_branch_graph", "eagle3_branch", dataclasses.replace(per_call, ngram_branch=5)),
        ]
        for d, k, n in args.trees:
            tree = dataclasses.replace(graphed, depth=d, top_k=k, total_tokens=n)
            methods.append(
                (f"eagle3_tree_graph_d{d}k{k}n{n}", "eagle3", dataclasses.replace(tree, captured_step=False))
            )
            methods.append((f"eagle3_tree_step_d{d}k{k}n{n}", "eagle3", tree))
        if args.bf16_draft:
            methods += [
                (f"{name}_bf16", kind, dataclasses.replace(dcfg, draft_dtype="bfloat16"))
                for name, kind, dcfg in methods
                if kind == "eagle3" and dcfg.capture == "cuda_graph"
            ]
    if args.methods:
        methods = [m for m in methods if m[0] == "ar_eager" or m[0] in args.methods]
    # other temperatures: the graphed AR row and every EAGLE-3 row again, named with the temperature
    rows = []
    for t in args.temperatures:
        for name, kind, dcfg in methods:
            if t == 0:
                rows.append((name, kind, dcfg))
            elif name == "ar_graph" or kind == "eagle3":
                rows.append((f"{name}_t{t:g}", kind, dataclasses.replace(dcfg, temperature=t)))
    if args.auto_shape and drafter_eagle is not None:
        from vsd.decoding.shape_measure import resolve_shape

        dt = "bfloat16" if args.bf16_draft else graphed.draft_dtype
        for t in args.temperatures:
            want = dataclasses.replace(graphed, shape="auto", temperature=t, draft_dtype=dt)
            choice = resolve_shape(target, drafter_eagle, want, None)
            name = "eagle3_tree_step_auto" + ("" if t == 0 else f"_t{t:g}")
            rows.append((name, "eagle3", dataclasses.replace(choice.decoding(want), shape="fixed")))
            shapes[name] = choice.report
    methods = rows

    class EagerDraft:
        """The EAGLE drafter with its head run eagerly while the engine graphs the target."""

        name, needs_features = "eagle3", True

        def reset(self, ids, feats):
            drafter_eagle.reset(ids, feats)

        def propose(self, root, dcfg, generator):
            return drafter_eagle.propose(root, dataclasses.replace(dcfg, capture="none"), generator)

        def commit(self, acc, feats):
            drafter_eagle.commit(acc, feats)

        def extra_nodes(self, dcfg):
            return 0

        def captured_step(self, runner, dcfg):
            return None  # the per-call path: the head eager, the target graphed

    def run(kind, dcfg, ids, seed=0):
        gen = None
        if dcfg.temperature > 0:
            gen = torch.Generator(device=target.device).manual_seed(seed)
        if kind is None:
            return generate_ar(target, ids, dcfg, generator=gen)
        drafter = {
            "ngram": lambda: NgramDrafter(target.vocab_size),
            "eagle3": lambda: drafter_eagle,
            "eagle3_eager_draft": EagerDraft,
            "eagle3_branch": lambda: LookupBranchDrafter(drafter_eagle, target.vocab_size),
        }[kind]()
        return generate_spec(target, drafter, ids, dcfg, generator=gen)

    results: dict[str, dict] = {}
    ref: list[list[int]] = []
    ref_graph: list[list[int]] = []
    for name, kind, dcfg in methods:
        for ids in prompts[:2]:  # warm-up: allocator, cuBLAS, graph capture
            run(kind, dcfg, ids)
        toks = fwd = 0
        secs = draft_s = verify_s = 0.0
        match = match_graph = 0
        outs = []
        prof = None
        if name == args.profile:
            import cProfile

            prof = cProfile.Profile()
            prof.enable()
        for i, ids in enumerate(prompts):
            r = run(kind, dcfg, ids, seed=i)
            toks += len(r.tokens)
            fwd += r.target_forwards
            secs += r.wall_s
            draft_s += r.draft_s
            verify_s += r.verify_s
            outs.append(r.tokens)
            if name == "ar_eager":
                ref.append(r.tokens)
            if name == "ar_graph":
                ref_graph.append(r.tokens)
            match += int(r.tokens == ref[i])
            match_graph += int(bool(ref_graph) and r.tokens == ref_graph[i])
        if prof is not None:  # host work is what a graphed step of a small model is left with
            import pstats

            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        steps = max(fwd - len(prompts), 1)  # target forwards after the prefill
        results[name] = {
            "temperature": dcfg.temperature,
            "shape": shapes.get(name, {"depth": dcfg.depth, "top_k": dcfg.top_k, "nodes": dcfg.total_tokens})
            if kind is not None and kind != "ngram"
            else None,
            "captured_step": bool(
                dcfg.captured_step
                and kind == "eagle3"
                and dcfg.capture == "cuda_graph"
                and target.device.type == "cuda"
            ),
            "new_tokens": toks,
            "target_forwards": fwd,
            "seconds": round(secs, 4),
            "tokens_per_s": toks / secs,
            "tau": toks / fwd,
            "ms_per_step": 1000 * secs / steps,
            "draft_ms_per_step": 1000 * draft_s / steps,
            "verify_ms_per_step": 1000 * verify_s / steps,
            "match_ar_eager": f"{match}/{len(prompts)}" if dcfg.temperature == 0 else "-",
            "match_ar_graph": f"{match_graph}/{len(prompts)}" if dcfg.temperature == 0 and ref_graph else "-",
        }
        print(name, json.dumps(results[name]), flush=True)
    ar_e = results["ar_eager"]["tokens_per_s"]

    def ar_graph_at(t: float) -> float:
        key = "ar_graph" if t == 0 else f"ar_graph_t{t:g}"
        return results.get(key, results.get("ar_graph", results["ar_eager"]))["tokens_per_s"]

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor()
    lines = [
        f"device: {device}; torch {torch.__version__}; {len(prompts)} prompts of {args.prompts}, "
        f"max_new_tokens={args.max_new}; command: python {' '.join(sys.argv)}",
        "",
        "| method | T | shape d×k×n | tau | tokens/s | ms/step | draft | verify | host | vs AR eager "
        "| vs AR graphed (same T) | T=0 ids = AR eager / graphed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        sh = r["shape"] or {"depth": "-", "top_k": "-", "nodes": "-"}
        host = r["ms_per_step"] - r["draft_ms_per_step"] - r["verify_ms_per_step"]
        lines.append(
            f"| {name} | {r['temperature']:g} | {sh['depth']}×{sh['top_k']}×{sh['nodes']} | {r['tau']:.2f} | "
            f"{r['tokens_per_s']:.1f} | {r['ms_per_step']:.2f} | {r['draft_ms_per_step']:.2f} | "
            f"{r['verify_ms_per_step']:.2f} | {host:.2f} | {r['tokens_per_s'] / ar_e:.2f}x | "
            f"{r['tokens_per_s'] / ar_graph_at(r['temperature']):.2f}x | {r['match_ar_eager']} / "
            f"{r['match_ar_graph']} |"
        )
    lines += ["", *per_call_vs_captured(results)]
    graphs: dict[str, float] = {}
    if args.graph_times and torch.cuda.is_available():
        graphs = graph_times(target, drafter_eagle)
        lines += ["", "| captured graph | GPU ms per replay |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in graphs.items()]
        lines += [
            "",
            "| row | tau | GPU-time ceiling vs AR graphed: tau x t(1 row) / (t(tree rows) + t(draft)); "
            "captured step: tau x t(1 row) / (t(step draft) + t(step verify)) |",
        ]
        lines += ["|---|---|---|"]
        t1 = graphs.get("target 1 rows")
        for name, kind, dcfg in methods:
            dt = str(dcfg.draft_dtype)
            if dt == "target":
                dt = str(target.dtype).replace("torch.", "")
            key_t = f"target {dcfg.total_tokens + 1} rows + features"
            key_c = f"draft commit {dcfg.depth + 1} rows {dt}"
            key_g = f"draft tree d{dcfg.depth} k{dcfg.top_k} n{dcfg.total_tokens} {dt}"
            tag = f"d{dcfg.depth} k{dcfg.top_k} n{dcfg.total_tokens} T={dcfg.temperature:g} {dt}"
            if kind != "eagle3" or dcfg.mode != "tree" or name not in results or not t1:
                continue
            tau = results[name]["tau"]
            if results[name]["captured_step"] and f"step draft {tag}" in graphs:
                cost = graphs[f"step draft {tag}"] + graphs[f"step verify {tag}"]
            elif not results[name]["captured_step"] and key_g in graphs and dcfg.temperature == 0:
                cost = graphs[key_t] + graphs.get(key_c, 0.0) + graphs[key_g]
            else:
                continue
            lines.append(f"| {name} | {tau:.2f} | {tau * t1 / cost:.2f}x |")
    table = "\n".join(lines)
    print(table)
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    Path(args.out).write_text(
        json.dumps({"results": results, "graph_ms": graphs, "table": table, "peak_mem_mb": peak}, indent=1)
    )


def per_call_vs_captured(results: dict[str, dict]) -> list[str]:
    """Markdown rows pairing each per-call graphed EAGLE-3 row (``eagle3_tree_graph*``: the target and draft
    graphs with host work between them) with the captured step of the same shape, temperature and draft dtype
    (``eagle3_tree_step*``): ms per new token of each, and the per-call path's time over the captured step's.
    The question it answers (issue 29): does the per-call graph path still earn its place next to the captured
    step?"""
    out = [
        "| shape row | per-call graphs ms/token | captured step ms/token | per-call / captured "
        "| tau per-call / captured | T=0 ids = AR eager (per-call, captured) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if not name.startswith("eagle3_tree_graph") or name.startswith("eagle3_tree_graph_target"):
            continue
        other = results.get(name.replace("eagle3_tree_graph", "eagle3_tree_step", 1))
        if other is None:
            continue
        a = 1000 * r["seconds"] / max(r["new_tokens"], 1)
        b = 1000 * other["seconds"] / max(other["new_tokens"], 1)
        out.append(
            f"| {name.replace('eagle3_tree_graph', 'eagle3_tree', 1)} | {a:.3f} | {b:.3f} | {a / b:.2f}x | "
            f"{r['tau']:.2f} / {other['tau']:.2f} | {r['match_ar_eager']}, {other['match_ar_eager']} |"
        )
    return out if len(out) > 2 else []


def graph_times(target, drafter, replays: int = 200) -> dict[str, float]:
    """GPU time (ms per replay, CUDA events over ``replays`` back-to-back replays) of every graph the rows
    captured: the target's step shapes and each draft runner's commit and tree graphs. Run after the rows: the
    replays overwrite the runners' buffers, which the next generation resets anyway."""

    def timed(g) -> float:
        for _ in range(5):
            g.replay()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        a.record()
        for _ in range(replays):
            g.replay()
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) / replays

    out: dict[str, float] = {}
    for runner in target.__dict__.get("_graph_runners", {}).values():
        for (rows, feats), s in sorted(runner._shapes.items()):
            if s.graph is not None:
                out[f"target {rows} rows" + (" + features" if feats else "")] = timed(s.graph)
    for r in drafter._runners.values() if drafter is not None else []:
        dt = str(getattr(r, "dtype", "")).replace("torch.", "")
        for (kind, n), s in sorted(getattr(r, "_steps", {}).items()):
            if s.graph is not None:
                out[f"draft {kind} {n} rows {dt}"] = timed(s.graph)
        for (d, k, n), g in sorted(getattr(r, "_grows", {}).items()):
            if g.graph is not None:
                out[f"draft tree d{d} k{k} n{n} {dt}"] = timed(g.graph)
    for step in drafter._steps.values() if drafter is not None else []:
        if step.g_draft is None:
            continue
        dt = str(step.dr.dtype).replace("torch.", "")
        tag = f"d{step.depth} k{step.k} n{step.total} T={step.dcfg.temperature:g} {dt}"
        # a replay advances the committed lengths: wind them back before each one (outside the timed span)
        saved = step.length.clone(), step.draft_length.clone()
        for label, g in (("step draft", step.g_draft), ("step verify", step.g_verify)):
            total = 0.0
            for _ in range(replays // 4):
                step.length.copy_(saved[0])
                step.draft_length.copy_(saved[1])
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                g.replay()
                b.record()
                b.synchronize()
                total += a.elapsed_time(b)
            out[f"{label} {tag}"] = total / (replays // 4)
    return out


if __name__ == "__main__":
    main()
