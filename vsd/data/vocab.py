"""The draft vocabulary: the most frequent target tokens in the training responses.

Maps: ``d2t`` (V_d,) long = target ids of the draft vocab, sorted ascending; ``t2d`` (V,) long = draft index
of each target id, -1 where absent (so ``t2d[d2t] == arange(V_d)``). Coverage = fraction of response tokens
(loss_mask) whose id is in the draft vocab: the ceiling on how often the draft can propose the target's token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vsd.errors import UserError


def token_counts(seqs: Iterable[dict[str, torch.Tensor]], vocab_size: int) -> torch.Tensor:
    """(V,) long: occurrences of each target id among the response tokens (loss_mask) of ``seqs``."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for s in seqs:
        counts += torch.bincount(s["input_ids"][s["loss_mask"]], minlength=vocab_size)[:vocab_size]
    return counts


def build_vocab(counts: torch.Tensor, draft_vocab_size: int) -> dict[str, Any]:
    """Top-``draft_vocab_size`` ids by count (ties: lower id first), capped at the target vocab.

    Returns {"d2t", "t2d", "coverage", "size"}; ids never seen fill the remainder when the responses
    hold fewer distinct tokens than the draft vocab (they cost nothing and keep V_d as configured).
    """
    V = counts.numel()
    vd = min(draft_vocab_size, V)
    # Stable sort on -count keeps ascending id order among ties: deterministic across runs.
    order = torch.sort(-counts, stable=True).indices[:vd]
    d2t = torch.sort(order).values
    t2d = torch.full((V,), -1, dtype=torch.long)
    t2d[d2t] = torch.arange(vd)
    total = int(counts.sum())
    coverage = float(counts[d2t].sum()) / total if total else 0.0
    return {"d2t": d2t, "t2d": t2d, "coverage": coverage, "size": vd}


def save_vocab(path: Path, vocab: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """``<path>`` (.safetensors with d2t, t2d) and a ``.json`` sidecar (size, coverage, extra)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"d2t": vocab["d2t"].contiguous(), "t2d": vocab["t2d"].contiguous()}, str(path))
    info = {
        "size": vocab["size"],
        "coverage": vocab["coverage"],
        "target_vocab_size": int(vocab["t2d"].numel()),
    }
    path.with_suffix(".json").write_text(json.dumps({**info, **(extra or {})}, indent=1))
    return path


def load_vocab(path: str | Path) -> dict[str, torch.Tensor]:
    """{"d2t": (V_d,) long, "t2d": (V,) long}; a missing or broken file is a one-line UserError."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"draft vocab file {p} does not exist")
    try:
        t = load_file(str(p))
    except Exception as e:  # noqa: BLE001
        raise UserError(f"draft vocab file {p} is unreadable ({' '.join(str(e).split())[:120]})") from None
    if set(t) != {"d2t", "t2d"}:
        raise UserError(f"draft vocab file {p} must hold d2t and t2d, has {sorted(t)}")
    return {"d2t": t["d2t"].long(), "t2d": t["t2d"].long()}
