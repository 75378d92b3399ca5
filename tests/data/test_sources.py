"""Prompt sources: ShareGPT recovery, user JSON/JSONL files (errors name file and line), HF local files,
deterministic selection and the train/eval disjointness check."""

import importlib.util
import json
from pathlib import Path

import pytest

from vsd.config import compose
from vsd.data.disjoint import EvalOverlapIndex, normalize
from vsd.data.sources import (
    TINY_PROMPTS,
    load_hf,
    load_json_file,
    load_prompts,
    load_sharegpt,
    prompt_text,
    recover_json_list,
    select_prompts,
)
from vsd.errors import UserError


def test_sharegpt_recovers_complete_records():
    prompts, stats = load_sharegpt()
    assert stats["file_truncated"] is True  # the packaged file really is cut mid-record
    assert stats["records_recovered"] == 17671
    assert 11000 < stats["human_first"] == len(prompts) < stats["records_recovered"]
    for p in prompts[:200] + prompts[-200:]:
        assert p["source"] == "sharegpt" and p["id"].startswith("sharegpt:")
        assert p["messages"][0]["role"] == "user" and p["messages"][0]["content"].strip()


def test_recover_truncated_list(tmp_path):
    f = tmp_path / "t.json"
    f.write_text('[\n {"a": 1},\n {"a": 2}, {"a": 3},\n {"a": "unterminat')
    rows, info = recover_json_list(f)
    assert [r["a"] for _, r in rows] == [1, 2, 3]
    assert [line for line, _ in rows] == [2, 3, 3]
    assert info["truncated"] and info["truncated_at_line"] == 4


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


BAD = [
    ("bad.jsonl", '{"turns": ["ok"]}\n{"turns": ["x"\n', 2, "invalid JSON"),
    ("list.jsonl", '{"turns": ["ok"]}\n\n[1, 2]\n', 3, "expected a JSON object"),
    ("missing.jsonl", '{"id": 1, "turns": ["a"]}\n{"id": 2, "text": "b"}\n', 2, "none of the fields"),
    ("type.jsonl", '{"turns": 5}\n', 1, "must be a list or a string"),
    ("empty_list.jsonl", '{"turns": ["a"]}\n{"turns": []}\n', 2, "is empty"),
    ("empty_turn.jsonl", '{"turns": ["  "]}\n', 1, "empty string"),
    ("nouser.jsonl", '{"conversations": [{"from": "gpt", "value": "hi"}]}\n', 1, "no user turn"),
    ("content.jsonl", '{"messages": [{"role": "user", "content": 3}]}\n', 1, "content must be a string"),
    ("bad.json", '[\n {"turns": ["a"]},\n {"turns": 7}\n]\n', 3, "must be a list or a string"),
]


@pytest.mark.parametrize("name,text,line,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_user_file_names_file_and_line(tmp_path, name, text, line, msg):
    p = _write(tmp_path, name, text)
    with pytest.raises(UserError) as e:
        load_json_file(p)
    s = str(e.value)
    assert f"{p}:{line}:" in s and msg in s, s
    assert "\n" not in s


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(UserError, match="file is empty"):
        load_json_file(_write(tmp_path, "e.jsonl", "\n\n"))
    with pytest.raises(UserError, match="dataset.path: .* does not exist"):
        load_json_file(tmp_path / "nope.jsonl")


def test_user_file_formats(tmp_path):
    lines = [
        {"id": "a", "turns": ["first", "second"]},
        {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "hello"}]},
        {"id": 7, "messages": [{"role": "user", "content": "hey there"}]},
        {"prompt": "plain prompt"},
    ]
    p = _write(tmp_path, "ok.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    out = load_json_file(p)
    assert [prompt_text(x) for x in out] == ["first", "hello", "hey there", "plain prompt"]
    assert [x["id"] for x in out] == ["a", "ok:2", "7", "ok:4"]
    # the same records as a .json list
    pj = _write(tmp_path, "ok.json", json.dumps(lines, indent=1))
    assert [prompt_text(x) for x in load_json_file(pj)] == [prompt_text(x) for x in out]


def test_hf_source_local_files_and_hub_without_datasets(tmp_path):
    p = _write(tmp_path, "d.jsonl", json.dumps({"conversations": [{"role": "user", "content": "q1"}]}) + "\n")
    _, cfg = compose(["dataset=hf_dataset", f"dataset.hf_name={p}"])[0]
    assert [prompt_text(x) for x in load_hf(cfg.dataset)] == ["q1"]
    _, cfg = compose(["dataset=hf_dataset", "dataset.hf_name=someorg/somedata"])[0]
    if importlib.util.find_spec("datasets") is None:  # the hub branch needs `datasets`
        with pytest.raises(UserError, match="pip install datasets"):
            load_hf(cfg.dataset)
    if importlib.util.find_spec("pyarrow") is None and importlib.util.find_spec("fastparquet") is None:
        pq = _write(tmp_path, "d.parquet", "PAR1")
        _, cfg = compose(["dataset=hf_dataset", f"dataset.hf_name={pq}"])[0]
        with pytest.raises(UserError, match=f"{pq}: reading .parquet needs pyarrow"):
            load_hf(cfg.dataset)


def test_tiny_source():
    _, cfg = compose(["dataset=tiny", "dataset.source=tiny"])[0]
    prompts, stats = load_prompts(cfg.dataset)
    assert stats["records"] == len(prompts) == len(TINY_PROMPTS)


def _prompts(texts):
    return [
        {"id": str(i), "messages": [{"role": "user", "content": t}], "source": "t"}
        for i, t in enumerate(texts)
    ]


def test_selection_deterministic_skips_long_and_dedupes():
    texts = [f"prompt number {i} " + "x " * (i % 7) for i in range(40)] + ["prompt number 0 "]
    ps = _prompts(texts)
    count = lambda p: len(prompt_text(p).split())  # noqa: E731
    a, sa = select_prompts(ps, 10, 3, count, 5, None)
    b, _ = select_prompts(ps, 10, 3, count, 5, None)
    c, _ = select_prompts(ps, 10, 4, count, 5, None)
    assert [p["id"] for p in a] == [p["id"] for p in b] != [p["id"] for p in c]
    assert sa["duplicates_removed"] == 1 and sa["selected"] == 10
    assert all(p["prompt_tokens"] <= 5 for p in a)
    assert sa["skipped_too_long"] == sa["considered"] - 10 > 0


def test_disjointness_catches_injected_eval_prompt():
    eval_q = "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences and must-see attractions."
    index = EvalOverlapIndex([eval_q, "short one"])
    assert (
        index.match(
            "  compose an ENGAGING travel blog post about a recent trip to hawaii; highlighting cultural "
            "experiences and must-see attractions!"
        )
        == "exact"
    )
    assert index.match("Please help. " + eval_q + " Thanks a lot.") == "13-gram"
    assert index.match("Write a poem about Hawaii.") is None
    assert index.match("Short one") == "exact"
    ps = _prompts(["an unrelated prompt", "Hi! " + eval_q, "another unrelated one"])
    sel, st = select_prompts(ps, 3, 0, lambda p: 1, 10, index)
    assert st["dropped_eval_overlap"] == 1 and st["dropped_eval_overlap_examples"][0]["id"] == "1"
    assert sorted(p["id"] for p in sel) == ["0", "2"]
    assert normalize("A-b_c  D") == "a b c d"
