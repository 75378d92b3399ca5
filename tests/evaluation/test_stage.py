"""End to end: the eval stage on tiny_random with the n-gram drafter, through the pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from vsd.config import compose
from vsd.pipeline import execute


def test_eval_stage_ngram_tiny(tmp_path):
    overrides = [
        "experiment=smoke",
        "decoding=ngram",
        "stages=[eval]",
        "eval.per_category=1",
        "eval.warmup=1",
        "eval.peers=[hf_prompt_lookup]",
        "decoding.max_new_tokens=8",
        "threads=1",  # other tests may run beside this one on 2 cores
    ]
    dcfg, _ = compose(overrides)[0]
    threads = torch.get_num_threads()
    try:
        metrics = execute(dcfg, tmp_path)
    finally:
        torch.set_num_threads(threads)  # execute() sets the process-wide pool; leave it as found
    rows = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [(r["category"], r["turn"]) for r in rows] == [("mt_bench", 0), ("mt_bench", 1)]  # both turns
    # Turn 2 is conditioned on the model's own turn-1 (AR) answer: the prompt grew by more than turn 2's text.
    assert rows[1]["prompt_tokens"] > rows[0]["prompt_tokens"] + rows[0]["ar"]["new_tokens"]
    for r in rows:
        assert r["match"] is True and r["spec"]["ids"] == r["ar"]["ids"]  # fp32: exactly lossless
        assert r["ar"]["target_forwards"] == r["ar"]["new_tokens"]
        assert len(r["spec"]["accepted"]) == r["spec"]["target_forwards"] - 1  # prefill + one per step
        assert r["peers"]["hf_prompt_lookup"]["match"] is True
    tokens = sum(r["spec"]["new_tokens"] for r in rows)
    assert metrics["eval/tau"] == pytest.approx(tokens / sum(r["spec"]["target_forwards"] for r in rows))
    for key in (
        "eval/speedup",
        "eval/tokens_per_s",
        "eval/ar_tokens_per_s",
        "eval/lossless_match",
        "eval/c_verify",
        "eval/c_draft",
        "eval/speedup_bound",
        "eval/mt_bench/tau",
        "eval/mt_bench/speedup",
        "eval/peer/hf_prompt_lookup/tokens_per_s",
        "eval/peer/hf_prompt_lookup/speedup",
    ):
        assert key in metrics, key
    assert metrics["eval/lossless_match"] == 1.0
    # draft diagnostics: the n-gram drafter's chains are its only (rank 0) choice, each at confidence 1
    for r in rows:
        assert [len(p) for p in r["spec"]["accepted_ranks"]] == r["spec"]["accepted"]
        assert all(c[0] == 0 for cells in r["spec"]["calib"].values() for c in cells[:-1])
    assert metrics["eval/accepted_not_top1"] == 0.0 and "eval/ece" in metrics
    assert (metrics["eval/shape_depth"], metrics["eval/shape_nodes"]) == (5.0, 5.0)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["eval/tau"] == pytest.approx(metrics["eval/tau"])
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["status"] == "completed" and run["eval_info"]["turns"] == 2
    assert run["shape"] == {"mode": "fixed", "depth": 5, "top_k": 1, "nodes": 5}


def test_reference_eval_equals_decoded_eval_on_a_trained_draft(tmp_path):
    """eval.method=reference gives the decoded eval's tau and per-step counts (fp32 tiny target), and caches the
    greedy continuations: a second draft's reference eval generates nothing."""
    base = ["experiment=smoke", "eval.per_category=2", "decoding.max_new_tokens=24", "threads=1"]
    threads = torch.get_num_threads()
    try:
        dec = execute(compose(base)[0][0], tmp_path / "dec")
        draft = tmp_path / "dec" / "draft"
        common = [*base, "stages=[eval]", f"draft.checkpoint={draft}", "eval.method=reference"]
        ref = execute(compose(common)[0][0], tmp_path / "ref")
    finally:
        torch.set_num_threads(threads)
    rd = [json.loads(x) for x in (tmp_path / "dec" / "eval.jsonl").read_text().splitlines()]
    rr = [json.loads(x) for x in (tmp_path / "ref" / "eval.jsonl").read_text().splitlines()]
    assert [(r["id"], r["turn"]) for r in rd] == [(r["id"], r["turn"]) for r in rr]
    for a, b in zip(rd, rr):
        assert b["method"] == "reference" and b["ar"] is None
        for k in ("tree_depth", "drafted", "target_forwards", "new_tokens"):
            assert a["spec"][k] == b["spec"][k], k
        # the final step: the engine also counts draft tokens past the end that are then cut off
        assert a["spec"]["accepted"][:-1] == b["spec"]["accepted"][:-1]
        assert a["spec"]["accepted"][-1] >= b["spec"]["accepted"][-1]
    assert ref["eval/tau"] == pytest.approx(dec["eval/tau"]) and "eval/speedup" not in ref
    with pytest.raises(Exception, match="eval.method"):
        compose([*common, "decoding.temperature=1.0"])


