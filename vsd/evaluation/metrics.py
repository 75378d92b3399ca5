"""Every eval metric, from the raw per-turn rows of ``eval.jsonl``, by one code path for spec, AR and peers.

Definitions (docs/eval.md, design method.md "Metrics"):
- tau = sum(new tokens) / sum(target forwards); the prefill forward and the bonus token are included, so
  plain AR has tau = 1 exactly.
- tokens/s = sum(new tokens) / sum(wall seconds) over the same rows; speedup = tokens/s(method) /
  tokens/s(AR) on the same rows (sums, not a mean of per-prompt ratios).
- speedup_specbench = Spec-Bench's speedup (its evaluation/speed.py): the mean over questions of each
  question's rate (its turns' new tokens / their wall seconds) for the method, divided by the same mean for AR.
  A question weighs the same whatever its length; ``speedup`` weighs every second the same.
- alpha_k = P(depth-k draft token accepted | depth k-1 accepted, depth k drafted), pooled over every
  verification step: #{steps: accepted >= k, drafted depth >= k} / #{steps: accepted >= k-1, depth >= k}.
- lossless_match = fraction of rows (prompt turns) whose speculative ids equal the AR ids (T=0 rows only).
- accepted_not_top1 = fraction of verification steps whose accepted path leaves the draft's top-1 chain: it holds
  a node of sibling rank > 0 (a step that accepted nothing stays on the chain). From ``accepted_ranks``.
- ece_d{k} = expected calibration error of the draft at depth k, over the nodes whose parent was accepted:
  sum over the CALIB_BINS equal-width confidence bins b of (n_b / n) |mean confidence_b - accept rate_b|, with
  confidence exp(logq) (the draft's probability of the node given its parent). ece = the same pooled over
  depths, each depth weighted by its node count n. From ``calib``.
Other conventions (e.g. ViSpec's accepted length without the bonus token) are derived here from the raw
counts, never by changing the definitions above.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Row = Mapping[str, Any]


def _sums(runs: list[Mapping[str, Any]]) -> tuple[int, int, float]:
    tokens = sum(int(r["new_tokens"]) for r in runs)
    forwards = sum(int(r["target_forwards"]) for r in runs)
    seconds = sum(float(r["wall_s"]) for r in runs)
    return tokens, forwards, seconds


def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def mean_question_rate(rows: list[Row], method: str) -> float:
    """Spec-Bench's tokens/s: the mean over questions (rows grouped by ``id``) of sum(new tokens) / sum(wall
    seconds) of that question's turns, for ``method`` (``spec``, ``ar`` or ``peer/<name>``)."""
    per: dict[str, list[float]] = {}
    for r in rows:
        run = r["peers"][method[5:]] if method.startswith("peer/") else r[method]
        acc = per.setdefault(str(r["id"]), [0.0, 0.0])
        acc[0] += int(run["new_tokens"])
        acc[1] += float(run["wall_s"])
    rates = [_rate(int(t), s) for t, s in per.values()]
    return sum(rates) / len(rates) if rates else float("nan")


def alpha_by_depth(runs: Iterable[Mapping[str, Any]]) -> dict[int, float]:
    """Per-depth conditional acceptance alpha_k (k = 1..max drafted depth) pooled over all steps.

    Each run holds per-verification-step lists ``accepted`` (draft tokens accepted, bonus excluded) and
    ``tree_depth`` (deepest drafted level; chain runs may give ``drafted`` instead, which equals it).
    """
    num: dict[int, int] = {}
    den: dict[int, int] = {}
    for r in runs:
        acc = r.get("accepted") or []
        depth = r.get("tree_depth") or r.get("drafted") or []
        if len(acc) != len(depth):
            raise ValueError(f"accepted ({len(acc)}) and tree_depth ({len(depth)}) differ in length")
        for a, d in zip(acc, depth):
            if a > d:
                raise ValueError(f"a step accepted {a} tokens from a draft of depth {d}")
            for k in range(1, int(d) + 1):
                if a >= k - 1:
                    den[k] = den.get(k, 0) + 1
                    num[k] = num.get(k, 0) + (a >= k)
    return {k: num[k] / den[k] for k in sorted(den)}


