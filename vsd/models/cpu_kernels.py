"""The target's kernels for decoding on a CPU, chosen by measurement.

On a CPU the target's step costs what its matmuls cost: in fp32 on two AVX2 cores the LM head alone (49,152 x
576) takes 8 ms of a ~52 ms one-token step and ~27 ms of a 16-token one, so a tree's verify eats the speedup.
The candidates, each a copy of the target whose ``nn.Linear`` layers (the LM head too) run FBGEMM kernels:

- ``dense``: the target as loaded (the run's dtype).
- ``fp16_weights``: weights stored in fp16, activations and accumulation in fp32. No activation is
  quantized, so each token's logits depend on that token's prefix alone, as in fp32 (batch effects are float
  rounding only), and fp16 holds the bf16 copy's weights exactly in its normal range. Lossless as dense is.
- ``int8``: int8 weights and activations, int32 accumulation. Fastest, but the activation scale is computed
  per call over every token in it, so a token's logits depend on which tokens are verified beside it: the
  int8 target is no fixed function of the prefix and T=0 speculative output differs from plain AR (measured:
  1 of 14 turns equal). An explicit choice for speed studies; the run says it is lossy.

``eval.target_kernel=auto`` times the lossless candidates at each thread count on this machine, in this
process, and keeps the fastest (numbers: docs/training.md). The eval decodes AR, the peers and speculative
decoding with that one target, so the choice changes every method alike. The EAGLE draft head follows the
target's kernel (vsd/decoding/eagle.py): its output only proposes tokens, so any kernel keeps the target's
output, and in fp32 on two AVX2 cores its per-level matmuls cost what the target's do. Training and features
keep the dense target; CUDA always runs dense.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch

from vsd.models.target import Target

KERNELS = {"dense": None, "fp16_weights": torch.float16, "int8": torch.qint8}  # name -> dynamic weight dtype
LOSSLESS = ("dense", "fp16_weights")  # the kernels ``auto`` may pick: T=0 speculative output equals plain AR


def with_kernel(target: Target, kernel: str) -> Target:
    """``target`` itself for ``dense``; else a copy whose ``nn.Linear`` layers (the LM head too) run FBGEMM's
    dynamic kernels with ``KERNELS[kernel]`` weights on float32 activations (module docstring)."""
    if kernel == "dense":
        return target
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}")
    if target.device.type != "cpu":
        raise ValueError(f"{kernel} runs on the CPU only")
    model = quantize_linears(target.model.float() if target.dtype != torch.float32 else target.model, kernel)
    return Target(model, target.tokenizer, target.name, target.feature_layers, kernel=kernel)


def quantize_linears(module: torch.nn.Module, kernel: str, keep: tuple[str, ...] = ()) -> torch.nn.Module:
    """A copy of a float32 ``module`` whose ``nn.Linear`` layers, but those named in ``keep``, run ``kernel``'s
    FBGEMM dynamic kernels (``module`` itself for ``dense``)."""
    if kernel == "dense":
        return module
    names = {n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear) and n not in keep}
    with warnings.catch_warnings():  # torch.ao's eager quantization is deprecated in favour of torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(module, names, dtype=KERNELS[kernel], inplace=False)


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
    built, timings, best = {}, [], None
    for k in candidates:
        try:
            built[k] = with_kernel(target, k)
        except (RuntimeError, ValueError) as e:  # e.g. no FBGEMM on this CPU (ARM): that candidate is out
            timings.append({"kernel": k, "error": str(e).splitlines()[0][:200]})
    if not built:
        return target, {"kernel": "dense", "mode": kernel, "lossless": True, "timings": timings}
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
