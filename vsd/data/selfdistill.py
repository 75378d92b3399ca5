"""Self-distillation: the target writes the responses to the training prompts, cached on disk.

Cache: ``{cache_dir}/selfdistill/<key>/`` with ``key = hash(target name + weights fingerprint, prompt ids and
texts, generation settings)``. One shard per generation batch (atomic), so an interrupted build (even
``kill -9``) resumes from the finished shards; ``manifest.json`` marks completion; a FileLock makes a second
job wait and then reuse the first job's result instead of generating twice.

Shard tensors: ``input_ids`` (N,) int32, all sequences concatenated (prompt through chat template, then the
response up to and including the first EOS, cut at ``max_seq_len``); ``offsets`` (n+1,) int64;
``prompt_lens`` (n,) int32; ``prompt_index`` (n,) int64 = row of ``prompts.jsonl``. Whole conversations
(``dataset.turns=all``, vsd/data/multiturn.py) add ``loss_mask`` (N,) uint8 (1 on assistant tokens) and
``turns`` (n,) int32 (assistant turns in the sequence); ``prompt_lens`` is then the first turn's context.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from vsd.config.schema import DatasetConfig
from vsd.data.chat import ChatFormat, first_turn
from vsd.data.generate import generate_batch
from vsd.data.multiturn import selfdistill_sequences, source_sequences
from vsd.data.shards import (
    barrier,
    content_key,
    done_shards,
    load_shard,
    locked_build,
    rank_shards,
    read_manifest,
    save_shard,
    shard_name,
    target_fingerprint,
    write_manifest,
)
from vsd.data.sources import Prompt, prompt_text
from vsd.errors import UserError
from vsd.runtime import DistInfo

GEN_VERSION = 1  # bump when generation or the shard format changes: invalidates cached data


class Interrupted(RuntimeError):
    """Raised by ``stop_after_shards`` (tests): simulates a job killed after k shards."""


def selfdistill_desc(
    target: Any, prompts: list[Prompt], dcfg: DatasetConfig, fmt: ChatFormat | None = None
) -> dict[str, Any]:
    """Everything the generated data depends on (its hash is the cache key). The defaults of the keys added
    since (``turns``, ``chat_template``, ``system_prompt``) leave the description, hence existing keys, as
    they were."""
    desc = _base_desc(target, prompts, dcfg)
    desc.update((fmt or ChatFormat(target, dcfg)).desc())
    if dcfg.turns != "first":
        desc["turns"] = dcfg.turns
        # whole conversations: every turn's text (user turns; the source's replies under responses=source)
        desc["prompts"] = content_key([(p["id"], p["messages"]) for p in prompts], 32)
    return desc


def _base_desc(target: Any, prompts: list[Prompt], dcfg: DatasetConfig) -> dict[str, Any]:
    if dcfg.responses == "source":  # nothing is generated: the responses are the source's own, tokenised
        return {
            "version": GEN_VERSION,
            "responses": "source",
            "target": target.name,  # its tokenizer and chat template make the ids
            "prompts": content_key([(p["id"], prompt_text(p), p.get("response")) for p in prompts], 32),
            "num_prompts": len(prompts),
            "max_new_tokens": dcfg.gen_max_new_tokens,
            "max_seq_len": dcfg.max_seq_len,
        }
    return {
        "version": GEN_VERSION,
        "target": target.name,
        "weights": target_fingerprint(target),
        "dtype": str(target.dtype),
        "prompts": content_key([(p["id"], prompt_text(p)) for p in prompts], 32),
        "num_prompts": len(prompts),
        "temperature": dcfg.gen_temperature,
        "max_new_tokens": dcfg.gen_max_new_tokens,
        "max_seq_len": dcfg.max_seq_len,
        "batch_size": dcfg.gen_batch_size,  # padding changes low-order bits of bf16 logits
        "seed": dcfg.seed,
    }


def _batches(prompts: list[Prompt], ids: list[list[int]], bs: int) -> list[list[int]]:
    """Prompt indices in batches of ``bs``, grouped by length so that left padding wastes little."""
    order = sorted(range(len(prompts)), key=lambda i: (len(ids[i]), i))
    return [order[i : i + bs] for i in range(0, len(order), bs)]


def source_response_ids(
    fmt: ChatFormat, prompt: Prompt, prompt_ids: list[int], max_new_tokens: int
) -> list[int]:
    """The source's own reply as response ids: the chat template over [user, assistant], minus the prompt, up to
    and including the first EOS (the end-of-turn token), at most ``max_new_tokens`` (the generation budget, so
    both kinds of data have the same response length limit)."""
    target = fmt.target
    msgs = [*first_turn(prompt["messages"]), {"role": "assistant", "content": prompt["response"]}]
    full = fmt.ids(msgs, False)
    if full[: len(prompt_ids)] != prompt_ids:
        raise UserError(
            f"dataset.responses=source: the chat template of {target.name} renders prompt {prompt['id']!r} "
            "differently with its reply appended; this target cannot use source responses"
        )
    resp = full[len(prompt_ids) :]
    eos = target.eos_token_ids
    cut = next((j + 1 for j, t in enumerate(resp) if t in eos), len(resp))
    return resp[: min(cut, max_new_tokens)]


def build_selfdistill(
    target: Any,
    prompts: list[Prompt],
    dcfg: DatasetConfig,
    cache_dir: Path,
    progress: bool = True,
    stop_after_shards: int | None = None,
    dist_info: DistInfo | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Generate (or reuse) the self-distilled sequences; returns (cache dir, stats).

    Under torchrun (``dist_info.world`` > 1) every rank generates its own shards (shard b on rank b % world,
    each with the target on its own device) and rank 0 writes the manifest once all are done; call it on every
    rank. Shards are seeded by their index, so the data does not depend on the number of ranks.

    stats: sequences, prompt/response/total tokens, responses ended by EOS, sequences cut at max_seq_len
    (whole conversations: assistant turns), generation seconds and tok/s of this call (this rank's part),
    ``reused`` (1 if nothing was generated), shards computed (by this rank).
    """
    info = dist_info or DistInfo()
    if dcfg.max_prompt_tokens >= dcfg.max_seq_len:
        raise UserError(
            f"dataset.max_prompt_tokens: {dcfg.max_prompt_tokens} leaves no room for a response within "
            f"dataset.max_seq_len={dcfg.max_seq_len}"
        )
    fmt = ChatFormat(target, dcfg)
    desc = selfdistill_desc(target, prompts, dcfg, fmt)
    d = Path(cache_dir) / "selfdistill" / content_key(desc)
    d.parent.mkdir(parents=True, exist_ok=True)
    with locked_build(d, info) as man:
        if man is not None:
            return d, {**man["stats"], "reused": 1, "shards_computed": 0, "gen_seconds": 0.0}
        ids = [fmt.ids(first_turn(p["messages"])) for p in prompts]  # each conversation's first context
        batches = _batches(prompts, ids, dcfg.gen_batch_size)
        if info.main:
            d.mkdir(exist_ok=True)
            from vsd.records import atomic_write_json

            atomic_write_json(d / "key.json", desc)
            with open(d / "prompts.jsonl", "w") as fh:  # rewritten identically on resume (same key)
                for p in prompts:
                    row = {"id": p["id"], "messages": p["messages"], "source": p["source"]}
                    if dcfg.responses == "source" and dcfg.turns == "first":
                        row["response"] = p["response"]
                    fh.write(json.dumps(row) + "\n")
        barrier(info)
        mine = rank_shards(len(batches), info)
        done = set(done_shards(d, len(batches), mine))
        todo = [b for b in mine if b not in done]
        t0 = time.time()
        new_tokens = 0
        bar = tqdm(
            total=sum(len(batches[b]) for b in mine),
            initial=sum(len(batches[b]) for b in done),
            desc="self-distill" if dcfg.responses == "target" else "tokenise source responses",
            unit="prompt",
            disable=not (progress and info.main),
        )
        for k, b in enumerate(todo):
            if stop_after_shards is not None and k >= stop_after_shards:
                bar.close()
                raise Interrupted(f"stopped after {k} shards (test)")
            rows = batches[b]
            # Seeded per shard: a resumed build samples the same responses as an uninterrupted one.
            seed = dcfg.seed * 1_000_003 + b
            if dcfg.turns == "all":
                tensors, n_new = _conversation_shard(fmt, [prompts[i] for i in rows], dcfg, seed)
                new_tokens += n_new
            else:
                if dcfg.responses == "source":
                    resp = [
                        source_response_ids(fmt, prompts[i], ids[i], dcfg.gen_max_new_tokens) for i in rows
                    ]
                else:
                    with torch.random.fork_rng():
                        torch.manual_seed(seed)
                        resp = generate_batch(
                            target, [ids[i] for i in rows], dcfg.gen_max_new_tokens, dcfg.gen_temperature
                        )
                seqs = [(ids[i] + r)[: dcfg.max_seq_len] for i, r in zip(rows, resp)]
                new_tokens += sum(len(r) for r in resp)
                lens = torch.tensor([len(s) for s in seqs])
                tensors = {
                    "input_ids": torch.tensor([t for s in seqs for t in s], dtype=torch.int32),
                    "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]),
                    "prompt_lens": torch.tensor([len(ids[i]) for i in rows], dtype=torch.int32),
                }
            save_shard(d / shard_name(b), {**tensors, "prompt_index": torch.tensor(rows, dtype=torch.long)})
            bar.update(len(rows))
            bar.set_postfix(tok_s=f"{new_tokens / max(time.time() - t0, 1e-9):.0f}")
        bar.close()
        gen_seconds = time.time() - t0
        barrier(info)  # every rank's shards are written
        if info.main:
            stats = _stats(d, len(batches), target.eos_token_ids, dcfg.max_seq_len)
            write_manifest(d, len(batches), {"key": desc, "stats": stats})
        barrier(info)
        stats = read_manifest(d)["stats"]
    return d, {
        **stats,
        "reused": int(not todo),
        "shards_computed": len(todo),
        "gen_seconds": round(gen_seconds, 3),
        "gen_tokens_per_s": round(new_tokens / gen_seconds, 1) if todo and gen_seconds > 0 else None,
    }


