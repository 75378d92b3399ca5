"""Device, dtype, threads, seeding and CUDA-graph capture: the only place that decides where tensors live."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from vsd.errors import UserError

T = TypeVar("T")

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(device: str) -> str:
    """``auto`` picks cuda when available; ``cuda``/``cuda:N`` without CUDA is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                f"device: {device!r} requested but CUDA is not available (use device=cpu or auto)"
            )
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise UserError(f"device: {device!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def resolve_dtype(dtype: str, source: str, device: str) -> torch.dtype:
    """``auto``: bf16 for real targets (CPU AMX-bf16 and GPUs), fp32 for random test models."""
    if dtype != "auto":
        return _DTYPES[dtype]
    return torch.float32 if source == "random" else torch.bfloat16


def set_threads(threads: int | None) -> int:
    if threads is None:
        env = os.environ.get("VSD_THREADS")
        threads = int(env) if env else None
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def set_seed(seed: int) -> int:
    """Seed python, numpy and torch; returns the seed used (recorded in run.json)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return seed


def synchronize(device: str | torch.device) -> None:
    """Call around timers: GPU work is asynchronous."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def peak_memory_mb(device: str | torch.device) -> float | None:
    if str(device).startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def capture_graph(fn: Callable[[], T], pool=None) -> tuple[torch.cuda.CUDAGraph, T]:
    """Run ``fn`` twice on a side stream (allocator, cuBLAS handles), then capture one call as a CUDA graph
    in memory pool ``pool`` (graphs that share a pool must replay in capture order or one at a time). Returns
    the graph and ``fn``'s output: the static tensors every replay rewrites."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out
