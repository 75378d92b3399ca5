"""Benchmark: tau, speedup, HF prompt lookup's speedup, bound and efficiency per draft-tree shape.

For one draft, on the default eval prompts (``eval=specbench_style``, test split, first turns) and on a user
prompt file (``eval=file``; ``writingbench`` builds one from the English WritingBench queries shipped in
inspect-evals, a source neither the training data nor the packaged eval prompts use): plain AR, HF prompt
lookup and our speculative decoding at a few fixed shapes and at the shape ``decoding.shape=auto`` picks
(its measurement is cached, see docs/eval.md), every method on the same prompt ids, interleaved per prompt in
one process after warm-up (order rotated per prompt). Metrics come from the eval's own functions
(``compute_metrics``, ``cost_metrics``): bound = tau / (c_verify + depth * c_draft), efficiency = speedup /
bound. "pred" columns are the auto model's predictions for the shape (vsd/decoding/shape.py). A shape ``+B``
adds prompt lookup's continuation as a branch of up to B tokens (decoding.ngram_branch; no prediction).

    .venv/bin/python benchmarks/decode_shapes.py --draft DIR [--shapes 5x8x32,4x2x6+4] [--per-category 2]
        [--file writingbench|PATH.jsonl] [--file-prompts 10] [--max-new 128] [--temperature 0] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.doc_sections import write_section  # noqa: E402
from vsd.config import compose  # noqa: E402
from vsd.config.schema import EvalConfig  # noqa: E402
from vsd.data.eval_prompts import load_suite  # noqa: E402
from vsd.decoding.eagle import load_draft  # noqa: E402
from vsd.decoding.engine import generate_ar, generate_spec  # noqa: E402
from vsd.decoding.lookup_branch import LookupBranchDrafter  # noqa: E402
from vsd.decoding.shape import choose_shape, predict_tau  # noqa: E402
from vsd.decoding.shape_measure import (  # noqa: E402
    auto_candidates,
    device_name,
    load_or_measure,
)
from vsd.evaluation.costs import cost_metrics, measure_forward_costs  # noqa: E402
from vsd.evaluation.metrics import compute_metrics  # noqa: E402
from vsd.evaluation.turns import hf_generate  # noqa: E402
from vsd.files import package_file  # noqa: E402
from vsd.models.target import load_target  # noqa: E402

DEFAULT_SHAPES = "5x8x32,5x4x12,4x2x6,5x1x5"


def writingbench_file(n: int, out_dir: Path) -> Path:
    """A user prompt file (eval=file format) of the first ``n`` short English WritingBench queries."""
    src = package_file("inspect_evals", "writingbench/benchmark_all.jsonl", "eval")
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    picked = [r for r in rows if r["query"].isascii() and len(r["query"]) <= 600][:n]
    path = out_dir / "writingbench_en.jsonl"
    with path.open("w") as f:
        for r in picked:
            f.write(
                json.dumps({"id": f"wb{r['index']}", "category": "writing", "turns": [r["query"]]}) + "\n"
            )
    return path


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    """``DxKxN`` or ``DxKxN+B`` (B: decoding.ngram_branch, prompt lookup's branch of up to B tokens)."""
    out = []
    for part in text.split(","):
        tree, _, branch = part.lower().partition("+")
        d, k, n = (int(x) for x in tree.split("x"))
        out.append((d, k, n, int(branch or 0)))
    return out


def run_set(name, target, drafter, records, dcfgs, peer_dcfg, pred, warmup: bool = True) -> list[str]:
    """Every method on every record's first turn; returns markdown table lines."""
    ids = [target.chat_ids([{"role": "user", "content": r["turns"][0]}]) for r in records]
    labels = list(dcfgs)
    methods = ["ar", "hf_prompt_lookup", *labels]

    def run(m, x, seed):
        g = torch.Generator().manual_seed(seed)
        if m == "ar":
            r = generate_ar(target, x, peer_dcfg, generator=g, record_gaps=peer_dcfg.temperature == 0)
        elif m == "hf_prompt_lookup":
            return hf_generate(
                target,
                x,
                peer_dcfg,
                seed,
                prompt_lookup_num_tokens=peer_dcfg.depth,
                max_matching_ngram_size=peer_dcfg.ngram_max,
            )
        else:
            d = dcfgs[m]
            use = LookupBranchDrafter(drafter, target.vocab_size) if d.ngram_branch else drafter
            r = generate_spec(target, use, x, d, generator=g)
        row = {"new_tokens": len(r.tokens), "target_forwards": r.target_forwards, "wall_s": r.wall_s}
        row["ids"] = list(r.tokens)
        if m == "ar":
            row["gaps"] = r.top2_gap or []
        if m != "ar":
            row.update(draft_s=r.draft_s, accepted=r.accepted, tree_depth=r.tree_depth)
        return row

    if warmup:
        for m in methods:
            run(m, ids[0], 0)
    res: dict[str, list[dict]] = {m: [] for m in methods}
    for i, x in enumerate(ids):
        order = methods[i % len(methods) :] + methods[: i % len(methods)]
        for m in order:
            res[m].append(run(m, x, i))
    lines = [
        f"**{name}** ({len(ids)} prompts, first turns, {peer_dcfg.max_new_tokens} new tokens, "
        f"T={peer_dcfg.temperature})",
        "",
        "| shape (depth x top-k x nodes) | pred tau | tau | speedup | HF PL speedup | ours / PL | bound | "
        "pred bound | efficiency | T=0 match AR, divergences not at a near-tie |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    greedy = peer_dcfg.temperature == 0

    def far_divergences(rows: list[dict]) -> int:
        """T=0 divergences from AR that do not start at a near-tie of AR's top-2 logits (bf16, method.md)."""
        n = 0
        for r in rows:
            a, b = r["ar"]["ids"], r["spec"]["ids"]
            j = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
            gaps = r["ar"]["gaps"]
            n += j is not None and (j >= len(gaps) or gaps[j] > peer_dcfg.near_tie_eps)
        return n

    for m in labels:
        rows = []
        for k, rec in enumerate(records):
            ar, sp, pl = res["ar"][k], res[m][k], res["hf_prompt_lookup"][k]
            rows.append(
                {
                    "category": rec["category"],
                    "ar": ar,
                    "spec": sp,
                    "peers": {
                        "hf_prompt_lookup": {**pl, "match": pl["ids"] == ar["ids"] if greedy else None}
                    },
                    "match": sp["ids"] == ar["ids"] if greedy else None,
                }
            )
        met = compute_metrics(rows)
        d = dcfgs[m]
        costs = measure_forward_costs(target, ids[0], d)
        cm = cost_metrics(costs, rows, d, met["eval/tau"])
        sp, pl = met["eval/speedup"], met["eval/peer/hf_prompt_lookup/speedup"]
        ptau, pbound = pred[m]
        match = f"{sum(r['match'] for r in rows)}/{len(rows)}, {far_divergences(rows)}" if greedy else "-"
        lines.append(
            f"| {m} | {ptau:.2f} | {met['eval/tau']:.2f} | {sp:.2f}x | {pl:.2f}x | {sp / pl:.2f} | "
            f"{cm['eval/speedup_bound']:.2f} | {pbound:.2f} | {sp / cm['eval/speedup_bound']:.2f} | "
            f"{match} |"
        )
    pl_tau = met["eval/peer/hf_prompt_lookup/tau"]
    pl_match = sum(r["ids"] == a["ids"] for r, a in zip(res["hf_prompt_lookup"], res["ar"]))
    lines.append("")
    lines.append(
        f"AR {met['eval/ar_tokens_per_s']:.1f} tokens/s; HF prompt lookup tau {pl_tau:.2f}"
        + (f", T=0 match AR {pl_match}/{len(ids)}" if greedy else "")
        + "; "
        f"c_verify / c_draft of the last shape: {cm['eval/c_verify']:.2f} / {cm['eval/c_draft']:.3f} "
        f"(t1 {cm['eval/t1_ms']:.1f} ms)."
    )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--draft", required=True)
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="depth x top-k x nodes, comma-separated")
    ap.add_argument("--no-auto", action="store_true", help="skip the shape decoding.shape=auto picks")
    ap.add_argument("--auto-branch", type=int, default=0, help="also the auto shape + a lookup branch of N")
    ap.add_argument("--per-category", type=int, default=2, help="default suite: prompts per category")
    ap.add_argument("--file", default="writingbench", help="user prompt file (eval=file), or 'writingbench'")
    ap.add_argument("--file-prompts", type=int, default=10)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--overrides", default="", help="extra config overrides, comma-separated")
    ap.add_argument("--out", default=None, help="also write the output as a section of this docs page")
    ap.add_argument("--section", default=None, help="the section's name (default: decode_shapes_t<T>)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.time()
    overrides = [o for o in args.overrides.split(",") if o]
    _, cfg = compose([f"decoding.temperature={args.temperature}", *overrides])[0]
    target = load_target(cfg.model, cfg.paths.cache_dir, "cpu", cfg.dtype)
    drafter = load_draft(args.draft, target)
    base = dataclasses.replace(cfg.decoding, max_new_tokens=args.max_new, shape="fixed")
    base = dataclasses.replace(base, ngram_branch=0)
    dcfgs = {
        f"{d}x{k}x{n}" + (f"+{b}" if b else ""): dataclasses.replace(
            base, mode="tree", depth=d, top_k=k, total_tokens=n, ngram_branch=b
        )
        for d, k, n, b in parse_shapes(args.shapes)
    }
    auto_cfg = dataclasses.replace(base, shape="auto")
    table, costs, seconds, path = load_or_measure(target, drafter, auto_cfg, cfg.paths.cache_dir)
    best, _ = choose_shape(table, costs, args.temperature, auto_candidates(auto_cfg))
    pred = {}
    for label, d in dcfgs.items():
        if d.ngram_branch:  # the model predicts the tree alone
            pred[label] = (float("nan"), float("nan"))
            continue
        tau = predict_tau(table, d.depth, d.top_k, d.total_tokens, args.temperature)
        pred[label] = (tau, tau / (costs.verify(d.total_tokens) + costs.draft(d.depth, d.top_k)))
    if not args.no_auto:
        label = f"auto: {best.depth}x{best.top_k}x{best.total}"
        dcfgs[label] = best.tree.config(base)
        pred[label] = (best.pred_tau, best.pred_bound)
        if args.auto_branch:
            dcfgs[f"{label}+{args.auto_branch}"] = dataclasses.replace(
                dcfgs[label], ngram_branch=args.auto_branch
            )
            pred[f"{label}+{args.auto_branch}"] = (float("nan"), float("nan"))
    suite = load_suite(EvalConfig(suite="specbench_style", split="test", per_category=args.per_category))
    out = run_set(
        "default eval prompts (specbench_style, test split)", target, drafter, suite, dcfgs, base, pred
    )
    if args.file:
        with tempfile.TemporaryDirectory() as tmp:
            path_f = (
                writingbench_file(args.file_prompts, Path(tmp)) if args.file == "writingbench" else args.file
            )
            from vsd.data.eval_prompts import load_prompt_file

            recs = load_prompt_file(path_f)[: args.file_prompts]
            name = f"user prompt file ({'WritingBench, English' if args.file == 'writingbench' else path_f})"
            out += ["", *run_set(name, target, drafter, recs, dcfgs, base, pred)]
    machine = (
        f"{device_name(target.device)}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )
    cmd = " ".join([".venv/bin/python", "benchmarks/decode_shapes.py", *sys.argv[1:]])
    head = [
        f"### Tree shapes at T={args.temperature:g}, draft `{args.draft}` (`benchmarks/decode_shapes.py`)",
        "",
        f"Command: `{cmd}`",
        f"Machine: {machine}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {time.time() - t_start:.0f} s "
        f"in all.",
        f"Auto: chose {best.depth}x{best.top_k}x{best.total} from a measurement of {seconds:.0f} s (cache {path}).",
        "",
    ]
    text = "\n".join(head + out)
    print(text)
    if args.out:
        section = args.section or f"decode_shapes_t{args.temperature:g}"
        write_section(args.out, section, text)


if __name__ == "__main__":
    main()