def _conversation_shard(
    fmt: ChatFormat, prompts: list[Prompt], dcfg: DatasetConfig, seed: int
) -> tuple[dict[str, torch.Tensor], int]:
    """One shard of whole conversations (``dataset.turns=all``): its tensors and the new tokens generated."""
    if dcfg.responses == "source":
        seqs, n_new = source_sequences(fmt, prompts, dcfg), 0
    else:
        seqs, n_new = selfdistill_sequences(fmt, prompts, dcfg, seed)
    lens = torch.tensor([len(s["ids"]) for s in seqs])
    return {
        "input_ids": torch.tensor([t for s in seqs for t in s["ids"]], dtype=torch.int32),
        "loss_mask": torch.tensor([m for s in seqs for m in s["mask"]], dtype=torch.uint8),
        "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]),
        "prompt_lens": torch.tensor([s["first_start"] for s in seqs], dtype=torch.int32),
        "turns": torch.tensor([s["turns"] for s in seqs], dtype=torch.int32),
    }, n_new


def _stats(d: Path, n_shards: int, eos: set[int], max_seq_len: int) -> dict[str, Any]:
    seqs = load_sequences(d, n_shards)
    response = sum(int(s["loss_mask"].sum()) for s in seqs)
    total = sum(len(s["input_ids"]) for s in seqs)
    out = {
        "sequences": len(seqs),
        "prompt_tokens": total - response,  # everything not trained on (turns=first: the prompts)
        "response_tokens": response,
        "total_tokens": total,
        "ended_with_eos": sum(int(s["input_ids"][-1]) in eos for s in seqs),
        "cut_at_max_seq_len": sum(len(s["input_ids"]) >= max_seq_len for s in seqs),
    }
    if seqs and "turns" in seqs[0]:
        out["assistant_turns"] = sum(s["turns"] for s in seqs)
    return out


