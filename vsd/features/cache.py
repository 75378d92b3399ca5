"""What the draft trainer needs of the target, per training sequence, cached in shards.

Per sequence of T tokens:
- ``features`` (T, 3H) bf16: the hidden states entering the three EAGLE-3 feature layers, concatenated
  (exactly ``Target.forward(..., output_features=True).features``);
- ``target_hidden`` (T, H) bf16: the target's final (post-norm) hidden state. ``lm_head(target_hidden)``
  gives the target logits (checked at build time), so the trainer gets the target distribution over the
  draft vocab exactly and cheaply as ``target_hidden @ W_lm[d2t].T`` without storing (T, V) logits.

Cache dir ``{cache_dir}/features/<key>/``, key = hash(format version, self-distill data key (which already
holds the target name, weights fingerprint and dtype), target name, feature layers). Shards of
``SEQS_PER_SHARD`` sequences (atomic; a killed build resumes), ``manifest.json`` with per-shard sha256, and a
FileLock so two jobs starting together build it once. The size is checked against the free disk before any
compute; under torchrun the ranks split the shards. The trainer reads the shards through memory maps
(vsd/features/dataset.py).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vsd.data.selfdistill import Interrupted, load_sequences
from vsd.data.shards import (
    barrier,
    content_key,
    dir_size_mb,
    done_shards,
    locked_build,
    rank_shards,
    read_manifest,
    save_shard,
    shard_name,
    write_manifest,
)
from vsd.errors import UserError
from vsd.runtime import DistInfo

FEAT_VERSION = 1  # bump when what is stored changes
SEQS_PER_SHARD = 32  # ~40 MB per shard for SmolLM2 at ~270 tokens per sequence


@torch.no_grad()
def compute_item(target: Any, input_ids: torch.Tensor, check_logits: bool = False) -> dict[str, Any]:
    """Features of one sequence: {"features": (T, 3H) bf16, "target_hidden": (T, H) bf16} (on CPU).

    One unpadded batch-1 forward, so the cache and ``train.features=online`` give identical tensors.
    ``check_logits`` also runs the LM head and returns ``lm_head_max_abs_diff`` (in the target's dtype,
    before the bf16 cast): 0 when the last hidden state is the one the LM head reads.
    """
    ids = input_ids.view(1, -1).to(target.device)
    # The base model (no LM head): the (T, V) logits are not needed, the hidden states are.
    base = target.model.get_decoder() if hasattr(target.model, "get_decoder") else target.model.model
    out = base(input_ids=ids, use_cache=False, output_hidden_states=True)
    hs = out.hidden_states
    item: dict[str, Any] = {
        "features": target.features_from_hidden(hs)[0].to(torch.bfloat16).cpu(),
        "target_hidden": hs[-1][0].to(torch.bfloat16).cpu(),
    }
    if check_logits:
        ref = target.forward(ids, use_cache=False).logits[0]
        mine = target.model.lm_head(hs[-1][0])
        item["lm_head_max_abs_diff"] = float((ref.float() - mine.float()).abs().max())
    return item


@torch.no_grad()
def compute_items(target: Any, seqs: list[torch.Tensor]) -> list[dict[str, Any]]:
    """:func:`compute_item` for several sequences in ONE right-padded forward (``train.features_batch_size``).

    Right padding leaves every real position's causal context unchanged, so the values equal the batch-1 ones
    up to the low-order bits that a different kernel shape gives (bf16); that is why it is opt-in and part of
    the cache key. On a GPU a batch-1 forward of a small target is launch-bound: batching is ~20x faster.
    """
    lens = [len(s) for s in seqs]
    width = max(lens)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : lens[r]] = s
        mask[r, : lens[r]] = 1
    base = target.model.get_decoder() if hasattr(target.model, "get_decoder") else target.model.model
    out = base(
        input_ids=ids.to(target.device),
        attention_mask=mask.to(target.device),
        use_cache=False,
        output_hidden_states=True,
    )
    feats = target.features_from_hidden(out.hidden_states).to(torch.bfloat16).cpu()
    last = out.hidden_states[-1].to(torch.bfloat16).cpu()
    return [{"features": feats[r, :n], "target_hidden": last[r, :n]} for r, n in enumerate(lens)]


def features_desc(target: Any, data_key: str, batch_size: int = 1) -> dict[str, Any]:
    desc = {
        "version": FEAT_VERSION,
        "data_key": data_key,
        "target": target.name,
        "feature_layers": list(target.feature_layers),
        "seqs_per_shard": SEQS_PER_SHARD,
    }
    if batch_size > 1:  # batch-1 caches keep their keys (and equal train.features=online bit for bit)
        desc["batch_size"] = batch_size
    return desc


def estimate_bytes(tokens: int, sequences: int, shards: int, hidden_size: int) -> int:
    """Bytes of a feature cache: per token (3H + H) bf16 + an int32 id + a mask byte, per sequence two int64
    (offset, index), per shard a safetensors header (under 1 KiB)."""
    return tokens * (8 * hidden_size + 5) + sequences * 16 + shards * 1024


def check_disk(d: Path, need: int, tokens: int, hidden_size: int, verbose: bool = True) -> None:
    """Print the cache's size and refuse (one line) when the disk under ``d`` has less free space."""
    free = shutil.disk_usage(d.parent).free
    if verbose:
        print(
            f"[vsd] feature cache: {tokens:,} tokens x {8 * hidden_size + 5:,} B = ~{need / 2**30:.2f} GiB still to "
            f"write at {d} ({free / 2**30:.1f} GiB free)",
            flush=True,
        )
    if need > free:
        raise UserError(
            f"paths.cache_dir: the feature cache needs ~{need / 2**30:.2f} GiB more at {d.parent} and only "
            f"{free / 2**30:.2f} GiB are free; free space, point paths.cache_dir at a larger disk, or compute "
            "features on the fly with train.features=online"
        )


