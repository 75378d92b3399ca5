"""Tracking of multirun jobs: one offline W&B run per job, grouped by sweep, tagged with the swept keys,
holding the resolved config and provenance, and finished (with its exit code) on success and on failure.

W&B cannot read offline runs back, so the run's transaction log (``run-<id>.wandb``: W&B's LevelDB-style
record log of protobuf ``Record`` messages) is parsed here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sweep_helpers import failing_sweep, read_json

_BLOCK = 32768  # the log is written in 32 KiB blocks; a record header is crc32(4) length(2) type(1)


def _chunks(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, partial = 7, b""  # file header: magic(4) identifier(2) version(1)
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            partial = chunk
        elif kind == 3:  # middle
            partial += chunk
        elif kind == 4:  # last
            yield partial + chunk
            partial = b""


def offline_run(job_dir: Path) -> dict[str, Any]:
    """The essentials of the job's single offline W&B run: id, group, tags, config keys, exit code."""
    from wandb.proto import wandb_internal_pb2 as pb

    runs = sorted((job_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline run in {job_dir}, found {runs}"
    out: dict[str, Any] = {"dir": runs[0], "exit_code": None, "summary": set()}
    for raw in _chunks(next(runs[0].glob("run-*.wandb"))):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.update(
                id=rec.run.run_id,
                group=rec.run.run_group,
                tags=list(rec.run.tags),
                config={u.key: u.value_json for u in rec.run.config.update},
            )
        elif kind == "summary":
            out["summary"] |= {u.key for u in rec.summary.update}
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out


def test_each_job_is_one_finished_wandb_run(tmp_path_factory: pytest.TempPathFactory) -> None:
    proc, sweep_dir, _ = failing_sweep(tmp_path_factory.mktemp("tracking"))
    assert proc.returncode == 1, proc.stderr[-2000:]
    runs = {n: offline_run(sweep_dir / n) for n in ("0", "1")}
    for n, r in runs.items():
        rec = read_json(sweep_dir / n / "run.json")
        assert r["id"] == rec["wandb_run_id"] and r["dir"].name.endswith(r["id"])
        assert r["group"] == sweep_dir.name  # grouped by sweep
        assert {"model", "loss", "decoding", "eval", "_provenance"} <= set(r["config"])
        prov = r["config"]["_provenance"]
        assert rec["git_sha"] and rec["git_sha"] in prov and '"torch"' in prov  # git SHA + versions
    # tagged with the swept key only (not the constant overrides)
    assert runs["0"]["tags"] == ["eval.suite=file"] and runs["1"]["tags"] == ["eval.suite=smoke"]
    # finished on failure (exit code 1) and on success (exit code 0, with the eval metrics in the summary)
    assert runs["0"]["exit_code"] == 1
    assert runs["1"]["exit_code"] == 0 and "eval/tau" in runs["1"]["summary"]
