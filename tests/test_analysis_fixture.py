"""UNIT-TEST FIXTURE: writes synthetic run records in the documented format (preamble "Run-record format",
vsd/records.py). The numbers are made up; they only exercise vsd.analysis. The end-to-end test on records of
a real tiny sweep lives in tests/test_analysis_real.py.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

CATEGORIES = ("mt_bench", "math", "coding")


def _config(loss: str, seed: int, s: int, arw: bool, car: bool, filt: bool, out: str) -> dict[str, Any]:
    return {
        "model": {"name": "tiny", "source": "random", "draft": {"vocab_size": 64, "feature_layers": None}},
        "loss": {
            "name": loss,
            "num_samples": s,
            "arw": arw,
            "car": car,
            "oracle_filter": filt,
            "importance": True,
            "depth": 5,
            "vsd_weight": 1.0 if loss == "vsd" else 0.0,
        },
        "decoding": {"mode": "tree", "drafter": "eagle3", "depth": 5, "temperature": 0.0},
        "eval": {"suite": "smoke", "categories": list(CATEGORIES)},
        "train": {"steps": 30, "betas": [0.9, 0.95]},
        "paths": {"cache_dir": "/tmp/cache", "output_dir": out},
        "stages": ["data", "features", "train", "eval"],
        "seed": seed,
        "run_name": f"tiny-{loss}",
    }


def write_run(
    run_dir: Path,
    loss: str = "vsd",
    seed: int = 0,
    s: int = 4,
    arw: bool = True,
    car: bool = True,
    filt: bool = True,
    status: str = "completed",
    sweep_dir: str | None = None,
    num: int = 0,
) -> Path:
    """One run folder; tau grows with S and with each VSD component switched on (plus seed noise)."""
    # crc32, not hash(): str hashes change per process (PYTHONHASHSEED), which made the fixtures differ run to run
    rng = np.random.default_rng(zlib.crc32(repr((loss, seed, s, arw, car, filt)).encode()))
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = [f"loss={loss}", f"seed={seed}", f"loss.num_samples={s}"]
    cfg = _config(loss, seed, s, arw, car, filt, str(run_dir))
    (run_dir / "config.json").write_text(json.dumps(cfg))
    run = {
        "status": status,
        "seed": seed,
        "git_sha": "abc123",
        "git_dirty": False,
        "error": None,
        "start": "2025-01-01T00:00:00+00:00",
        "end": "2025-01-01T00:01:00+00:00",
        "stages": {"train": {"seconds": 1.5}, "eval": {"seconds": 2.0}},
        "job": {
            "mode": "multirun" if sweep_dir else "run",
            "num": num,
            "overrides": overrides,
            **({"sweep_dir": sweep_dir} if sweep_dir else {}),
        },
    }
    if status == "failed":
        run["error"] = "RuntimeError: synthetic failure"
        (run_dir / "run.json").write_text(json.dumps(run))
        return run_dir
    gain = 0.0 if loss == "eagle3" else 0.15 + 0.05 * np.log2(s) + 0.1 * arw + 0.06 * car + 0.08 * filt
    tau = 2.0 + gain + rng.normal(0, 0.05)
    m: dict[str, float] = {"eval/tau": tau, "eval/ar_tokens_per_s": 100.0 + rng.normal(0, 2)}
    m["eval/tokens_per_s"] = m["eval/ar_tokens_per_s"] * tau / 1.35
    m["eval/speedup"] = m["eval/tokens_per_s"] / m["eval/ar_tokens_per_s"]
    m["eval/speedup_bound"] = tau / 1.2
    m["eval/lossless_match"] = 1.0
    m["eval/c_verify"], m["eval/c_draft"] = 1.0, 0.04
    for k in range(1, 6):
        m[f"eval/alpha_{k}"] = float(np.clip(0.75 - 0.08 * k + gain / 4 + rng.normal(0, 0.02), 0, 1))
    for i, c in enumerate(CATEGORIES):
        m[f"eval/{c}/tau"] = tau + 0.3 * (i - 1) + rng.normal(0, 0.05)
        m[f"eval/{c}/speedup"] = m[f"eval/{c}/tau"] / 1.35
    m["eval/peer/hf_prompt_lookup/speedup"] = 1.1
    m["train/loss"], m["train/sim_tau"] = 3.0 - gain, 1.8 + gain
    (run_dir / "metrics.json").write_text(json.dumps(m))
    with open(run_dir / "train_log.jsonl", "w") as fh:
        for step in range(0, 31, 5):
            fh.write(
                json.dumps(
                    {
                        "step": step,
                        "train/loss": 5.0
                        - 2 * (1 - np.exp(-step / 10))
                        - gain * step / 30
                        + rng.normal(0, 0.05),
                        "train/sim_tau": 1.2 + (0.6 + gain) * step / 30,
                        "train/lr": 3e-4,
                    }
                )
                + "\n"
            )
    with open(run_dir / "eval.jsonl", "w") as fh:
        for c in CATEGORIES:
            fh.write(
                json.dumps(
                    {
                        "category": c,
                        "id": f"{c}-0",
                        "turn": 0,
                        "match": True,
                        "spec": {
                            "new_tokens": 16,
                            "target_forwards": 8,
                            "wall_s": 0.1,
                            "accepted": [1, 2, 1],
                            "tree_depth": [5, 5, 5],
                        },
                        "ar": {"new_tokens": 16, "target_forwards": 16, "wall_s": 0.16},
                    }
                )
                + "\n"
            )
    (run_dir / "run.json").write_text(json.dumps(run))
    return run_dir


def write_fake_sweep(root: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> Path:
    """EAGLE-3 baseline, a VSD S sweep (1, 4, 16) and the full ARW × CAR × filter grid at S=4, over seeds;
    plus one failed run. Multirun layout: <root>/<sweep>/<job_num>/."""
    conds = [("eagle3", 4, True, False, True)] + [("vsd", s, True, True, True) for s in (1, 16)]
    conds += [("vsd", 4, a, c, f) for a in (False, True) for c in (False, True) for f in (False, True)]
    num = 0
    sweep = root / "2025-01-01_00-00-00"
    for loss, s, a, c, f in conds:
        for seed in seeds:
            write_run(sweep / str(num), loss, seed, s, a, c, f, sweep_dir=str(sweep), num=num)
            num += 1
    write_run(sweep / str(num), "vsd", 9, 4, status="failed", sweep_dir=str(sweep), num=num)
    return root


def test_fixture_writes_documented_files(tmp_path: Path) -> None:
    d = write_run(tmp_path / "r")
    assert {p.name for p in d.iterdir()} == {
        "config.json",
        "run.json",
        "metrics.json",
        "eval.jsonl",
        "train_log.jsonl",
    }
    assert json.loads((d / "run.json").read_text())["status"] == "completed"
