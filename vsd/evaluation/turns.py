"""Per prompt turn: plain AR, speculative decoding and the HF peers on the same prompt ids, in one process.

Every method decodes the same token ids (chat template applied once per turn); counts are token ids, never
re-tokenised text. MT-Bench turn 2 is conditioned on the model's OWN turn-1 answer, taken from the AR run
(the reference output), so every method sees the identical turn-2 prompt.

A row of ``eval.jsonl`` (one per prompt turn):
``{"id", "category", "source", "turn", "prompt_tokens", "temperature",
   "ar":   {"new_tokens", "target_forwards", "wall_s", "ids"} | None,
   "spec": {"new_tokens", "target_forwards", "wall_s", "draft_s", "drafted", "accepted", "tree_depth", "ids",
            "accepted_ranks", "calib", "rank_counts"},
   "peers": {name: {"new_tokens", "target_forwards", "wall_s", "match"} | {"skipped": reason}},
   "match": bool | None, "diverge_at": int | None, "diverge_gap": float | None, "near_tie": bool | None,
   "eval_key": str}``
``eval_key`` names the settings the row was made with (vsd.evaluation.stage.eval_key): rerunning an
interrupted run reuses its finished rows with the same key and decodes the rest.
``match`` (T=0 only) says whether the speculative ids equal the AR ids; at the first differing index,
``diverge_gap`` is the AR top-1 minus top-2 logit gap there and ``near_tie`` whether it is below
``decoding.near_tie_eps`` or equal to it (bf16 kernels may flip a near-tie; see method.md "Metrics").
``accepted_ranks`` holds, per verification step, the draft's sibling ranks along the accepted path (empty when
nothing was accepted); ``calib`` maps a depth ("1", "2", ...) to CALIB_BINS rows ``[count, sum of confidence,
sum accepted]`` over the nodes whose parent was accepted, binned by the draft's confidence exp(logq);
``rank_counts`` maps a depth to per-rank ``[nodes whose parent was accepted, accepted]`` (see
vsd.decoding.diagnostics.DraftStats).

A turn too long for the target's context is not decoded (docs/eval.md, "Prompts longer than the context"):
it needs ``prompt_tokens + decoding.max_new_tokens + verify rows <= limit`` (verify rows: 1 +
``decoding.total_tokens`` for trees, 1 + ``decoding.depth`` for chains; limit: the target's
``max_position_embeddings``, and ``decoding.max_len`` if smaller when a static runner decodes). Its row is
``{"id", "category", "source", "turn", "prompt_tokens", "skipped": reason}``, and so are the rows of the
record's later turns (they would extend it); metrics count them as ``eval/skipped_too_long``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vsd.config.schema import DecodingConfig, EvalConfig
from vsd.errors import UserError
from vsd.records import append_jsonl
from vsd.runtime import synchronize

if TYPE_CHECKING:  # the measurement pulls the decoding engine; this module imports it per method
    from vsd.decoding.shape_measure import ShapeChoice


def _seed_for(seed: int, rid: str, turn: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{rid}:{turn}".encode()).digest()[:6], "big")


def _generator(target, seed: int) -> torch.Generator:
    g = torch.Generator(device=target.device)
    g.manual_seed(seed)
    return g


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """First index where two id lists differ (a length difference counts); None when identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _gen_row(res, extra: bool) -> dict[str, Any]:
    row = {
        "new_tokens": len(res.tokens),
        "target_forwards": int(res.target_forwards),
        "wall_s": float(res.wall_s),
        "ids": [int(t) for t in res.tokens],
    }
    if extra:
        row.update(
            draft_s=float(res.draft_s),
            drafted=[int(x) for x in res.drafted],
            accepted=[int(x) for x in res.accepted],
            tree_depth=[int(x) for x in res.tree_depth],
            accepted_ranks=[[int(r) for r in step] for step in res.accepted_ranks],
            calib=_per_depth(res.calib),
            rank_counts=_per_depth(res.rank_counts),
        )
    return row


