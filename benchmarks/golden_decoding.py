"""Golden check for decoding refactors: every execution path, shape and temperature, token ids and every
diagnostic written to JSON, so two commits can be compared byte for byte (the refactor's "no behaviour change").

Runs plain AR and speculative decoding on the tiny random target (fp32, random draft head) and on the real
default target (SmolLM2-135M-Instruct in fp32, the shipped draft) for chain, tree and tree + n-gram branch at
T = 0 and T > 0 (fixed seeds), under capture=none (eager), capture=static with the per-call static runners,
and capture=static with the captured step (its eager form on a CPU); plus the n-gram drafter and the reference
evaluator's steps (vsd.evaluation.reference) on the AR continuations.

    nice -n 19 .venv/bin/python benchmarks/golden_decoding.py --out /tmp/after.json [--quick] \
        [--compare /tmp/before.json]

``--compare``: exit 1 unless every run both files hold is identical (ids, tau, every diagnostic).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vsd.config import compose  # noqa: E402
from vsd.data.vocab import build_vocab  # noqa: E402
from vsd.decoding.eagle import EagleDrafter  # noqa: E402
from vsd.decoding.engine import generate_ar, generate_spec  # noqa: E402
from vsd.decoding.lookup_branch import LookupBranchDrafter  # noqa: E402
from vsd.decoding.ngram import NgramDrafter  # noqa: E402
from vsd.evaluation.reference import reference_steps  # noqa: E402
from vsd.models.draft import DraftHead, build_head, resolve_draft_dir  # noqa: E402
from vsd.models.target import load_target  # noqa: E402

PROMPTS = [
    "Repeat this sentence twice: the quick brown fox jumps over the lazy dog.",
    "Write a Python function that returns the sum of a list of numbers.",
]
# (label, DecodingConfig overrides, uses the lookup branch)
SHAPES = [
    ("chain", dict(mode="chain", depth=4, ngram_branch=0), False),
    ("tree", dict(mode="tree", depth=4, top_k=3, total_tokens=10, ngram_branch=0), False),
    ("tree_branch", dict(mode="tree", depth=4, top_k=3, total_tokens=10, ngram_branch=4), True),
]
BACKENDS = [
    ("eager", dict(capture="none")),
    ("static_percall", dict(capture="static", captured_step=False, max_len=512)),
    ("static_captured", dict(capture="static", captured_step=True, max_len=512)),
]
TEMPS = [0.0, 0.8]


def _plain(x):
    if torch.is_tensor(x):
        return x.tolist()
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x


def record(res) -> dict:
    out = {
        k: _plain(getattr(res, k))
        for k in ("tokens", "target_forwards", "drafted", "accepted", "tree_depth", "accepted_ranks")
    }
    out["tau"] = res.tau
    out["calib"] = _plain(res.calib)
    out["rank_counts"] = _plain(res.rank_counts)
    if res.top2_gap is not None:
        out["top2_gap"] = [round(g, 4) for g in res.top2_gap]
    return out


def run_target(name: str, target, head, dcfg0, prompts: list[list[int]], max_new: int) -> dict:
    out: dict = {}
    base = dataclasses.replace(dcfg0, max_new_tokens=max_new, drafter="eagle3", shape="fixed")
    for i, ids in enumerate(prompts):
        out[f"{name}/ar/{i}"] = record(generate_ar(target, ids, base, record_gaps=True))
        for T in TEMPS:
            d = dataclasses.replace(base, drafter="ngram", mode="chain", depth=4, temperature=T)
            g = torch.Generator().manual_seed(1234 + i)
            out[f"{name}/ngram/T{T}/{i}"] = record(
                generate_spec(target, NgramDrafter(target.vocab_size), ids, d, generator=g)
            )
    for label, over, _ in SHAPES:  # the reference evaluator (T = 0) on the AR continuations
        d = dataclasses.replace(base, **over)
        for i, ids in enumerate(prompts):
            ref = {"prompt_ids": ids, "new_ids": out[f"{name}/ar/{i}"]["tokens"]}
            out[f"{name}/reference/{label}/{i}"] = reference_steps(head, target, ref, d)
    for label, over, branch in SHAPES:
        for bname, bover in BACKENDS:
            for T in TEMPS:
                d = dataclasses.replace(base, temperature=T, **over, **bover)
                drafter = EagleDrafter(head, target.dtype)
                if branch:
                    drafter = LookupBranchDrafter(drafter, target.vocab_size)
                for i, ids in enumerate(prompts):
                    g = torch.Generator().manual_seed(1234 + i)
                    key = f"{name}/{label}/{bname}/T{T}/{i}"
                    out[key] = record(generate_spec(target, drafter, ids, d, generator=g))
                    print(key, out[key]["tau"], flush=True)
    return out


def tiny_setup():
    _, cfg = compose(["model=tiny_random"])[0]
    target = load_target(cfg.model, cfg.paths.cache_dir, "cpu", "float32")
    g = torch.Generator().manual_seed(0)
    for p in target.model.parameters():
        if p.dim() >= 2:
            p.data = 0.2 * torch.randn(p.shape, generator=g)
    vocab = build_vocab(torch.ones(target.vocab_size), 200)
    head = build_head(target, cfg.model.draft, vocab["d2t"], seed=0)
    prompts = [[5, 6, 7, 8, 5, 6, 7], [11, 12, 13, 11, 12]]
    return target, head, cfg.decoding, prompts


def real_setup():
    _, cfg = compose([])[0]
    target = load_target(cfg.model, cfg.paths.cache_dir, "cpu", "float32")
    head = DraftHead.load(resolve_draft_dir("shipped", cfg.model, "draft.checkpoint"), target)
    prompts = [target.chat_ids([{"role": "user", "content": t}]) for t in PROMPTS]
    return target, head, cfg.decoding, prompts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="the tiny target only")
    ap.add_argument("--max-new", type=int, default=24)
    ap.add_argument("--compare", help="an earlier output: every run both hold must be identical")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out: dict = {}
    with torch.no_grad():
        t, h, d, p = tiny_setup()
        out.update(run_target("tiny", t, h, d, p, args.max_new))
        if not args.quick:
            t, h, d, p = real_setup()
            out.update(run_target("smollm2", t, h, d, p, args.max_new))
    Path(args.out).write_text(json.dumps(out, indent=1, sort_keys=True))
    print(f"{len(out)} runs -> {args.out}")
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        both = sorted(set(before) & set(out))
        diff = [k for k in both if before[k] != json.loads(json.dumps(out[k]))]
        print(f"compared {len(both)} runs with {args.compare}: {len(diff)} differ {diff[:10]}")
        sys.exit(1 if diff or not both else 0)


if __name__ == "__main__":
    main()
