"""The eval's target kernels on the CPU (vsd/models/cpu_kernels.py): what auto may pick, that the fp16-weight
target keeps T=0 speculative decoding lossless, and that int8 is what it says."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.decoding.helpers import OracleDrafter
from vsd.decoding.engine import generate_ar, generate_spec
from vsd.models.cpu_kernels import LOSSLESS, choose_kernel, step_ms, with_kernel


def test_auto_times_the_lossless_kernels_at_each_thread_count_and_keeps_one(tiny_target) -> None:
    before = torch.get_num_threads()
    try:
        target, report = choose_kernel(tiny_target, "auto", [2, 1])
        assert report["kernel"] in LOSSLESS and target.kernel == report["kernel"] and report["lossless"]
        tried = {(t["kernel"], t["threads"]) for t in report["timings"]}
        assert tried == {(k, n) for k in LOSSLESS for n in (2, 1)}  # int8 is never auto's
        assert torch.get_num_threads() == report["threads"]
        q, report = choose_kernel(tiny_target, "int8", [1])
        assert q.kernel == "int8" and report == {
            "kernel": "int8",
            "mode": "int8",
            "threads": 1,
            "lossless": False,
        }
    finally:
        torch.set_num_threads(before)


def test_int8_target_is_quantized_close_to_dense_and_timed(tiny_target) -> None:
    q = with_kernel(tiny_target, "int8")
    assert isinstance(q.model.lm_head, torch.ao.nn.quantized.dynamic.Linear)
    assert isinstance(tiny_target.model.lm_head, torch.nn.Linear)  # the dense target is left as it was
    ids = torch.arange(1, 20)[None]
    dense, quant = tiny_target.forward(ids).logits, q.forward(ids).logits
    assert (dense - quant).abs().max() < 0.1 * dense.abs().max()
    assert step_ms(q, 4, context=8, reps=1) > 0


@pytest.mark.parametrize("mode", ["chain", "tree"])
def test_fp16_weight_target_keeps_greedy_speculative_equal_to_its_greedy_ar(tiny, mode):
    """Verifying many tokens in one call gives each the logits it gets alone (no activation quantization)."""
    target, cfg = tiny
    fp16 = with_kernel(target, "fp16_weights")
    d = dataclasses.replace(
        cfg.decoding, temperature=0.0, mode=mode, depth=4, top_k=3, total_tokens=12, max_new_tokens=40
    )
    for i, text in enumerate(["the cat sat on the mat. the cat sat on the", "def f(x):\n    return x"]):
        ids = fp16.tokenizer(text)["input_ids"]
        ar = generate_ar(fp16, ids, d)
        sp = generate_spec(fp16, OracleDrafter(fp16, 0.3, seed=i), ids, d)
        assert sp.tokens == ar.tokens, text
        assert max(sp.accepted) >= 2  # multi-token verifies happened
