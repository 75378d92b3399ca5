"""Spec-Bench files: its question file evaluates as it is (eval=file), the eval writes its answer files
(eval.answers=true), and metrics report speedup both ways (ratio of sums; Spec-Bench's mean of per-question
rates)."""

from __future__ import annotations

import json

import pytest
import torch

from vsd.config import compose
from vsd.data.eval_prompts import load_prompt_file
from vsd.errors import ConfigError
from vsd.evaluation.metrics import compute_metrics
from vsd.pipeline import execute

# Spec-Bench's data/spec_bench/question.jsonl lines: question_id (int), category, turns (+ reference on some)
QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku about rain.", "Now make it sadder."]},
    {"question_id": 161, "category": "translation", "turns": ["Translate to German: good morning"]},
    {"question_id": 321, "category": "qa", "turns": ["Who wrote Hamlet?"], "reference": ["Shakespeare"]},
]


def _question_file(tmp_path):
    f = tmp_path / "question.jsonl"
    f.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return f


def test_a_specbench_question_file_loads_as_it_is(tmp_path):
    recs = load_prompt_file(_question_file(tmp_path))
    assert [(r["id"], r["question_id"], r["category"], len(r["turns"])) for r in recs] == [
        ("81", 81, "writing", 2),
        ("161", 161, "translation", 1),
        ("321", 321, "qa", 1),
    ]


def _run(tokens, seconds):
    return {"new_tokens": tokens, "target_forwards": tokens, "wall_s": seconds}


def test_speedup_both_ways():
    """Two questions, one long and fast, one short and not sped up: the definitions differ (docs/eval.md)."""
    rows = [
        {"id": "1", "category": "a", "spec": _run(100, 1.0), "ar": _run(100, 2.0)},
        {"id": "2", "category": "a", "spec": _run(6, 0.5), "ar": _run(6, 0.25)},
        {"id": "2", "category": "a", "spec": _run(4, 0.5), "ar": _run(4, 0.75)},  # question 2's second turn
    ]
    m = compute_metrics(rows)
    assert m["eval/speedup"] == pytest.approx((110 / 2.0) / (110 / 3.0))  # 1.5: sums
    # Spec-Bench: mean over questions of tokens/s: spec (100 + 10) / 2 = 55, AR (50 + 10) / 2 = 30
    assert m["eval/speedup_specbench"] == pytest.approx(55 / 30)
    assert m["eval/a/speedup_specbench"] == pytest.approx(55 / 30)


def test_answers_need_decoding():
    with pytest.raises(ConfigError, match="^eval.answers: "):
        compose(
            [
                "experiment=smoke",
                "eval.answers=true",
                "eval.method=reference",
                "stages=[eval]",
                "draft.checkpoint=x",
            ]
        )


def test_a_specbench_file_evaluates_and_writes_answers(tmp_path):
    overrides = [
        "experiment=smoke",
        "decoding=ngram",
        "stages=[eval]",
        "eval=file",
        f"eval.prompts={_question_file(tmp_path)}",
        "eval.answers=true",
        "eval.model_id=tiny-ngram",
        "eval.warmup=0",
        "decoding.max_new_tokens=8",
        "threads=1",
    ]
    threads = torch.get_num_threads()
    try:
        metrics = execute(compose(overrides)[0][0], tmp_path / "run")
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(x) for x in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert [(r["id"], r["turn"], r["category"]) for r in rows] == [
        ("81", 0, "writing"),
        ("81", 1, "writing"),
        ("161", 0, "translation"),
        ("321", 0, "qa"),
    ]
    answers = {}
    for name in ("tiny-ngram", "tiny-ngram-baseline"):
        f = tmp_path / "run" / "model_answer" / f"{name}.jsonl"
        answers[name] = [json.loads(x) for x in f.read_text().splitlines()]
    spec, base = answers["tiny-ngram"], answers["tiny-ngram-baseline"]
    assert [a["question_id"] for a in spec] == [81, 161, 321]  # ints, as in the question file
    assert {a["model_id"] for a in spec} == {"tiny-ngram"} and spec[0]["category"] == "writing"
    by_q = {}
    for r in rows:
        by_q.setdefault(r["id"], []).append(r)
    for a, b in zip(spec, base):
        c, cb = a["choices"][0], b["choices"][0]
        rs = by_q[str(a["question_id"])]
        assert len(c["turns"]) == len(rs) == len(cb["turns"])
        assert c["new_tokens"] == [r["spec"]["new_tokens"] for r in rs]
        assert c["wall_time"] == [r["spec"]["wall_s"] for r in rs]
        assert cb["new_tokens"] == [r["ar"]["new_tokens"] for r in rs]
        # one accept length per verification step: its accepted draft tokens plus the target's own
        assert c["accept_lengths"] == [n + 1 for r in rs for n in r["spec"]["accepted"]]
        assert sum(c["decoding_steps"]) == len(c["accept_lengths"])
        assert all(isinstance(t, str) for t in c["turns"])

    # Spec-Bench's evaluation/speed.py on these files: mean over questions of sum(new_tokens) / sum(wall_time)
    def mean_rate(objs):
        rates = [sum(o["choices"][0]["new_tokens"]) / sum(o["choices"][0]["wall_time"]) for o in objs]
        return sum(rates) / len(rates)

    assert metrics["eval/speedup_specbench"] == pytest.approx(mean_rate(spec) / mean_rate(base))
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert set(run["eval_info"]["specbench_answers"]) == {"spec", "ar"}
