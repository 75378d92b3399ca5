"""Sharded on-disk caches: atomic safetensors shards, a manifest with per-shard sha256, content keys.

A cache directory ``<root>/<key>/`` holds ``shard_00000.safetensors, ...`` and, once complete,
``manifest.json``. A shard only ever appears under its final name fully written (tmp file + ``os.replace``),
so a run killed with ``kill -9`` leaves only complete shards and the next run continues from them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import mmap
import os
import struct
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vsd.errors import UserError
from vsd.files import sha256_file
from vsd.records import atomic_path, atomic_write_json
from vsd.runtime import DistInfo


def content_key(obj: Any, length: int = 16) -> str:
    """Stable short hash of a JSON-serialisable description (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def target_fingerprint(target: Any) -> str:
    """Identity of the target's weights: name, dtype, and a hash over every tensor's name, shape and a
    strided sample of its values (cheap even for 8B models, and different for any re-initialisation or
    different checkpoint)."""
    h = hashlib.sha256()
    h.update(str(getattr(target, "name", "")).encode())
    for name, t in target.model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        h.update(flat[::step][:4096].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def save_shard(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> None:
    """Write a safetensors shard atomically (a reader never sees a partial file under ``path``)."""
    with atomic_path(path, suffix=".tmp") as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def load_shard(path: Path, expect_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load one shard; a missing, truncated or altered file is a one-line UserError naming the shard."""
    if not path.exists():
        raise UserError(f"cache shard {path} is missing; delete {path.parent} to rebuild the cache")
    if expect_sha256 is not None and sha256_file(path) != expect_sha256:
        raise UserError(
            f"cache shard {path} is corrupt (sha256 differs from the manifest); delete {path.parent} to rebuild"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(
            f"cache shard {path} is unreadable ({' '.join(str(e).split())[:120]}); delete {path.parent} to rebuild"
        ) from None


# safetensors dtype names -> torch dtypes (the ones the caches write)
_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_PAGE = mmap.PAGESIZE


class MappedShard:
    """A safetensors shard read through a read-only memory map, rows on demand.

    :meth:`rows` copies rows ``a:b`` of one tensor out of the map and then drops the pages it touched from
    this process (``MADV_DONTNEED``: they stay in the page cache, shared and evictable), so reading a whole
    cache keeps the resident set at about one item, whatever the cache's size. The safetensors header gives
    each tensor's dtype, shape and byte range; a header that points past the end of the file (a truncated
    shard) is a one-line UserError.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > size - 8:
                    raise ValueError("header longer than the file")
                header = json.loads(fh.read(n))
                self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError, struct.error) as e:
            raise UserError(
                f"cache shard {self.path} is unreadable ({' '.join(str(e).split())[:120]}); "
                f"delete {self.path.parent} to rebuild"
            ) from None
        self._base = 8 + n
        self.meta = {k: v for k, v in header.items() if k != "__metadata__"}
        end = max((v["data_offsets"][1] for v in self.meta.values()), default=0)
        if self._base + end > size:
            self.close()
            raise UserError(
                f"cache shard {self.path} is corrupt (truncated: {size} bytes, the header needs "
                f"{self._base + end}); delete {self.path.parent} to rebuild"
            )

    def rows(self, name: str, a: int, b: int) -> torch.Tensor:
        """Rows ``a:b`` (dim 0) of tensor ``name``, copied out of the map."""
        m = self.meta[name]
        dtype, shape = _DTYPES[m["dtype"]], m["shape"]
        row_bytes = math.prod(shape[1:]) * torch.empty((), dtype=dtype).element_size()
        start = self._base + m["data_offsets"][0] + a * row_bytes
        nbytes = (b - a) * row_bytes
        out = torch.empty(nbytes, dtype=torch.uint8)
        out.numpy()[:] = memoryview(self._mm)[start : start + nbytes]
        lo = start - start % _PAGE
        if nbytes and hasattr(self._mm, "madvise"):
            self._mm.madvise(mmap.MADV_DONTNEED, lo, start + nbytes - lo)
        return out.view(dtype).reshape(b - a, *shape[1:])

    def tensor(self, name: str) -> torch.Tensor:
        return self.rows(name, 0, self.meta[name]["shape"][0])

    def close(self) -> None:
        self._mm.close()


class ShardPool:
    """At most ``size`` shards of a cache mapped at once (least recently used closed first): a cache of
    100,000 shards stays within the kernel's limit on mappings, and opening one costs a header parse."""

    def __init__(self, paths: list[Path], size: int = 8):
        self.paths, self.size = paths, size
        self._open: OrderedDict[int, MappedShard] = OrderedDict()

    def __getitem__(self, k: int) -> MappedShard:
        sh = self._open.pop(k, None) or MappedShard(self.paths[k])
        self._open[k] = sh
        while len(self._open) > self.size:
            self._open.popitem(last=False)[1].close()
        return sh


def verify_shard(path: Path, expect_sha256: str) -> None:
    """sha256 of a shard against its manifest entry (streamed: no memory beyond a buffer)."""
    if not path.exists():
        raise UserError(f"cache shard {path} is missing; delete {path.parent} to rebuild the cache")
    if sha256_file(path) != expect_sha256:
        raise UserError(
            f"cache shard {path} is corrupt (sha256 differs from the manifest); delete {path.parent} to rebuild"
        )


def done_shards(d: Path, n: int, indices: Iterable[int] | None = None) -> list[int]:
    """Indices < n (or of ``indices``) whose shard exists (complete by construction) and loads."""
    out = []
    for i in range(n) if indices is None else indices:
        p = d / shard_name(i)
        if p.exists():
            try:
                load_shard(p)
            except UserError:  # e.g. a disk-full write that still got renamed: redo it
                p.unlink()
                continue
            out.append(i)
    return out


def write_manifest(d: Path, n_shards: int, extra: dict[str, Any]) -> dict[str, Any]:
    """The completion marker: per-shard size and sha256, plus ``extra`` (key description, stats)."""
    shards = []
    for i in range(n_shards):
        p = d / shard_name(i)
        shards.append({"file": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)})
    man = {"complete": True, "shards": shards, "bytes": sum(s["bytes"] for s in shards), **extra}
    atomic_write_json(d / "manifest.json", man)
    return man


def read_manifest(d: Path) -> dict[str, Any] | None:
    """The manifest of a complete cache dir, or None if the cache is absent or incomplete."""
    p = d / "manifest.json"
    if not p.exists():
        return None
    try:
        man = json.loads(p.read_text())
    except ValueError as e:
        raise UserError(f"cache manifest {p} is unreadable ({e}); delete {d} to rebuild") from None
    return man if man.get("complete") else None


def dir_size_mb(d: Path) -> float:
    return sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file()) / 2**20