def load_sequences(d: Path, n_shards: int | None = None) -> list[dict[str, Any]]:
    """All sequences of a self-distill cache dir, in prompt order.

    Each: ``input_ids`` (T,) long, ``loss_mask`` (T,) bool (True on response tokens), ``prompt_len`` int,
    ``prompt_index`` int; whole conversations also ``turns`` int (assistant turns).
    """
    d = Path(d)
    man = read_manifest(d)
    if n_shards is None:
        if man is None:
            raise UserError(f"self-distill cache {d} is incomplete (no manifest); rerun the data stage")
        n_shards = len(man["shards"])
    sha = {s["file"]: s["sha256"] for s in man["shards"]} if man else {}
    out = []
    for b in range(n_shards):
        t = load_shard(d / shard_name(b), sha.get(shard_name(b)))
        off = t["offsets"].tolist()
        for j in range(len(off) - 1):
            ids = t["input_ids"][off[j] : off[j + 1]].long()
            pl = int(t["prompt_lens"][j])
            if "loss_mask" in t:  # whole conversations: the mask is stored
                mask = t["loss_mask"][off[j] : off[j + 1]].bool()
            else:
                mask = torch.zeros(len(ids), dtype=torch.bool)
                mask[pl:] = True
            seq = {
                "input_ids": ids,
                "loss_mask": mask,
                "prompt_len": pl,
                "prompt_index": int(t["prompt_index"][j]),
            }
            if "turns" in t:
                seq["turns"] = int(t["turns"][j])
            out.append(seq)
    out.sort(key=lambda s: s["prompt_index"])
    return out