def accepted_not_top1(runs: Iterable[Mapping[str, Any]]) -> float | None:
    """Fraction of verification steps whose accepted rank path holds a rank > 0; None without rank paths."""
    steps = [p for r in runs for p in (r.get("accepted_ranks") or [])]
    if not steps:
        return None
    return sum(any(rank > 0 for rank in p) for p in steps) / len(steps)


def calibration_errors(runs: Iterable[Mapping[str, Any]]) -> dict[int, tuple[float, float]]:
    """Per depth k: (ECE_k, node count n_k) from the ``calib`` bins of every run, summed over runs first."""
    bins: dict[int, list[list[float]]] = {}
    for r in runs:
        for depth, cells in (r.get("calib") or {}).items():
            acc = bins.setdefault(int(depth), [[0.0, 0.0, 0.0] for _ in cells])
            if len(acc) != len(cells):
                raise ValueError(f"calib: depth {depth} has {len(cells)} bins, other rows {len(acc)}")
            for a, c in zip(acc, cells):
                for i in range(3):
                    a[i] += float(c[i])
    out = {}
    for depth, cells in sorted(bins.items()):
        n = sum(c[0] for c in cells)
        if n > 0:
            ece = sum(c[0] / n * abs(c[1] / c[0] - c[2] / c[0]) for c in cells if c[0] > 0)
            out[depth] = (ece, n)
    return out


def _method_metrics(prefix: str, runs: list[Mapping[str, Any]], ar_rate: float | None) -> dict[str, float]:
    """tau, tokens/s, speedup (vs ``ar_rate``) and acceptance for one method's runs."""
    tokens, forwards, seconds = _sums(runs)
    rate = _rate(tokens, seconds)
    out = {
        f"{prefix}tau": tokens / forwards if forwards else float("nan"),
        f"{prefix}tokens_per_s": rate,
    }
    if ar_rate is not None:
        out[f"{prefix}speedup"] = rate / ar_rate if ar_rate > 0 else float("nan")
    if any("accepted" in r for r in runs):
        for k, a in alpha_by_depth(runs).items():
            out[f"{prefix}alpha_{k}"] = a
        steps = sum(len(r.get("accepted") or []) for r in runs)
        if steps:
            # Mean accepted draft tokens per verification step, bonus excluded (ViSpec/SpecForge style).
            out[f"{prefix}accepted_per_step"] = sum(sum(r["accepted"]) for r in runs) / steps
        off = accepted_not_top1(runs)
        if off is not None:
            out[f"{prefix}accepted_not_top1"] = off
        ece = calibration_errors(runs)
        for k, (e, _) in ece.items():
            out[f"{prefix}ece_d{k}"] = e
        if ece:
            total = sum(n for _, n in ece.values())
            out[f"{prefix}ece"] = sum(e * n for e, n in ece.values()) / total
    return out


def _match_rate(flags: list[bool | None]) -> float | None:
    known = [f for f in flags if f is not None]
    return sum(known) / len(known) if known else None


