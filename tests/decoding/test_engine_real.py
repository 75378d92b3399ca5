"""T=0 on the real default target (SmolLM2-135M-Instruct, bf16) with the n-gram drafter: speculative ids
equal AR ids, or the first divergence starts at a near-tie of the AR logits (top-2 gap < near_tie_eps)."""

from __future__ import annotations

import dataclasses

import pytest

from tests.decoding.helpers import one_thread
from vsd.config import compose
from vsd.decoding.engine import generate_ar, generate_spec
from vsd.decoding.ngram import NgramDrafter
from vsd.models.target import load_target

PROMPTS = [
    "List the days of the week, then list them again in reverse order.",
    "Write a Python function that returns the sum of a list of numbers.",
    "Repeat this sentence twice: the quick brown fox jumps over the lazy dog.",
]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["chain", "tree"])
def test_real_target_bf16_matches_ar_up_to_near_ties(mode):
    _, cfg = compose(["decoding=ngram"])[0]
    try:
        target = load_target(cfg.model, cfg.paths.cache_dir, "cpu", cfg.dtype)
    except Exception as e:  # the embedded GGUF package may be missing on a bare checkout
        pytest.skip(f"default target unavailable: {e}")
    d = dataclasses.replace(cfg.decoding, mode=mode, temperature=0.0, max_new_tokens=48)
    with one_thread():
        _check(target, d)


def _check(target, d):
    report = []
    accepted = 0
    for text in PROMPTS:
        ids = target.chat_ids([{"role": "user", "content": text}])
        ar = generate_ar(target, ids, d, record_gaps=True)
        sp = generate_spec(target, NgramDrafter(target.vocab_size), ids, d)
        accepted += sum(sp.accepted)
        assert all(0 <= a <= d.depth for a in sp.accepted)
        if sp.tokens == ar.tokens:
            report.append("match")
            continue
        j = next(i for i, (a, b) in enumerate(zip(ar.tokens, sp.tokens)) if a != b)
        gap = ar.top2_gap[j]
        report.append(f"diverge@{j} gap={gap:.4f}")
        # <=: bf16 logits are quantised; one ulp for |logit| in [32, 64) is exactly 0.25 (= the default eps)
        assert gap <= d.near_tie_eps, f"divergence at {j} is not a near-tie (AR top-2 gap {gap:.4f})"
    print(d.mode, report)
    assert accepted > 0  # the drafter was actually exercised
