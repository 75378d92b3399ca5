"""Precision and threads chosen by the hardware (vsd/runtime.py). The CPU's capabilities are faked both ways:
CI's CPU has whichever it has."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vsd.runtime as rt
from vsd.config import compose
from vsd.errors import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[1]
AVX2 = {"cpu_name": "AMD EPYC", "avx2": True, "avx512_bf16": False, "amx_bf16": False}
AMX = {"cpu_name": "Intel Xeon", "avx2": True, "avx512_bf16": True, "amx_bf16": True}


@pytest.fixture
def cpu(monkeypatch):
    monkeypatch.delenv("VSD_NATIVE_BF16", raising=False)

    def fake(caps: dict) -> None:
        monkeypatch.setattr(rt, "cpu_capabilities", lambda: caps)

    return fake


def test_auto_is_fp32_without_native_bf16_and_bf16_with_it(cpu) -> None:
    cpu(AVX2)
    p = rt.resolve_precision("auto", "auto", "gguf", "cpu")
    assert (p.dtype, p.bf16_autocast, p.native_bf16) == ("float32", False, False)
    assert "AMD EPYC has no AMX-bf16 or AVX512-BF16" in p.reason
    cpu(AMX)
    p = rt.resolve_precision("auto", "auto", "gguf", "cpu")
    assert (p.dtype, p.bf16_autocast, p.native_bf16) == ("bfloat16", True, True)
    assert p.reason == "Intel Xeon has AMX_BF16/AVX512_BF16"
    cpu({"cpu_name": "Sapphire", "avx512_bf16": True})
    assert rt.native_bf16("cpu") == (True, "Sapphire has AVX512_BF16")
    assert rt.native_bf16("cuda") == (True, "CUDA")  # whatever the host CPU
    assert rt.resolve_dtype("auto", "random", "cpu") == torch.float32  # random test models stay fp32


def test_an_explicit_setting_wins_and_is_named(cpu) -> None:
    cpu(AVX2)
    p = rt.resolve_precision("bfloat16", True, "gguf", "cpu")
    assert (p.dtype, p.bf16_autocast) == ("bfloat16", True)
    assert p.reason.endswith("set explicitly: dtype, train.bf16_autocast")
    cpu(AMX)
    assert rt.resolve_precision("auto", False, "gguf", "cpu").bf16_autocast is False


def test_the_environment_override_forces_either_way(cpu, monkeypatch) -> None:
    cpu(AMX)
    monkeypatch.setenv("VSD_NATIVE_BF16", "0")  # run as a CPU without native bf16 would
    assert rt.resolve_precision("auto", "auto", "gguf", "cpu").dtype == "float32"
    cpu(AVX2)
    monkeypatch.setenv("VSD_NATIVE_BF16", "1")
    assert rt.native_bf16("cpu") == (True, "VSD_NATIVE_BF16=1")
    monkeypatch.setenv("VSD_NATIVE_BF16", "yes")
    with pytest.raises(UserError, match=r"^VSD_NATIVE_BF16: must be 0 or 1, got 'yes'$"):
        rt.native_bf16("cpu")


def test_bf16_autocast_takes_auto_true_or_false() -> None:
    assert compose(["train.bf16_autocast=false"])[0][1].train.bf16_autocast is False
    assert compose([])[0][1].train.bf16_autocast == "auto"
    with pytest.raises(ConfigError, match=r"^train.bf16_autocast: must be auto, true or false, got 'yes'"):
        compose(["train.bf16_autocast=yes"])


def test_threads_follow_the_affinity_mask_unless_told(monkeypatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.delenv("VSD_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    try:
        assert rt.usable_cpus() == 1 and rt.set_threads(None) == 1
        assert rt.set_threads(2) == 2
        monkeypatch.setenv("VSD_THREADS", "1")
        assert rt.set_threads(None) == 1
    finally:
        torch.set_num_threads(before)


def test_the_run_records_its_precision_and_why(tmp_path: Path) -> None:
    """A real run (the smoke pipeline) as a CPU with native bf16 would: autocast on, said in run.json and in
    the run's first lines."""
    env = {
        **os.environ,
        "VSD_NATIVE_BF16": "1",
        "WANDB_MODE": "offline",
        "VSD_CACHE_DIR": str(tmp_path / "c"),
    }
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "run.py", "experiment=smoke", "tracker=none", f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["precision"] == {
        "dtype": "float32",  # a random test model stays fp32
        "bf16_autocast": True,
        "native_bf16": True,
        "reason": "VSD_NATIVE_BF16=1",
    }
    assert rec["usable_cpus"] >= 1 and rec["threads"] >= 1
    assert "[vsd] precision: target float32, training bf16 autocast on (VSD_NATIVE_BF16=1)" in out.stdout
