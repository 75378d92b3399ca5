"""Device, dtype, threads, seeding, the distributed set-up and CUDA-graph capture: the only place that decides
where tensors live."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist

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


def cpu_capabilities() -> dict:
    """What torch's CPU dispatcher sees on this processor (``torch.cpu.get_capabilities``); tests replace it."""
    get = getattr(torch.cpu, "get_capabilities", None)
    return dict(get()) if get is not None else {}


def native_bf16(device: str) -> tuple[bool, str]:
    """(does ``device`` compute bf16 natively, why). CUDA: yes. CPU: only with AMX-bf16 or AVX512-BF16; on
    AVX2 (most laptops, Zen 2/3 nodes) torch emulates bf16 matmuls, 10-40x slower than fp32 (measured:
    docs/training.md). ``VSD_NATIVE_BF16=0|1`` overrides the detection (to run as a CPU without it would)."""
    forced = os.environ.get("VSD_NATIVE_BF16")
    if forced is not None:
        if forced not in ("0", "1"):
            raise UserError(f"VSD_NATIVE_BF16: must be 0 or 1, got {forced!r}")
        return forced == "1", f"VSD_NATIVE_BF16={forced}"
    if str(device).startswith("cuda"):
        return True, "CUDA"
    caps = cpu_capabilities()
    name = caps.get("cpu_name") or "CPU"
    found = [k for k in ("amx_bf16", "avx512_bf16") if caps.get(k)]
    if found:
        return True, f"{name} has {'/'.join(k.upper() for k in found)}"
    return False, f"{name} has no AMX-bf16 or AVX512-BF16 ({torch.backends.cpu.get_cpu_capability()})"


def resolve_dtype(dtype: str, source: str, device: str) -> torch.dtype:
    """``auto``: fp32 for random test models; for real targets bf16 where ``device`` computes it natively
    (:func:`native_bf16`), else fp32."""
    if dtype != "auto":
        return _DTYPES[dtype]
    if source == "random":
        return torch.float32
    return torch.bfloat16 if native_bf16(device)[0] else torch.float32


@dataclass(frozen=True)
class Precision:
    """A run's precision, resolved once from the config and the hardware (recorded in run.json)."""

    dtype: str  # the target's (and so ``decoding.draft_dtype=target``'s) dtype
    bf16_autocast: bool  # training under bf16 autocast
    native_bf16: bool
    reason: str

    def line(self) -> str:
        auto = "on" if self.bf16_autocast else "off"
        return f"precision: target {self.dtype}, training bf16 autocast {auto} ({self.reason})"


def bf16_autocast_on(value: bool | str, device: str) -> bool:
    """``train.bf16_autocast``: ``auto`` follows :func:`native_bf16`; true/false as given."""
    return native_bf16(device)[0] if value == "auto" else bool(value)


def resolve_precision(dtype: str, bf16_autocast: bool | str, source: str, device: str) -> Precision:
    """``dtype=auto`` and ``train.bf16_autocast=auto`` follow :func:`native_bf16`; an explicit value wins."""
    native, why = native_bf16(device)
    resolved = str(resolve_dtype(dtype, source, device)).removeprefix("torch.")
    autocast = bf16_autocast_on(bf16_autocast, device)
    explicit = [k for k, v in (("dtype", dtype), ("train.bf16_autocast", bf16_autocast)) if v != "auto"]
    reason = why + (f"; set explicitly: {', '.join(explicit)}" if explicit else "")
    return Precision(resolved, autocast, native, reason)


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask: taskset, cgroups, Slurm), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity API
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """torch's intra-op threads: ``threads``, else ``VSD_THREADS``, else ``OMP_NUM_THREADS`` as torch read it
    (torchrun sets 1 per rank), else the usable cores (:func:`usable_cpus`; torch's own default counts every
    core of the machine, which oversubscribes a process restricted to fewer)."""
    if threads is None:
        env = os.environ.get("VSD_THREADS")
        threads = int(env) if env else None if os.environ.get("OMP_NUM_THREADS") else usable_cpus()
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


@dataclass
class DistInfo:
    """This process's place in a distributed job (rank 0 of 1 outside one)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _torch_env_from_job() -> None:
    """A submitit job of several tasks (``tasks_per_node=N``, as in ``hydra/launcher=slurm_gpu``) starts N
    copies of the run without torchrun. Export torch's env:// variables (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT) from the job's environment so the copies form one process group. Only inside a submitit
    job (SUBMITIT_EXECUTOR): a plain ``salloc -n 4`` shell has SLURM_NTASKS=4 but runs one process."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    import submitit
    from submitit.helpers import TorchDistributedEnvironment

    if submitit.JobEnvironment().num_tasks > 1:
        # every task keeps all the node's GPUs and picks cuda:LOCAL_RANK (local_device), as under torchrun
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def init_distributed(device: str) -> DistInfo:
    """Join the process group of a torchrun job or a submitit job of several tasks (gloo on CPU, nccl on
    CUDA); a single process otherwise."""
    _torch_env_from_job()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        # On GPUs, small CPU tensors (token counts) are reduced too: gloo for CPU, NCCL for CUDA tensors.
        dist.init_process_group("cpu:gloo,cuda:nccl" if str(device).startswith("cuda") else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def local_device(device: str, info: DistInfo) -> str:
    """One GPU per rank (LOCAL_RANK) under torchrun on CUDA."""
    if info.world > 1 and device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


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