def build_features(
    target: Any,
    dataset_dir: Path,
    cache_dir: Path,
    progress: bool = True,
    stop_after_shards: int | None = None,
    batch_size: int = 1,
    dist_info: DistInfo | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Build (or reuse) the feature cache of a self-distill dataset; returns (cache dir, stats).

    ``batch_size`` > 1: sequences after the first of each build go through :func:`compute_items` in
    right-padded batches (the first one is still checked against the LM head alone). Before any compute the
    cache's size is printed and checked against the free disk (:func:`check_disk`). Under torchrun
    (``dist_info.world`` > 1) every rank computes its own shards (b % world == rank) and rank 0 writes the
    manifest; call it on every rank.

    stats: sequences, tokens, shards, size_mb, reused (1 if nothing was computed), shards_computed,
    seconds and tokens_per_s of the computation in this call (this rank's part), lm_head_max_abs_diff.
    """
    info = dist_info or DistInfo()
    dataset_dir = Path(dataset_dir)
    desc = features_desc(target, dataset_dir.name, batch_size)
    d = Path(cache_dir) / "features" / content_key(desc)
    d.parent.mkdir(parents=True, exist_ok=True)
    with locked_build(d, info) as man:
        if man is not None:
            check_present(d, man)
            return d, {
                **man["stats"],
                "size_mb": dir_size_mb(d),
                "reused": 1,
                "shards_computed": 0,
                "seconds": 0.0,
                "tokens_per_s": None,
            }
        seqs = load_sequences(dataset_dir)
        n_shards = (len(seqs) + SEQS_PER_SHARD - 1) // SEQS_PER_SHARD
        n_tokens = sum(len(s["input_ids"]) for s in seqs)
        present = sum(p.stat().st_size for p in d.glob("shard_*.safetensors")) if d.exists() else 0
        need = estimate_bytes(n_tokens, len(seqs), n_shards, target.hidden_size) - present
        check_disk(d, need, n_tokens, target.hidden_size, verbose=info.main)
        barrier(info)  # every rank passed the check before anything is written
        if info.main:
            d.mkdir(exist_ok=True)
            from vsd.records import atomic_write_json

            atomic_write_json(d / "key.json", desc)
        barrier(info)
        mine = rank_shards(n_shards, info)
        done = set(done_shards(d, n_shards, mine))
        todo = [b for b in mine if b not in done]
        t0 = time.time()
        tokens = 0
        lm_diff: float | None = None
        bar = tqdm(
            total=sum(min(SEQS_PER_SHARD, len(seqs) - b * SEQS_PER_SHARD) for b in mine),
            initial=sum(min(SEQS_PER_SHARD, len(seqs) - b * SEQS_PER_SHARD) for b in done),
            desc="features",
            unit="seq",
            disable=not (progress and info.main),
        )
        for k, b in enumerate(todo):
            if stop_after_shards is not None and k >= stop_after_shards:
                bar.close()
                raise Interrupted(f"stopped after {k} feature shards (test)")
            rows = range(b * SEQS_PER_SHARD, min(len(seqs), (b + 1) * SEQS_PER_SHARD))
            items = []
            todo_rows = list(rows)
            while todo_rows:
                if lm_diff is None or batch_size == 1:
                    i = todo_rows.pop(0)
                    it = compute_item(target, seqs[i]["input_ids"], check_logits=lm_diff is None)
                    if "lm_head_max_abs_diff" in it:
                        lm_diff = it.pop("lm_head_max_abs_diff")
                        if lm_diff > 1e-3:
                            raise RuntimeError(
                                f"lm_head(last hidden state) differs from the target logits by {lm_diff:.3g}: "
                                "the stored target_hidden would not reproduce the target distribution"
                            )
                    items.append(it)
                    bar.update(1)
                    continue
                chunk, todo_rows = todo_rows[:batch_size], todo_rows[batch_size:]
                items.extend(compute_items(target, [seqs[i]["input_ids"] for i in chunk]))
                bar.update(len(chunk))
            lens = torch.tensor([len(seqs[i]["input_ids"]) for i in rows])
            tokens += int(lens.sum())
            save_shard(
                d / shard_name(b),
                {
                    "input_ids": torch.cat([seqs[i]["input_ids"] for i in rows]).to(torch.int32),
                    "loss_mask": torch.cat([seqs[i]["loss_mask"] for i in rows]),
                    "features": torch.cat([it["features"] for it in items]),
                    "target_hidden": torch.cat([it["target_hidden"] for it in items]),
                    "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]),
                    "seq_index": torch.tensor(list(rows), dtype=torch.long),
                },
            )
            bar.set_postfix(tok_s=f"{tokens / max(time.time() - t0, 1e-9):.0f}")
        bar.close()
        seconds = time.time() - t0
        barrier(info)  # every rank's shards are written
        if info.main:
            stats = {
                "sequences": len(seqs),
                "tokens": n_tokens,
                "shards": n_shards,
                "hidden_size": target.hidden_size,
                "feature_layers": list(target.feature_layers),
                "lm_head_max_abs_diff": lm_diff,
            }
            write_manifest(d, n_shards, {"key": desc, "stats": stats})
        barrier(info)
        stats = read_manifest(d)["stats"]
    return d, {
        **stats,
        "size_mb": dir_size_mb(d),
        "reused": int(not todo),
        "shards_computed": len(todo),
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1) if todo and seconds > 0 else None,
    }


def check_present(d: Path, man: dict[str, Any]) -> None:
    """Cheap check of a complete cache: every shard present with its recorded size (sha256 on load)."""
    for s in man["shards"]:
        p = d / s["file"]
        if not p.exists():
            raise UserError(f"feature cache shard {p} is missing; delete {d} to rebuild the cache")
        if p.stat().st_size != s["bytes"]:
            raise UserError(
                f"feature cache shard {p} is corrupt (size {p.stat().st_size} != {s['bytes']} in the "
                f"manifest); delete {d} to rebuild the cache"
            )
