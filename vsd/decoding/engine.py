"""Plain autoregressive decoding (the baseline) and speculative decoding, through the same counting and
timing code: one ``_Timer``, one stop rule (EOS included, or ``max_new_tokens``), one token picker.

Speculative step: the drafter proposes a tree after the root (last committed token, not yet in the target
KV cache); the target runs ONE forward over [root, tree...] with the tree attention mask and positions on
top of its cache; verification picks the accepted path and the bonus/correction token; the KV entries of
root + accepted path are gathered to the front of the new block and the rest is cropped.

Diagnostics per verification step: :class:`vsd.decoding.diagnostics.DraftStats` (shared with the reference
evaluator's calibration bins).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from vsd.config.schema import DecodingConfig
from vsd.decoding import verify as _verify
from vsd.decoding.diagnostics import DraftStats
from vsd.decoding.drafter import Drafter, DraftTree
from vsd.decoding.sampling import sample, warp
from vsd.decoding.target_runner import DynamicRunner, keep_cache_rows, make_runner  # noqa: F401 (re-export)
from vsd.decoding.tree import TreeShape
from vsd.runtime import synchronize


@dataclass
class GenResult:
    tokens: list[int]  # new ids (prompt excluded); stops after EOS (included) or max_new_tokens
    target_forwards: int  # prefill counts as 1
    drafted: list[int] = field(default_factory=list)  # per verification step: draft nodes verified
    accepted: list[int] = field(default_factory=list)  # per step: accepted draft tokens (bonus excluded)
    tree_depth: list[int] = field(default_factory=list)  # per step: max depth of the verified tree
    wall_s: float = 0.0  # synchronised wall time of the whole generation (prefill included)
    # time inside drafter.propose/commit (on CUDA: the span on the device's timeline); a captured step drafts one
    # tree ahead, so its draft_s includes one unused tree per generation
    draft_s: float = 0.0
    verify_s: float = 0.0  # time in the target step and verification (the same clock as draft_s)
    top2_gap: list[float] | None = None  # AR only, if asked: top1-top2 target logit gap per position
    # per step: the draft's sibling ranks along the accepted path (empty when nothing was accepted)
    accepted_ranks: list[list[int]] = field(default_factory=list)
    # (D, CALIB_BINS, 3) float64, row d-1 = depth d: per confidence bin [count, sum of exp(logq), sum accepted]
    # over nodes whose parent was accepted; None without drafter ranks/log-probs (or for AR)
    calib: torch.Tensor | None = None
    # (D, R, 2) float64: per depth and sibling rank [nodes whose parent was accepted, accepted ones]
    rank_counts: torch.Tensor | None = None

    @property
    def tau(self) -> float:
        """Mean accepted length: new tokens / target forwards (bonus included; AR = 1)."""
        return len(self.tokens) / max(self.target_forwards, 1)


class _Timer:
    """Accumulating timer. By default the host clock with device synchronisation at both ends. With
    ``events`` on CUDA it records CUDA events instead and reads them once, at ``total``: it then times the span
    on the device's timeline, and a sync per span would stall the host running ahead of graphed steps."""

    def __init__(self, device: torch.device | str, events: bool = False):
        self.device = device
        self.events = events and torch.device(device).type == "cuda"
        self._host = 0.0
        self._t0 = 0.0
        self._spans: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def __enter__(self) -> _Timer:
        if self.events:
            self._spans.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
            self._spans[-1][0].record()
            return self
        synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.events:
            self._spans[-1][1].record()
            return
        synchronize(self.device)
        self._host += time.perf_counter() - self._t0

    @property
    def total(self) -> float:
        if self._spans:
            synchronize(self.device)
            self._host += sum(a.elapsed_time(b) for a, b in self._spans) / 1000
            self._spans.clear()
        return self._host


def _pick(logits: torch.Tensor, dcfg: DecodingConfig, generator: torch.Generator | None) -> int:
    """Next token from (V,) logits: argmax at T=0, else a draw from the warped distribution."""
    if dcfg.temperature <= 0:
        return int(logits.argmax())
    return sample(warp(logits, dcfg.temperature, dcfg.target_top_k, dcfg.top_p), generator)


def _stop_index(tokens: list[int], start: int, eos: set[int], max_new: int) -> int | None:
    """Length to truncate to if generation is over (EOS at/after ``start`` or budget reached), else None."""
    for i in range(start, len(tokens)):
        if tokens[i] in eos:
            return min(i + 1, max_new)
    return max_new if len(tokens) >= max_new else None


def _top2_gap(logits: torch.Tensor) -> float:
    v = logits.float().topk(2).values
    return float(v[0] - v[1])


@torch.no_grad()
def generate_ar(
    target,
    prompt_ids: list[int],
    dcfg: DecodingConfig,
    *,
    generator: torch.Generator | None = None,
    record_gaps: bool = False,
) -> GenResult:
    """Plain autoregressive decoding with the KV cache: one target forward per new token."""
    eos, dev = target.eos_token_ids, target.device
    wall = _Timer(dev)
    gaps: list[float] | None = [] if record_gaps else None
    tokens: list[int] = []
    runner = make_runner(target, dcfg)
    with wall:
        out = runner.prefill(list(prompt_ids), False)
        forwards = 1
        while True:
            logits = out.logits[0, -1]
            if gaps is not None:
                gaps.append(_top2_gap(logits))
            tokens.append(_pick(logits, dcfg, generator))
            stop = _stop_index(tokens, len(tokens) - 1, eos, dcfg.max_new_tokens)
            if stop is not None:
                del tokens[stop:]
                break
            out = runner.step(tokens[-1], None, False, rows=1)
            runner.keep([0])
            forwards += 1
    return GenResult(tokens, forwards, wall_s=wall.total, top2_gap=gaps[: len(tokens)] if gaps else gaps)


