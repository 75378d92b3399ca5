"""The math pool's snapshot (read where reasoning_gym is absent, e.g. on the GPU machines) is the generator's."""

from __future__ import annotations

import sys

from vsd.data import eval_prompts


def test_snapshot_equals_the_generated_pool(monkeypatch):
    eval_prompts.load_math.cache_clear()
    generated = eval_prompts.load_math()
    eval_prompts.load_math.cache_clear()
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import raises ImportError
    try:
        snap = eval_prompts.load_math()
    finally:
        eval_prompts.load_math.cache_clear()
    assert len(generated) == eval_prompts.MATH_POOL_SIZE
    assert snap == generated
