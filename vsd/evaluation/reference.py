"""``eval.method=reference``: T = 0 acceptance measured without decoding, from the target's own greedy output.

At T = 0 speculative decoding is lossless: it emits the target's greedy continuation y, exactly what plain AR
decoding emits. A verification step that starts with root y_i (anchor i: prefix y_<=i committed) drafts a tree
that depends on that prefix alone, and accepts the longest tree path that spells y_{i+1}, y_{i+2}, ...; the
step ends with the bonus token, so the next step starts at anchor i + L(i) + 1. Given y, every L(i) can
therefore be computed at once, with the draft trees of ALL anchors drafted in one batched pass
(:func:`vsd.decoding.anchor_trees.grow_anchor_trees`) from the target features of y, and the steps the engine would
take follow as a jump chain i -> i + L(i) + 1. The rows it writes carry the same per-step counts as the
engine's (``accepted``, ``tree_depth``, ``drafted``, ``accepted_ranks``, ``calib``), so every acceptance metric
(tau, alpha_k, accepted_not_top1, calibration) comes from the same code (vsd.evaluation.metrics) as for decoded
rows; there is no timing, so no speedup. The tests hold it to the engine, step for step, in fp32. One count
differs by definition: the final step's ``accepted`` stops at the last emitted token, where the engine also
counts draft tokens past the end (after EOS or beyond max_new_tokens) that it then cuts off; tau, which counts
emitted tokens and forwards, is the same.

Why: the target's greedy continuation of each eval prompt is generated once (cached, shared by every draft)
and each draft then costs a few batched draft passes instead of a decode, which makes evals with thousands of
verification steps (enough to detect a few percent of tau) affordable. At T > 0 the output depends on the
draft's own samples, so ``reference`` is T = 0 only; sampled decoding is measured with ``eval.method=decode``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock

from vsd.config.schema import DecodingConfig, EvalConfig
from vsd.data.shards import content_key, target_fingerprint
from vsd.decoding.anchor_trees import accepted_by_reference, grow_anchor_trees
from vsd.decoding.diagnostics import calib_by_depth

REF_VERSION = 2  # bump when what is cached changes


def reference_key(target: Any, records: list[dict], dcfg: DecodingConfig, ecfg: EvalConfig) -> str:
    """What the greedy continuations depend on: the target's weights and numerics, the prompts, the budget."""
    return content_key(
        {
            "version": REF_VERSION,
            "target": target_fingerprint(target),
            "dtype": str(target.dtype),
            "device": target.device.type,
            "capture": dcfg.capture,  # a graphed AR step rounds like the graphed decode, not like eager
            "max_new_tokens": dcfg.max_new_tokens,
            "max_turns": ecfg.max_turns,
            "prompts": [(r["id"], r["turns"]) for r in records],
        }
    )