def _prompt_file(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


LONG = "word " * 3000  # > 2,048 positions of tiny_random


def _file_suite_config(tmp_path, records, *extra):
    """A small n-gram eval of ``records`` written to a prompt file (eval stage only, 8 new tokens)."""
    prompts = _prompt_file(tmp_path / "prompts.jsonl", records)
    overrides = [
        "experiment=smoke",
        "decoding=ngram",
        "stages=[eval]",
        "eval.suite=file",
        f"eval.prompts={prompts}",
        "eval.per_category=10",
        "eval.warmup=0",
        "decoding.max_new_tokens=8",
        "threads=1",
        *extra,
    ]
    return compose(overrides)[0][0]


def _run_file_suite(tmp_path, records, *extra):
    dcfg = _file_suite_config(tmp_path, records, "eval.ar_baseline=false", *extra)
    threads = torch.get_num_threads()
    try:
        return execute(dcfg, tmp_path / "run")
    finally:
        torch.set_num_threads(threads)


def test_turns_too_long_for_the_context_are_skipped_and_counted(tmp_path):
    records = [
        {"id": "short", "turns": ["Say hi."]},
        {"id": "long", "turns": [LONG]},
        {"id": "two", "turns": [LONG, "And then?"]},
    ]
    metrics = _run_file_suite(tmp_path, records)
    rows = {(r["id"], r["turn"]): r for r in map(json.loads, (tmp_path / "run" / "eval.jsonl").open())}
    assert set(rows) == {("short", 0), ("long", 0), ("two", 0), ("two", 1)}
    assert "skipped" not in rows[("short", 0)] and rows[("short", 0)]["spec"]["new_tokens"] > 0
    reason = rows[("long", 0)]["skipped"]
    n = rows[("long", 0)]["prompt_tokens"]
    assert n > 2048 and reason == (
        f"too long: prompt {n} + max_new_tokens 8 + verify rows 6 = {n + 14} > 2048 "
        "(the target's max_position_embeddings)"
    )
    assert rows[("two", 1)]["skipped"].startswith("follows skipped turn 0 (too long: prompt")
    assert rows[("two", 1)]["prompt_tokens"] is None and "spec" not in rows[("two", 1)]
    assert metrics["eval/skipped_too_long"] == 3 and metrics["eval/num_turns"] == 1
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["eval_info"]["skipped_too_long"] == 3 and run["eval_info"]["turns"] == 1


def test_an_eval_where_no_prompt_fits_is_one_line(tmp_path):
    from vsd.errors import UserError

    with pytest.raises(UserError) as ei:
        _run_file_suite(tmp_path, [{"id": "long", "turns": [LONG]}])
    assert "\n" not in str(ei.value) and str(ei.value).startswith("eval: every prompt is too long")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_the_context_rule_and_its_limits():
    from types import SimpleNamespace

    from vsd.evaluation.turns import context_limit, too_long

    target = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=2048), device=torch.device("cpu"))
    _, cfg = compose(["decoding=tree", "decoding.max_new_tokens=128"])[0]
    d = cfg.decoding  # tree of total_tokens 32: 33 verify rows
    assert too_long(2048 - 128 - 33, target, d) is None
    assert too_long(2048 - 128 - 32, target, d).endswith(
        "= 2049 > 2048 (the target's max_position_embeddings)"
    )
    _, cfg = compose(["decoding=chain", "decoding.capture=static", "decoding.max_len=256"])[0]
    assert context_limit(target, cfg.decoding) == (256, "decoding.max_len")  # the static runner's KV slots
    _, cfg = compose(["decoding=chain", "decoding.capture=cuda_graph", "decoding.max_len=256"])[0]
    assert context_limit(target, cfg.decoding)[0] == 2048  # no CUDA: the dynamic runner decodes


