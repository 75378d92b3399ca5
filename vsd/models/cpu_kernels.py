"""The target's kernels for decoding on a CPU, chosen by measurement.

On a CPU the target's step costs what its matmuls cost: in fp32 on two AVX2 cores a KV-cached forward of 16
tokens takes ~2.4 one-token steps (the LM head alone, 49,152 x 576, is 8 ms of a 52 ms step), so a tree's
verify eats the speedup. int8 dynamic quantization of the linear layers (FBGEMM: int8 weights, activations
quantized per call, int32 accumulation) makes the one-token step ~1.7x and the 16-token step ~2.5x faster there
(docs/training.md). But its activation scale is computed per call over every token in it, so a token's
logits depend on which tokens are verified beside it: the int8 target is no fixed function of the prefix, and
T=0 speculative output then differs from plain AR (measured: 1 of 14 turns equal). So ``auto`` keeps only
kernels that leave decoding lossless: the dense target in the run's dtype, at the thread count that times
fastest on this machine, in this process. ``int8`` is an explicit choice for speed studies, and the run says
it is lossy. The eval decodes AR, the peers and speculative decoding with one target, so the choice changes
every method alike. Training and features keep the dense target; CUDA always runs dense.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch

from vsd.models.target import Target

KERNELS = ("dense", "int8")
LOSSLESS = ("dense",)  # the kernels ``auto`` may pick: T=0 speculative output equals plain AR


def with_kernel(target: Target, kernel: str) -> Target:
    """``target`` itself for ``dense``; for ``int8`` a copy whose ``nn.Linear`` layers (the LM head too) are
    int8 dynamically quantized, on float32 activations."""
    if kernel == "dense":
        return target
    if kernel != "int8":
        raise ValueError(f"unknown kernel {kernel!r}")
    if target.device.type != "cpu":
        raise ValueError("int8 dynamic quantization runs on the CPU only")
    with warnings.catch_warnings():  # torch.ao's eager quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        model = torch.ao.quantization.quantize_dynamic(
            target.model.float() if target.dtype != torch.float32 else target.model,
            {torch.nn.Linear},
            dtype=torch.qint8,
            inplace=False,
        )
    return Target(model, target.tokenizer, target.name, target.feature_layers, kernel=kernel)


def step_ms(target: Target, new_tokens: int, context: int = 128, reps: int = 7) -> float:
    """Fastest of ``reps`` KV-cached forwards appending ``new_tokens`` to a ``context``-token prefix (ms)."""
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, target.vocab_size, (1, context), generator=gen)
    step = torch.randint(0, target.vocab_size, (1, new_tokens), generator=gen)
    best = float("inf")
    for _ in range(reps + 1):  # the first call warms the allocator and the kernels' packing
        cache = target.new_cache()
        target.forward(prefix.to(target.device), cache=cache)
        t0 = time.perf_counter()
        target.forward(step.to(target.device), cache=cache)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def choose_kernel(
    target: Target, kernel: str, threads: list[int], verify_tokens: int = 16
) -> tuple[Target, dict[str, Any]]:
    """The target to decode with and a report for run.json. ``kernel``: auto | dense | int8; ``threads``: the
    thread counts to try (the first is kept when only one is given). Each candidate is scored by a one-token
    step (plain AR) plus a ``verify_tokens`` step (a tree's verify): what the eval's methods spend."""
    if target.device.type != "cpu":
        return target, {"kernel": "dense", "mode": kernel, "why": f"{target.device.type}: dense only"}
    candidates = list(LOSSLESS) if kernel == "auto" else [kernel]
    if len(threads) == 1 and len(candidates) == 1:
        torch.set_num_threads(threads[0])
        k = candidates[0]
        return with_kernel(target, k), {
            "kernel": k,
            "mode": kernel,
            "threads": threads[0],
            "lossless": k in LOSSLESS,
        }
    built = {k: with_kernel(target, k) for k in candidates}
    timings, best = [], None
    for k, model in built.items():
        for n in threads:
            torch.set_num_threads(n)
            one, many = step_ms(model, 1), step_ms(model, verify_tokens)
            timings.append(
                {
                    "kernel": k,
                    "threads": n,
                    "step_1_ms": round(one, 2),
                    f"step_{verify_tokens}_ms": round(many, 2),
                }
            )
            if best is None or one + many < best[0]:
                best = (one + many, k, n)
    _, k, n = best
    torch.set_num_threads(n)
    report = {"kernel": k, "threads": n, "mode": kernel, "lossless": k in LOSSLESS, "timings": timings}
    return built[k], report