def compute_metrics(rows: list[Row]) -> dict[str, float]:
    """All eval metrics from raw rows (one per prompt turn). See the module docstring for definitions.

    A row: ``{"category", "ar": run|None, "spec": run, "peers": {name: run | {"skipped": reason}},
    "match": bool|None, "diverge_at": int|None, "diverge_gap": float|None, "near_tie": bool|None}`` where a
    run is ``{"new_tokens", "target_forwards", "wall_s", ["drafted", "accepted", "tree_depth", "match"]}``.
    Rows with ``"skipped"`` (a turn too long for the context) are not decoded: they only count in
    ``eval/skipped_too_long``. Keys: ``eval/tau``, ``eval/speedup``, ``eval/speedup_specbench`` (rows with
    an ``id``), ``eval/tokens_per_s``,
    ``eval/ar_tokens_per_s``, ``eval/lossless_match``, ``eval/alpha_<k>``, ``eval/accepted_not_top1``,
    ``eval/ece_d<k>``, ``eval/ece``, the same per category as ``eval/<category>/...``, and
    ``eval/peer/<name>/{tau,tokens_per_s,speedup,lossless_match}``.
    """
    if not rows:
        return {}
    skipped = sum("skipped" in r for r in rows)  # turns too long for the context, not decoded
    rows = [r for r in rows if "skipped" not in r]
    out: dict[str, float] = {"eval/skipped_too_long": float(skipped)}
    if not rows:
        return out
    groups: dict[str, list[Row]] = {"": list(rows)}
    for r in rows:
        groups.setdefault(f"{r['category']}/", []).append(r)
    for g, grows in groups.items():
        prefix = f"eval/{g}"
        ar_runs = [r["ar"] for r in grows if r.get("ar")]
        ar_rate = None
        if ar_runs and len(ar_runs) == len(grows):  # speedup only over rows that have both
            ar_tokens, _, ar_seconds = _sums(ar_runs)
            ar_rate = _rate(ar_tokens, ar_seconds)
            out[f"{prefix}ar_tokens_per_s"] = ar_rate
        out.update(_method_metrics(prefix, [r["spec"] for r in grows], ar_rate))
        if ar_rate is not None and all("id" in r for r in grows):
            out[f"{prefix}speedup_specbench"] = _ratio(
                mean_question_rate(grows, "spec"), mean_question_rate(grows, "ar")
            )
        match = _match_rate([r.get("match") for r in grows])
        if match is not None:
            out[f"{prefix}lossless_match"] = match
        out[f"{prefix}num_turns"] = float(len(grows))
        if g:
            continue  # peers and divergence details: overall only
        out[f"{prefix}new_tokens"] = float(sum(int(r["spec"]["new_tokens"]) for r in grows))
        diverged = [r for r in grows if r.get("match") is False]
        out[f"{prefix}diverged"] = float(len(diverged))
        gaps = [r["diverge_gap"] for r in diverged if r.get("diverge_gap") is not None]
        if gaps:
            out[f"{prefix}diverge_gap_max"] = max(gaps)
            out[f"{prefix}diverged_not_near_tie"] = float(sum(r.get("near_tie") is False for r in diverged))
        names = sorted({n for r in grows for n in (r.get("peers") or {})})
        for name in names:
            runs = [r["peers"][name] for r in grows if name in (r.get("peers") or {})]
            ran = [p for p in runs if "skipped" not in p]
            if not ran:
                continue
            peer_ar = None
            if ar_rate is not None and len(ran) == len(grows):
                peer_ar = ar_rate
            out.update(_method_metrics(f"eval/peer/{name}/", ran, peer_ar))
            if peer_ar is not None and all("id" in r for r in grows):
                out[f"eval/peer/{name}/speedup_specbench"] = _ratio(
                    mean_question_rate(grows, f"peer/{name}"), mean_question_rate(grows, "ar")
                )
            pm = _match_rate([p.get("match") for p in ran])
            if pm is not None:
                out[f"eval/peer/{name}/lossless_match"] = pm
    return out


def shape_metrics(info: dict[str, Any]) -> dict[str, float]:
    """``eval/shape_depth``, ``eval/shape_top_k``, ``eval/shape_nodes`` and, for ``auto``,
    ``eval/shape_pred_tau`` and ``eval/shape_pred_bound``."""
    out = {
        "eval/shape_depth": float(info["depth"]),
        "eval/shape_top_k": float(info["top_k"]),
        "eval/shape_nodes": float(info["nodes"]),
    }
    if info.get("mode") == "auto":
        out["eval/shape_pred_tau"] = float(info["pred_tau"])
        out["eval/shape_pred_bound"] = float(info["pred_bound"])
    return out