def _per_depth(t: torch.Tensor | None) -> dict[str, list[list[float]]]:
    """(D, B, C) accumulator -> {"depth": [[C values] x B]} for the depths that saw any node (JSON keys are
    strings). Counts are whole numbers; sums are rounded to 6 digits to keep rows small."""
    if t is None:
        return {}
    out = {}
    for d in range(t.shape[0]):
        if t[d, :, 0].sum() > 0:
            out[str(d + 1)] = [[round(float(v), 6) for v in cell] for cell in t[d]]
    return out


class ForwardCounter:
    """Counts calls of the target's HF module (for HF ``generate`` peers, which expose no counts)."""

    def __init__(self, model: torch.nn.Module):
        self.n = 0
        self._h = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        self.n += 1

    def close(self) -> None:
        self._h.remove()


def hf_generate(
    target,
    prompt_ids: list[int],
    dcfg: DecodingConfig,
    generator_seed: int,
    **kw: Any,
) -> dict[str, Any]:
    """HF ``model.generate`` on the same ids, with its target forwards counted and wall time measured.

    ``kw``: HF generate options (``prompt_lookup_num_tokens=...``). Sampling (T>0) uses the same
    warp settings as our engine (temperature, top-k, top-p); HF draws from the global torch RNG.
    """
    x = torch.tensor([prompt_ids], device=target.device)
    sample = dcfg.temperature > 0
    gen_kw: dict[str, Any] = dict(
        max_new_tokens=dcfg.max_new_tokens,
        do_sample=sample,
        attention_mask=torch.ones_like(x),
        eos_token_id=sorted(target.eos_token_ids) or None,
        pad_token_id=target.tokenizer.pad_token_id,
    )
    if sample:
        # top_k=0 switches HF's default top-k (50) off, as target_top_k=0 does in our engine
        gen_kw.update(temperature=dcfg.temperature, top_p=dcfg.top_p, top_k=dcfg.target_top_k)
        torch.manual_seed(generator_seed)
    else:
        gen_kw.update(temperature=None, top_p=None, top_k=None)
    counter = ForwardCounter(target.model)
    try:
        synchronize(target.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = target.model.generate(x, **gen_kw, **kw)
        synchronize(target.device)
        wall = time.perf_counter() - t0
    finally:
        counter.close()
    new = [int(t) for t in out[0, len(prompt_ids) :].tolist()]  # batch of one: no padding after EOS
    return {"new_tokens": len(new), "target_forwards": counter.n, "wall_s": wall, "ids": new}


def hf_prompt_lookup(target, ids: list[int], dcfg: DecodingConfig, seed: int) -> dict[str, Any]:
    """HF's prompt lookup decoding with our n-gram drafter's settings (``depth`` tokens, ``ngram_max``)."""
    return hf_generate(
        target, ids, dcfg, seed, prompt_lookup_num_tokens=dcfg.depth, max_matching_ngram_size=dcfg.ngram_max
    )


# eval.peers name -> run (target, prompt ids, decoding settings, seed) -> its row: a new peer is one function plus
# one entry (and its name in the schema's eval.peers choices; a test ties the two lists)
PEERS: dict[str, Callable[[Any, list[int], DecodingConfig, int], dict[str, Any]]] = {
    "hf_prompt_lookup": hf_prompt_lookup,
}


def verify_rows(dcfg: DecodingConfig) -> int:
    """Rows of one verification forward at most: the root plus the largest tree (or chain) drafted."""
    from vsd.decoding.tree import TreeShape

    return TreeShape.of(dcfg).verify_rows()


def context_limit(target, dcfg: DecodingConfig) -> tuple[int | None, str]:
    """The most positions one generation may use, and the key it comes from (None: no known limit)."""
    limit = getattr(target.config, "max_position_embeddings", None)
    source = "the target's max_position_embeddings"
    from vsd.decoding.target_runner import Backend

    if Backend.of(dcfg, target.device).static and (limit is None or dcfg.max_len < limit):
        limit, source = dcfg.max_len, "decoding.max_len"
    return limit, source


def too_long(n_prompt: int, target, dcfg: DecodingConfig) -> str | None:
    """Why a prompt of ``n_prompt`` tokens cannot be decoded within the context, or None when it fits."""
    limit, source = context_limit(target, dcfg)
    need = n_prompt + dcfg.max_new_tokens + verify_rows(dcfg)
    if limit is None or need <= limit:
        return None
    return (
        f"too long: prompt {n_prompt} + max_new_tokens {dcfg.max_new_tokens} + verify rows "
        f"{verify_rows(dcfg)} = {need} > {limit} ({source})"
    )


class TurnDecoder:
    """Runs AR, speculative and peer decoding per prompt turn and appends rows to ``out_path``."""

    def __init__(
        self,
        target,
        drafter,
        dcfg: DecodingConfig,
        ecfg: EvalConfig,
        out_path: Path | None,
        shape: ShapeChoice | None = None,
        row_key: str | None = None,
    ):
        """``dcfg``: the configured decoding settings, which the HF peers follow; the speculative run drafts
        ``shape`` (vsd.decoding.shape_measure.resolve_shape; None: the configured one), so under
        ``decoding.shape=auto`` the peers do not depend on our chosen tree.
        ``row_key`` (vsd.evaluation.stage.eval_key) is written into every row as ``eval_key``: a resumed eval
        reuses the rows whose key matches."""
        self.target, self.drafter, self.ecfg = target, drafter, ecfg
        self.dcfg = shape.decoding(dcfg) if shape is not None else dcfg
        self.peer_dcfg = dcfg
        self.out_path = out_path
        self.row_key = row_key

    # ------------------------------------------------------------------ one method each
    def _ar(self, ids: list[int], seed: int):
        from vsd.decoding.engine import generate_ar

        gaps = self.dcfg.temperature == 0
        return generate_ar(
            self.target, ids, self.dcfg, generator=_generator(self.target, seed), record_gaps=gaps
        )

    def _spec(self, ids: list[int], seed: int):
        from vsd.decoding.engine import generate_spec

        return generate_spec(
            self.target, self.drafter, ids, self.dcfg, generator=_generator(self.target, seed)
        )

    def _peer(self, name: str, ids: list[int], seed: int) -> dict[str, Any]:
        if name not in PEERS:
            raise ValueError(f"eval.peers: unknown peer {name!r}")
        return PEERS[name](self.target, ids, self.peer_dcfg, seed)

    # ------------------------------------------------------------------ public
    def first_fitting_prompt(self, records: list[dict[str, Any]]) -> list[int]:
        """Ids of the first record's first turn that fits the context (warm-up, cost model); a one-line
        UserError when none does: then every turn would be skipped (later turns only grow)."""
        for rec in records:
            ids = self.target.chat_ids([{"role": "user", "content": rec["turns"][0]}])
            if too_long(len(ids), self.target, self.dcfg) is None:
                return ids
        first = self.target.chat_ids([{"role": "user", "content": records[0]["turns"][0]}])
        raise UserError(
            f"eval: every prompt is too long for the context, e.g. {records[0]['id']}: "
            f"{too_long(len(first), self.target, self.dcfg)}; lower decoding.max_new_tokens or use shorter prompts"
        )

    def warmup(self, prompt_ids: list[int]) -> None:
        """``eval.warmup`` untimed rounds of every method (first calls run 2-4x slower: allocator, kernels)."""
        for i in range(self.ecfg.warmup):
            if self.ecfg.ar_baseline:
                self._ar(prompt_ids, i)
            self._spec(prompt_ids, i)
            for name in self.ecfg.peers:
                self._peer(name, prompt_ids, i)

    def run_turn(
        self, record: dict[str, Any], turn: int, prompt_ids: list[int]
    ) -> tuple[dict[str, Any], Any]:
        """One row (see module docstring) and the AR result (or the spec one without AR baseline)."""
        seed = _seed_for(self.ecfg.seed, str(record["id"]), turn)
        ar = self._ar(prompt_ids, seed) if self.ecfg.ar_baseline else None
        spec = self._spec(prompt_ids, seed)
        row: dict[str, Any] = {
            "id": record["id"],
            "category": record["category"],
            "source": record.get("source"),
            "turn": turn,
            "prompt_tokens": len(prompt_ids),
            "temperature": self.dcfg.temperature,
            "ar": _gen_row(ar, extra=False) if ar is not None else None,
            "spec": _gen_row(spec, extra=True),
            "match": None,
            "diverge_at": None,
            "diverge_gap": None,
            "near_tie": None,
        }
        greedy = self.dcfg.temperature == 0
        if ar is not None and greedy:
            div = first_divergence(list(spec.tokens), list(ar.tokens))
            row["match"] = div is None
            if div is not None:
                row["diverge_at"] = div
                gaps = ar.top2_gap or []
                if div < len(gaps):
                    row["diverge_gap"] = float(gaps[div])
                    row["near_tie"] = bool(
                        gaps[div] <= self.dcfg.near_tie_eps
                    )  # 0.25 = one bf16 ULP in [32, 64)
        peers: dict[str, Any] = {}
        for name in self.ecfg.peers:
            p = self._peer(name, prompt_ids, seed)
            if "ids" in p:
                if ar is not None and greedy:
                    p["match"] = p["ids"] == [int(t) for t in ar.tokens]
                del p["ids"]  # the peer's ids add nothing once compared
            peers[name] = p
        row["peers"] = peers
        return row, (ar if ar is not None else spec)

    def run(
        self,
        records: list[dict[str, Any]],
        progress: bool = True,
        on_row: Callable[[dict], None] | None = None,
        done: dict[tuple[str, int], dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Every turn of every record (up to ``eval.max_turns``); rows are appended to the JSONL as they come.
        ``done``: rows of an interrupted attempt by (id, turn), reused as they are (a later turn is conditioned
        on the reused row's answer, and every turn's sampling seed depends on its id and turn only)."""
        from tqdm.auto import tqdm

        if not records:
            return []
        done = done or {}
        total = sum(min(len(r["turns"]), self.ecfg.max_turns) for r in records)
        if len(done) < total:
            self.warmup(self.first_fitting_prompt(records))
        rows: list[dict[str, Any]] = []
        bar = tqdm(total=total, desc="eval", unit="turn", disable=not progress, dynamic_ncols=True)
        bar.update(len(done))

        def emit(row: dict[str, Any]) -> None:
            rows.append(row)
            if self.out_path is not None:
                append_jsonl(self.out_path, row)

        try:
            for rec in records:
                messages: list[dict[str, str]] = []
                skipped = None
                for turn, text in enumerate(rec["turns"][: self.ecfg.max_turns]):
                    messages.append({"role": "user", "content": text})
                    if (old := done.get((str(rec["id"]), turn))) is not None:
                        rows.append(old)
                        if "skipped" in old:
                            skipped = skipped or f"follows skipped turn {turn} ({old['skipped']})"
                        else:
                            answer = (old["ar"] or old["spec"])["ids"]  # what the live run conditioned on
                            messages.append({"role": "assistant", "content": self.target.decode(answer)})
                        continue
                    ids = self.target.chat_ids(messages) if skipped is None else None
                    reason = too_long(len(ids), self.target, self.dcfg) if ids is not None else skipped
                    if reason is not None:
                        skipped = skipped or f"follows skipped turn {turn} ({reason})"
                        emit(
                            {
                                "id": rec["id"],
                                "category": rec["category"],
                                "source": rec.get("source"),
                                "turn": turn,
                                "prompt_tokens": len(ids) if ids is not None else None,
                                "skipped": reason,
                                **({"eval_key": self.row_key} if self.row_key else {}),
                            }
                        )
                        bar.update(1)
                        continue
                    row, ref = self.run_turn(rec, turn, ids)
                    if self.row_key:
                        row["eval_key"] = self.row_key
                    emit(row)
                    if on_row is not None:
                        on_row(row)
                    # The model's own answer (AR reference) conditions the next turn.
                    messages.append({"role": "assistant", "content": self.target.decode(list(ref.tokens))})
                    s = row["spec"]
                    bar.set_postfix(tau=f"{s['new_tokens'] / max(s['target_forwards'], 1):.2f}")
                    bar.update(1)
        finally:
            bar.close()
        return rows