def test_reference_eval_refuses_too_long_turns_by_the_same_rule(tmp_path):
    records = [{"id": "short", "turns": ["Say hi."]}, {"id": "two", "turns": [LONG, "And then?"]}]
    prompts = _prompt_file(tmp_path / "prompts.jsonl", records)
    over = [
        "experiment=smoke",
        "eval.suite=file",
        f"eval.prompts={prompts}",
        "eval.method=reference",
        "threads=1",
    ]
    threads = torch.get_num_threads()
    try:
        metrics = execute(compose([*over, "decoding.max_new_tokens=8"])[0][0], tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    rows = {(r["id"], r["turn"]): r for r in map(json.loads, (tmp_path / "run" / "eval.jsonl").open())}
    assert rows[("two", 0)]["skipped"].startswith("too long: prompt")
    assert rows[("two", 1)]["skipped"].startswith("follows skipped turn 0")
    assert rows[("short", 0)]["spec"]["new_tokens"] > 0
    assert metrics["eval/skipped_too_long"] == 2 and metrics["eval/num_turns"] == 1


def test_the_references_command_counts_skipped_turns(tmp_path, capsys):
    """`python -m vsd.evaluation.reference` on a suite with a turn too long for the context: the cache is built
    and the summary line counts the skipped turns (it used to raise KeyError on them)."""
    from vsd.evaluation.reference import main

    records = [{"id": "short", "turns": ["Say hi."]}, {"id": "long", "turns": [LONG]}]
    prompts = _prompt_file(tmp_path / "prompts.jsonl", records)
    over = ["experiment=smoke", "eval.suite=file", f"eval.prompts={prompts}", "eval.method=reference"]
    threads = torch.get_num_threads()
    try:
        rc = main([*over, "threads=1", "decoding.max_new_tokens=8", f"paths.cache_dir={tmp_path / 'cache'}"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    assert ", 1 skipped (key " in capsys.readouterr().out.strip().splitlines()[-1]


def _without_timing(row: dict) -> dict:
    """A row minus what depends on the clock (and the reused-row key, equal by construction)."""
    drop = {"wall_s", "draft_s"}
    return {
        k: ({kk: vv for kk, vv in v.items() if kk not in drop} if isinstance(v, dict) else v)
        for k, v in row.items()
        if k != "peers"
    }


def test_an_interrupted_eval_resumes_where_it_stopped(tmp_path, monkeypatch):
    """Stopped after four turns and rerun into the same run dir, a T=1 eval decodes only the turns it had not
    finished, and its rows equal a straight run's (sampling seeds depend on the prompt and turn alone; turn 2
    is conditioned on the reused turn-1 answer)."""
    from vsd.evaluation.turns import TurnDecoder

    records = [
        {"id": "a", "turns": ["Say hi.", "And then?"]},
        {"id": "b", "turns": ["Count to five."]},
        {"id": "c", "turns": ["Name a colour.", "Why that one?"]},
    ]
    # dense pinned: the straight and the resumed run are separate runs, and auto may time near-equal kernels
    # apart (T=1 draws then differ); a resumed run's own kernel choice is the next test's
    dcfg = _file_suite_config(
        tmp_path, records, "decoding.temperature=1.0", "eval.peers=[]", "eval.target_kernel=dense"
    )
    threads = torch.get_num_threads()
    calls = []
    real_turn = TurnDecoder.run_turn

    def counted(self, record, turn, ids):
        calls.append((record["id"], turn))
        if stop_after is not None and len(calls) > stop_after:
            raise KeyboardInterrupt
        return real_turn(self, record, turn, ids)

    monkeypatch.setattr(TurnDecoder, "run_turn", counted)
    try:
        stop_after = None
        straight = execute(dcfg, tmp_path / "straight")
        total = len(calls)
        assert total == 5
        calls.clear()
        stop_after = 4  # c's first turn done, its second (conditioned on the first) not
        with pytest.raises(KeyboardInterrupt):
            execute(dcfg, tmp_path / "resumed")
        assert json.loads((tmp_path / "resumed" / "run.json").read_text())["status"] == "failed"
        calls.clear()
        stop_after = None
        resumed = execute(dcfg, tmp_path / "resumed")
    finally:
        torch.set_num_threads(threads)
    assert calls == [("c", 1)]  # the four finished turns were not decoded again

    def rows(d):
        return [
            _without_timing(json.loads(x)) for x in (tmp_path / d / "eval.jsonl").read_text().splitlines()
        ]

    assert rows("resumed") == rows("straight")
    assert resumed["eval/tau"] == straight["eval/tau"]
    run = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert run["status"] == "completed" and run["eval_info"]["resumed_turns"] == 4


@pytest.mark.parametrize("tries, reused", [([1], True), ([2, 1], False)])
def test_a_resumed_eval_keeps_the_first_attempts_kernel_choice(tmp_path, tries, reused):
    """eval.target_kernel=auto times near-equal kernels; a rerun into the same run dir keeps the first attempt's
    choice (a flip would change the eval key and decode every finished turn again: seen once in CI), unless it
    was measured over other thread counts."""
    records = [{"id": "a", "turns": ["Say hi."]}]
    dcfg = _file_suite_config(tmp_path, records, "eval.ar_baseline=false", "eval.peers=[]")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "target_kernel.json").write_text(
        json.dumps({"kernel": "fp16_weights", "threads": 1, "mode": "auto", "tries": tries, "timings": []})
    )
    threads = torch.get_num_threads()
    try:
        execute(dcfg, run_dir)
    finally:
        torch.set_num_threads(threads)
    report = json.loads((run_dir / "run.json").read_text())["target_kernel"]
    assert ("reused_from" in report) == reused and report["mode"] == "auto"
    if reused:
        assert report["kernel"] == "fp16_weights"
    else:
        assert len(report["timings"]) == 2  # measured again: both lossless kernels at threads=1


def test_rows_of_other_settings_are_not_reused(tmp_path):
    from vsd.evaluation.stage import resumable_rows

    out = tmp_path / "eval.jsonl"
    out.write_text(
        json.dumps({"id": "a", "turn": 0, "eval_key": "k1"})
        + "\n"
        + json.dumps({"id": "b", "turn": 0, "eval_key": "k2"})
        + '\n{"id": "c", "tu'  # the line being written when the run stopped
    )
    assert list(resumable_rows(out, "k1")) == [("a", 0)]
    assert out.read_text() == json.dumps({"id": "a", "turn": 0, "eval_key": "k1"}) + "\n"
    assert resumable_rows(tmp_path / "none.jsonl", "k1") == {}
