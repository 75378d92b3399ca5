"""End to end: the eval stage on tiny_random with the n-gram drafter, through the pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from vsd.config import compose
from vsd.pipeline import execute


def test_eval_stage_ngram_tiny(tmp_path):
    overrides = [
        "experiment=smoke",
        "decoding=ngram",
        "stages=[eval]",
        "eval.per_category=1",
        "eval.warmup=1",
        "eval.peers=[hf_prompt_lookup,hf_assisted]",
        "decoding.max_new_tokens=8",
        "threads=1",  # other tests may run beside this one on 2 cores
    ]
    dcfg, _ = compose(overrides)[0]
    threads = torch.get_num_threads()
    try:
        metrics = execute(dcfg, tmp_path)
    finally:
        torch.set_num_threads(threads)  # execute() sets the process-wide pool; leave it as found
    rows = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [(r["category"], r["turn"]) for r in rows] == [("mt_bench", 0), ("mt_bench", 1)]  # both turns
    # Turn 2 is conditioned on the model's own turn-1 (AR) answer: the prompt grew by more than turn 2's text.
    assert rows[1]["prompt_tokens"] > rows[0]["prompt_tokens"] + rows[0]["ar"]["new_tokens"]
    for r in rows:
        assert r["match"] is True and r["spec"]["ids"] == r["ar"]["ids"]  # fp32: exactly lossless
        assert r["ar"]["target_forwards"] == r["ar"]["new_tokens"]
        assert len(r["spec"]["accepted"]) == r["spec"]["target_forwards"] - 1  # prefill + one per step
        assert r["peers"]["hf_assisted"]["skipped"].startswith("no same-tokenizer assistant")
        assert r["peers"]["hf_prompt_lookup"]["match"] is True
    tokens = sum(r["spec"]["new_tokens"] for r in rows)
    assert metrics["eval/tau"] == pytest.approx(tokens / sum(r["spec"]["target_forwards"] for r in rows))
    for key in (
        "eval/speedup",
        "eval/tokens_per_s",
        "eval/ar_tokens_per_s",
        "eval/lossless_match",
        "eval/c_verify",
        "eval/c_draft",
        "eval/speedup_bound",
        "eval/mt_bench/tau",
        "eval/mt_bench/speedup",
        "eval/peer/hf_prompt_lookup/tokens_per_s",
        "eval/peer/hf_prompt_lookup/speedup",
    ):
        assert key in metrics, key
    assert metrics["eval/lossless_match"] == 1.0
    # draft diagnostics: the n-gram drafter's chains are its only (rank 0) choice, each at confidence 1
    for r in rows:
        assert [len(p) for p in r["spec"]["accepted_ranks"]] == r["spec"]["accepted"]
        assert all(c[0] == 0 for cells in r["spec"]["calib"].values() for c in cells[:-1])
    assert metrics["eval/accepted_not_top1"] == 0.0 and "eval/ece" in metrics
    assert (metrics["eval/shape_depth"], metrics["eval/shape_nodes"]) == (5.0, 5.0)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["eval/tau"] == pytest.approx(metrics["eval/tau"])
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["status"] == "completed" and run["eval_info"]["turns"] == 2
    assert run["shape"] == {"mode": "fixed", "depth": 5, "top_k": 1, "nodes": 5}
