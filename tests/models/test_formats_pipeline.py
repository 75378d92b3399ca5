"""Ecosystem drafts through the pipeline: a tiny official-format EAGLE-3 draft evaluates
(``draft.checkpoint=DIR``) and a speculators-format one VSD-fine-tunes (``train.init_from=DIR``), keeping its
vocab map; a bad one stops the run with one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.models.format_helpers import official_checkpoint, speculators_checkpoint
from vsd.config import compose
from vsd.pipeline import execute

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
BASE = ["experiment=smoke", "threads=1"]  # tiny_random, fp32


@pytest.fixture(scope="module")
def target():
    from vsd.models.target import load_target

    _, cfg = compose(BASE)[0]
    return load_target(cfg.model, cfg.paths.cache_dir, "cpu", "float32")


def _execute(overrides, out):
    threads = torch.get_num_threads()
    try:
        return execute(compose([*BASE, *overrides])[0][0], out)
    finally:
        torch.set_num_threads(threads)  # execute() sets the process-wide pool; leave it as found


def test_an_official_draft_evaluates(target, tmp_path):
    official_checkpoint(tmp_path / "official", target)
    metrics = _execute(
        [
            "stages=[eval]",
            f"draft.checkpoint={tmp_path / 'official'}",
            "eval.per_category=1",
            "decoding.max_new_tokens=8",
        ],
        tmp_path / "run",
    )
    rows = [json.loads(x) for x in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert rows and all(r["match"] is True for r in rows)  # fp32 speculative decoding is lossless
    assert metrics["eval/tau"] >= 1.0 and "eval/speedup_specbench" in metrics


def test_a_speculators_draft_fine_tunes_keeping_its_vocab_map(target, tmp_path):
    src = tmp_path / "spec"
    ids = speculators_checkpoint(src, target, vd=200)  # random 200 of 261 ids: the data's draft vocab has 192
    before = load_file(str(src / "model.safetensors"))["layers.0.self_attn.q_proj.weight"].float()
    _execute(
        ["stages=[data,features,train]", "loss=vsd", f"train.init_from={src}", "train.steps=2"],
        tmp_path / "run",
    )
    draft = tmp_path / "run" / "draft"
    assert torch.equal(load_file(str(draft / "vocab.safetensors"))["d2t"], ids)  # never rebuilt from the data
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert any(r.get("train/loss", 0) > 0 for r in log)  # the imported vocab covers trained positions
    after = load_file(str(draft / "model.safetensors"))["layers.0.q_proj.weight"]
    assert after.shape == before.shape and not torch.equal(after, before)  # trained from the import
    cfg = json.loads((draft / "config.json").read_text())["head"]
    assert cfg["draft_vocab_size"] == ids.numel() == 200 and cfg["feature_norm"] is True
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "completed"


def test_a_bad_draft_stops_the_run_with_one_line(target, tmp_path):
    d = tmp_path / "official"
    official_checkpoint(d, target, norm_output=True)
    cmd = [
        sys.executable,
        "run.py",
        *BASE,
        "stages=[eval]",
        f"draft.checkpoint={d}",
        "tracker=none",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    errors = [x for x in (r.stdout + r.stderr).splitlines() if "norm_output" in x]
    assert errors and all(
        x.rstrip().endswith("norm_output=True is not implemented by vsd's draft head (it needs False)")
        for x in errors
    ), r.stdout + r.stderr