@torch.no_grad()
def verify_forward(target, cache, root: int, tree: DraftTree, prefix_len: int, output_features: bool):
    """One eager target forward over [root, tree nodes] on top of a DynamicCache holding ``prefix_len``
    entries (the engine's step, exposed for cost measurements and tests). Returns the TargetOutput."""
    r = DynamicRunner(target)
    r.cache, r.length = cache, prefix_len
    return r.step(root, tree, output_features)


@torch.no_grad()
def generate_spec(
    target,
    drafter: Drafter,
    prompt_ids: list[int],
    dcfg: DecodingConfig,
    *,
    generator: torch.Generator | None = None,
) -> GenResult:
    """Speculative decoding of one prompt with ``drafter``; lossless w.r.t. :func:`generate_ar`.

    A drafter that offers a captured step for this runner and config (``captured_step``: the EAGLE drafter
    under ``decoding.capture``) runs each step as its graphs with one host read; otherwise each step is the
    drafter's ``propose``, the target step, verification and the drafter's ``commit``. Both feed the same
    bookkeeping below."""
    eos, dev = target.eos_token_ids, target.device
    feats_on = bool(drafter.needs_features)
    wall, draft, check = _Timer(dev), _Timer(dev, events=True), _Timer(dev, events=True)
    res = GenResult([], 0)
    tokens = res.tokens
    runner = make_runner(target, dcfg)
    captured = drafter.captured_step(runner, dcfg)
    depth, k, _ = TreeShape.of(dcfg)
    stats = captured.stats if captured is not None else DraftStats(depth, k)
    with wall:
        out = runner.prefill(list(prompt_ids), feats_on)
        res.target_forwards = 1
        root = _pick(out.logits[0, -1], dcfg, generator)
        if captured is not None:
            captured.start(list(prompt_ids), out.features[0], root, generator, draft)
        else:
            with draft:
                drafter.reset(list(prompt_ids), out.features[0] if feats_on else None)
        tokens.append(root)
        stop = _stop_index(tokens, 0, eos, dcfg.max_new_tokens)
        while stop is None:
            if captured is not None:
                n_have = len(tokens)  # the next step is queued unless these tokens end the generation

                def more(new: list[int], n_have: int = n_have) -> bool:
                    return not eos.intersection(new) and n_have + len(new) < dcfg.max_new_tokens

                step = captured.step(generator, draft, check, more)
                acc, nxt, ranks = step.accepted, step.next_token, step.ranks
                res.tree_depth.append(step.tree_depth)
                res.drafted.append(step.drafted)
            else:
                acc, nxt, ranks = _host_step(drafter, runner, root, dcfg, generator, stats, res, draft, check)
            res.target_forwards += 1
            res.accepted_ranks.append(ranks)
            res.accepted.append(len(acc))
            n0 = len(tokens)
            tokens.extend(acc)
            tokens.append(nxt)
            root = nxt
            stop = _stop_index(tokens, n0, eos, dcfg.max_new_tokens)
        del tokens[stop:]
    res.wall_s, res.draft_s, res.verify_s = wall.total, draft.total, check.total
    res.calib, res.rank_counts = stats.finish()
    return res


def _host_step(
    drafter: Drafter, runner, root: int, dcfg: DecodingConfig, generator, stats: DraftStats,
    res: GenResult, draft: _Timer, check: _Timer,
) -> tuple[list[int], int, list[int]]:  # fmt: skip
    """One per-call speculative step: propose, the target step, verification, KV keep, commit. Returns (accepted
    draft tokens, next token, their ranks); appends the tree's depth and size to ``res``."""
    feats_on = bool(drafter.needs_features)
    with draft:
        tree = drafter.propose(root, dcfg, generator)
    with check:
        # static runners: rows for the largest tree the drafter may return
        out = runner.step(
            root, tree, feats_on, rows=TreeShape.of(dcfg).verify_rows(drafter.extra_nodes(dcfg))
        )
        if dcfg.temperature > 0:  # each visited row is warped in float32: no copy of all (N+1, V) logits
            path, nxt = _verify.verify_sampled(tree, out.logits[0], dcfg, generator)
        else:
            path, nxt = _verify.verify_greedy(tree, out.logits[0])
    # the small host copies first, while the device queue is empty after verification
    acc = tree.tokens[path].tolist() if path else []
    tree_depth, ranks = stats.add(tree, path)
    res.tree_depth.append(tree_depth)
    res.drafted.append(tree.size)
    rows = [0] + [i + 1 for i in path]
    feats = out.features[0, rows] if feats_on else None  # read before the next step reuses buffers
    runner.keep(rows)
    with draft:
        drafter.commit([root, *acc], feats)
    return acc, nxt, ranks
