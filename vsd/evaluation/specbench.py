"""Spec-Bench answer files from the eval's rows (``eval.answers=true``).

Spec-Bench (hemingkx/Spec-Bench) writes one JSON line per question to ``model_answer/<model_id>.jsonl``:
``{"question_id", "category", "answer_id", "model_id", "choices": [{"index": 0, "turns": [text, ...],
"decoding_steps": [...], "new_tokens": [...], "wall_time": [...], "accept_lengths": [...]}], "tstamp"}``, one
list entry per turn; its evaluation/speed.py reads ``new_tokens``, ``wall_time``, ``accept_lengths`` and the
baseline's ``turns``. vsd writes the speculative run and plain AR (the baseline) from the same rows, so
Spec-Bench's own script can compare them. A turn too long for the context was not decoded: it is left out of
its question, and a question with no decoded turn is left out.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from vsd.records import atomic_write_text

ANSWER_DIR = "model_answer"


def _answer_id(model_id: str, qid: Any) -> str:
    return hashlib.sha256(f"{model_id}:{qid}".encode()).hexdigest()[:22]  # Spec-Bench: a shortuuid


def _turn(run: dict[str, Any], method: str, decode) -> dict[str, Any]:
    n = int(run["new_tokens"])
    if method == "spec":
        # a verification step yields its accepted draft tokens plus the target's own (Spec-Bench's count)
        lengths = [int(a) + 1 for a in run.get("accepted") or []]
    else:
        lengths = [1] * n  # plain AR: one token per step
    return {
        "text": decode(list(run.get("ids") or [])),
        "decoding_steps": len(lengths),
        "new_tokens": n,
        "wall_time": float(run["wall_s"]),
        "accept_lengths": lengths,
    }


def answers(
    rows: list[dict[str, Any]], records: list[dict[str, Any]], method: str, model_id: str, decode
) -> list[dict[str, Any]]:
    """Spec-Bench answer objects for ``method`` (``spec`` or ``ar``), one per question, in record order.
    ``decode`` turns token ids into text (the target's tokenizer)."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if "skipped" not in r and r.get(method):
            by_id.setdefault(str(r["id"]), []).append(r)
    out = []
    now = time.time()
    for rec in records:
        turns = sorted(by_id.get(str(rec["id"]), []), key=lambda r: int(r["turn"]))
        if not turns:
            continue
        parts = [_turn(r[method], method, decode) for r in turns]
        qid = rec.get("question_id", rec["id"])
        choice = {"index": 0, "turns": [p["text"] for p in parts]}
        for key in ("decoding_steps", "new_tokens", "wall_time"):
            choice[key] = [p[key] for p in parts]
        choice["accept_lengths"] = [n for p in parts for n in p["accept_lengths"]]
        out.append(
            {
                "question_id": qid,
                "category": rec["category"],
                "answer_id": _answer_id(model_id, qid),
                "model_id": model_id,
                "choices": [choice],
                "tstamp": now,
            }
        )
    return out


def write_answers(
    run_dir: Path, rows: list[dict[str, Any]], records: list[dict[str, Any]], model_id: str, decode
) -> dict[str, Path]:
    """``<run_dir>/model_answer/<model_id>.jsonl`` (speculative) and ``<model_id>-baseline.jsonl`` (plain AR,
    when the eval ran it); returns {method: file}."""
    out_dir = Path(run_dir) / ANSWER_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for method, name in (("spec", model_id), ("ar", f"{model_id}-baseline")):
        objs = answers(rows, records, method, name, decode)
        if not objs:
            continue
        f = out_dir / f"{name}.jsonl"
        atomic_write_text(f, "".join(json.dumps(o) + "\n" for o in objs))
        files[method] = f
    return files