def build_references(
    target: Any,
    records: list[dict],
    dcfg: DecodingConfig,
    ecfg: EvalConfig,
    cache_dir: Path,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """The target's greedy continuation of every prompt turn, by the engine's plain AR decoding (so it is what
    speculative decoding must emit), cached in ``{cache_dir}/references/<key>.pt``; MT-Bench turn 2 follows the
    model's own turn-1 answer, as in ``eval.method=decode``. Returns one dict per turn:
    ``{"id", "category", "turn", "prompt_ids", "new_ids"}``."""
    import dataclasses

    from tqdm.auto import tqdm

    from vsd.decoding.engine import generate_ar
    from vsd.evaluation.turns import too_long

    key = reference_key(target, records, dcfg, ecfg)
    path = Path(cache_dir) / "references" / f"{key}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists():
            return torch.load(path, weights_only=True)
        greedy = dataclasses.replace(dcfg, temperature=0.0)
        out: list[dict[str, Any]] = []
        total = sum(min(len(r["turns"]), ecfg.max_turns) for r in records)
        bar = tqdm(total=total, desc="references", unit="turn", disable=not progress, dynamic_ncols=True)
        for rec in records:
            messages: list[dict[str, str]] = []
            skipped = None
            for turn, text in enumerate(rec["turns"][: ecfg.max_turns]):
                messages.append({"role": "user", "content": text})
                ids = target.chat_ids(messages) if skipped is None else None
                reason = too_long(len(ids), target, dcfg) if ids is not None else skipped
                if reason is not None:  # the decode eval's rule: refused, and so are the turns after it
                    skipped = skipped or f"follows skipped turn {turn} ({reason})"
                    out.append(
                        {"id": str(rec["id"]), "category": rec["category"], "turn": turn, "skipped": reason}
                    )
                    bar.update(1)
                    continue
                res = generate_ar(target, ids, greedy)
                out.append(
                    {
                        "id": str(rec["id"]),
                        "category": rec["category"],
                        "turn": turn,
                        "prompt_ids": list(ids),
                        "new_ids": [int(t) for t in res.tokens],
                    }
                )
                messages.append({"role": "assistant", "content": target.decode(list(res.tokens))})
                bar.update(1)
        bar.close()
        tmp = path.with_suffix(".tmp")
        torch.save(out, tmp)
        tmp.replace(path)
    return out


@torch.no_grad()
def reference_steps(
    head: Any, target: Any, ref: dict[str, Any], dcfg: DecodingConfig, chunk: int = 256
) -> dict[str, Any]:
    """The engine's verification steps for one turn, from its greedy continuation ``ref``. Returns a ``spec``
    run of eval.jsonl (``new_tokens``, ``target_forwards``, ``accepted``, ``drafted``, ``tree_depth``,
    ``accepted_ranks``, ``calib``: per depth, CALIB_BINS cells [count, sum of draft confidence, accepted] over
    the nodes whose parent was accepted)."""
    from vsd.decoding.tree import TreeShape

    depth, k, total = TreeShape.of(dcfg)
    prompt, new = ref["prompt_ids"], ref["new_ids"]
    P, N = len(prompt), len(new)
    run: dict[str, Any] = {
        "new_tokens": N,
        "target_forwards": 1,
        "wall_s": 0.0,
        "accepted": [],
        "drafted": [],
        "tree_depth": [],
        "accepted_ranks": [],
        "calib": {},
    }
    if N <= 1:
        return run
    dev = head.fc.weight.device
    ids = torch.tensor([prompt + new], device=target.device)
    feats = target.forward(ids, output_features=True).features.to(dev)
    ids = ids.to(dev)
    am = torch.ones_like(ids, dtype=torch.bool)
    # anchors P .. P+N-2: a step can start at any generated token but the last
    anchors = torch.arange(P, P + N - 1, device=dev)
    seq = ids[0]
    dd = torch.arange(1, depth + 1, device=dev)
    parts: dict[str, list] = {
        k_: []
        for k_ in ("n", "rank", "tdepth", "size", "tested", "dep", "conf", "acc", "tok", "par", "rank_of")
    }
    for s in range(0, anchors.numel(), chunk):
        a = anchors[s : s + chunk][None]
        trees = grow_anchor_trees(head, feats, ids, am, a, depth, k, total)
        offs = a[0][:, None] + dd[None]
        reference = torch.where(offs < P + N, seq[offs.clamp(max=P + N - 1)], -1)[None]
        acc = accepted_by_reference(trees, head.d2t, reference, depth)[0]  # (A, n)
        deps, pars = trees.depths[0], trees.parents[0]
        parts["n"].append((deps * acc).amax(-1))
        on_depth = acc[:, None, :] & (deps[:, None, :] == dd[None, :, None])  # (A, depth, n)
        parts["rank"].append(torch.where(on_depth, trees.ranks[0][:, None, :], -1).amax(-1))
        parts["tdepth"].append(deps.amax(-1))
        parts["size"].append(torch.full_like(deps[:, 0], deps.shape[-1]))
        parts["tested"].append(torch.where(pars >= 0, acc.gather(1, pars.clamp(min=0)), True))
        parts["dep"].append(deps)
        parts["conf"].append(trees.logq[0].exp())
        parts["acc"].append(acc)
        parts["tok"].append(head.d2t[trees.tokens[0]])
        parts["par"].append(pars)
        parts["rank_of"].append(trees.ranks[0])
    x = {k_: torch.cat(v).cpu().numpy() for k_, v in parts.items()}  # one copy to the host per turn
    if dcfg.ngram_branch > 0:  # decoding.ngram_branch: prompt lookup's continuation as one more branch
        _add_lookup_branch(x, prompt, new, dcfg, k)
    visited, made, i = [], 1, 0  # anchor index relative to P; tokens emitted so far (the prefill's)
    while made < N:
        visited.append(i)
        step = int(x["n"][i]) + 1
        made += step
        i += step
    v = np.array(visited)
    run["accepted"] = x["n"][v].astype(int).tolist()
    run["drafted"] = x["size"][v].astype(int).tolist()
    run["tree_depth"] = x["tdepth"][v].astype(int).tolist()
    run["accepted_ranks"] = [[int(r) for r in row if r >= 0] for row in x["rank"][v]]
    run["target_forwards"] = 1 + len(visited)
    t = x["tested"][v]
    dep, conf, acc = x["dep"][v][t], x["conf"][v][t], x["acc"][v][t]
    run["calib"] = calib_by_depth(torch.from_numpy(dep), torch.from_numpy(conf), torch.from_numpy(acc))
    return run


def _add_lookup_branch(x: dict, prompt: list[int], new: list[int], dcfg: DecodingConfig, rank: int) -> None:
    """Per anchor, what vsd.decoding.lookup_branch adds to the tree (in place on the per-anchor arrays ``x``):
    the lookup's continuation shares the tree's nodes along its path and hangs the rest below; the step accepts
    the longer of the two matches, and verifies the new nodes too. (Calibration keeps the model's nodes only.)"""
    from vsd.decoding.ngram import NgramDrafter

    look, seq = NgramDrafter(0), prompt + new
    P = len(prompt)
    pad = np.full((x["rank"].shape[0], dcfg.ngram_branch), -1, dtype=x["rank"].dtype)
    x["rank"] = np.concatenate([x["rank"], pad], axis=1)  # a lookup path can be longer than the tree
    for j in range(len(new) - 1):
        chain = look.lookup(seq[: P + j + 1], dcfg.ngram_max, dcfg.ngram_min, dcfg.ngram_branch)
        if not chain:
            continue
        toks, pars = x["tok"][j], x["par"][j]
        cur, shared, path_ranks = -1, 0, []
        while shared < len(chain):
            hit = np.nonzero((pars == cur) & (toks == chain[shared]))[0]
            if not len(hit):
                break
            cur = int(hit[0])
            path_ranks.append(int(x["rank_of"][j][cur]) if "rank_of" in x else 0)
            shared += 1
        x["size"][j] += len(chain) - shared
        x["tdepth"][j] = max(int(x["tdepth"][j]), len(chain)) if shared < len(chain) else x["tdepth"][j]
        matched = 0
        while matched < len(chain) and j + 1 + matched < len(new) and chain[matched] == new[j + 1 + matched]:
            matched += 1
        if matched > x["n"][j]:  # the lookup path is accepted further than any model path
            x["n"][j] = matched
            ranks = path_ranks[:matched] + [rank] * max(0, matched - shared)
            x["rank"][j][:] = -1
            x["rank"][j][: len(ranks)] = ranks


def reference_rows(
    head: Any, target: Any, refs: list[dict[str, Any]], dcfg: DecodingConfig, progress: bool = True
) -> list[dict[str, Any]]:
    """eval.jsonl rows (``"method": "reference"``, no AR or peer runs) for every reference turn; a turn too long
    for the context (the decode eval's rule, vsd.evaluation.turns.too_long) gets its ``skipped`` row."""
    from tqdm.auto import tqdm

    rows = []
    for ref in tqdm(refs, desc="eval (reference)", unit="turn", disable=not progress, dynamic_ncols=True):
        if "skipped" in ref:
            rows.append({k: ref[k] for k in ("id", "category", "turn", "skipped")} | {"method": "reference"})
            continue
        rows.append(
            {
                "id": ref["id"],
                "category": ref["category"],
                "turn": ref["turn"],
                "prompt_tokens": len(ref["prompt_ids"]),
                "temperature": 0.0,
                "method": "reference",
                "ar": None,
                "spec": reference_steps(head, target, ref, dcfg),
                "peers": {},
                "match": None,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m vsd.evaluation.reference OVERRIDES...``: build (or find) the reference continuations of a
    run's eval prompts without evaluating a draft, so that later evals only read them (run.py's overrides)."""
    import sys

    from vsd.config import compose
    from vsd.data.eval_prompts import load_suite
    from vsd.errors import UserError
    from vsd.models.target import load_target
    from vsd.runtime import resolve_device, set_threads

    argv = sys.argv[1:] if argv is None else argv
    try:
        _, cfg = compose([a for a in argv if "=" in a and not a.startswith("hydra.")])[0]
        set_threads(cfg.threads)
        records = load_suite(cfg.eval)
        target = load_target(
            cfg.model, Path(cfg.paths.cache_dir).expanduser(), resolve_device(cfg.device), cfg.dtype
        )
        refs = build_references(
            target, records, cfg.decoding, cfg.eval, Path(cfg.paths.cache_dir).expanduser()
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    key = reference_key(target, records, cfg.decoding, cfg.eval)
    kept = [r for r in refs if "skipped" not in r]  # a turn too long for the context has no continuation
    tokens = sum(len(r["new_ids"]) for r in kept)
    print(
        f"[vsd] references: {len(kept)} turns, {tokens} tokens, {len(refs) - len(kept)} skipped (key {key})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