# ------------------------------------------------------------------------------ building across ranks
def rank_shards(n: int, info: DistInfo) -> list[int]:
    """The shards rank ``info.rank`` builds: b % world == rank (every shard once, balanced within one)."""
    return [b for b in range(n) if b % info.world == info.rank]


def barrier(info: DistInfo) -> None:
    """Wait for every rank. A sum of a CPU tensor: it goes through gloo also in a "cpu:gloo,cuda:nccl" group,
    so it needs no current CUDA device."""
    if info.world > 1:
        dist.all_reduce(torch.zeros(1))


@contextlib.contextmanager
def locked_build(d: Path, info: DistInfo) -> Iterator[dict[str, Any] | None]:
    """The build of cache dir ``d``: yields its complete manifest, or None when it must be built.

    Rank 0 holds ``d``'s FileLock for the whole block, so another job building the same key waits and then
    reuses; the other ranks of this job learn from rank 0 whether the cache is complete (one small sum), then
    read the manifest themselves.
    """
    lock = FileLock(str(d) + ".lock") if info.main else None
    if lock is not None:
        lock.acquire()
    try:
        man = read_manifest(d) if info.main else None
        if info.world > 1:
            flag = torch.tensor([float(man is not None)])
            dist.all_reduce(flag)
            if not info.main and flag.item():
                man = read_manifest(d)
        yield man
    finally:
        if lock is not None:
            lock.release()
