"""Eval prompt loaders: packaged counts and fields, user-file errors, split disjointness, determinism."""

from __future__ import annotations

import json

import pytest

from vsd.config.schema import EvalConfig
from vsd.data import eval_prompts as P
from vsd.errors import UserError

EXPECTED = {
    "mt_bench": 80,
    "coding": 164,
    "math": P.MATH_POOL_SIZE,
    "qa": 600,
    "translation": 1012,
    "summarisation": 698,
}


@pytest.mark.parametrize("category", sorted(EXPECTED))
def test_packaged_counts_and_fields(category):
    recs = P.load_category(category)
    assert len(recs) == EXPECTED[category]
    assert len({r["id"] for r in recs}) == len(recs)  # ids unique
    for r in recs:
        assert r["category"] == category
        assert r["source"] and isinstance(r["source"], str)
        assert r["turns"] and all(isinstance(t, str) and t.strip() for t in r["turns"])
    n_turns = {len(r["turns"]) for r in recs}
    assert n_turns == ({2} if category == "mt_bench" else {1})


def test_prompt_texts_are_what_the_set_says():
    mt = P.load_category("mt_bench")
    assert mt[0]["turns"][0].startswith("Compose an engaging travel blog post about a recent trip to Hawaii")
    assert {r["subcategory"] for r in mt} >= {"writing", "coding", "math", "reasoning"}
    he = P.load_category("coding")[0]
    assert "def has_close_elements" in he["turns"][0] and he["turns"][0].startswith("Complete the")
    tr = P.load_category("translation")[0]
    assert "Malay" in tr["turns"][0] and "4-month-old mice" in tr["turns"][0]
    assert P.load_category("qa")[0]["turns"] == ["What is the name of the first animal to land on the moon?"]
    su = P.load_category("summarisation")
    assert su[0]["turns"][0].startswith(P.SUMMARISATION_INSTRUCTION) and "Voges" in su[0]["turns"][0]
    lo, hi = P.SUMMARISATION_WORDS
    assert all(lo <= len(r["raw"].split()) <= hi for r in su)


def test_splits_disjoint_deterministic_and_cover_everything():
    for cat in EXPECTED:
        ids = [r["id"] for r in P.load_category(cat)]
        val = {i for i in ids if P.split_of(i) == "val"}
        test = {i for i in ids if P.split_of(i) == "test"}
        assert not val & test and val | test == set(ids)
        assert 0.1 < len(val) / len(ids) < 0.3  # about VAL_FRACTION
        a = [r["id"] for r in P.sample_category(cat, "val", 5, seed=3)]
        b = [r["id"] for r in P.sample_category(cat, "val", 5, seed=3)]
        c = [r["id"] for r in P.sample_category(cat, "test", 5, seed=3)]
        assert a == b and len(a) == 5 and set(a) <= val and set(c) <= test
        assert [r["id"] for r in P.sample_category(cat, "test", 5, seed=4)] != c  # the seed matters


def test_suites():
    cfg = EvalConfig(suite="specbench_style", per_category=3, split="val", seed=1)
    recs = P.load_suite(cfg)
    assert len(recs) == 3 * len(P.CATEGORIES)
    assert [r["category"] for r in recs] == [c for c in cfg.categories for _ in range(3)]
    assert all(P.split_of(r["id"]) == "val" for r in recs)
    test_ids = {r["id"] for r in P.load_suite(EvalConfig(suite="specbench_style", per_category=3, seed=1))}
    assert not test_ids & {r["id"] for r in recs}
    he = P.load_suite(EvalConfig(suite="humaneval", per_category=2))
    assert [r["category"] for r in he] == ["coding", "coding"]


def test_all_eval_prompt_texts_covers_both_splits_and_turns():
    texts = P.all_eval_prompt_texts()
    mt = P.load_category("mt_bench")
    assert all(t in texts for r in mt for t in r["turns"])
    flores = P.load_category("translation")[5]
    assert flores["raw"] in texts and flores["turns"][0] in texts
    assert len(texts) > sum(EXPECTED.values())


def _write(tmp_path, name, lines):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


GOOD = json.dumps({"id": "a", "turns": ["hello"]})


@pytest.mark.parametrize(
    "name,bad_line,needle",
    [
        ("notjson.jsonl", '{"id": "b", "turns": ["x"]', "not valid JSON"),
        ("noid.jsonl", json.dumps({"turns": ["x"]}), "missing field 'id'"),
        ("noturns.jsonl", json.dumps({"id": "b"}), "missing field 'turns'"),
        ("empty.jsonl", json.dumps({"id": "b", "turns": []}), "'turns' is empty"),
        ("strturns.jsonl", json.dumps({"id": "b", "turns": "hi"}), "must be a list"),
        ("intturn.jsonl", json.dumps({"id": "b", "turns": ["ok", 3]}), "turns[1] must be a string"),
        ("blankturn.jsonl", json.dumps({"id": "b", "turns": ["  "]}), "turns[0] is an empty string"),
        ("badcat.jsonl", json.dumps({"id": "b", "category": 7, "turns": ["x"]}), "'category'"),
        ("list.jsonl", json.dumps(["b", "x"]), "expected a JSON object"),
        ("dup.jsonl", json.dumps({"id": "a", "turns": ["x"]}), "duplicate id"),
    ],
)
def test_user_file_errors_name_file_and_line(tmp_path, name, bad_line, needle):
    p = _write(tmp_path, name, [GOOD, "", bad_line])  # the bad record is on line 3 (blank line 2)
    with pytest.raises(UserError) as ei:
        P.load_prompt_file(p)
    msg = str(ei.value)
    assert f"{p}:3" in msg and needle in msg and "\n" not in msg


def test_user_file_loads(tmp_path):
    p = _write(
        tmp_path,
        "ok.jsonl",
        [GOOD, json.dumps({"id": 2, "category": "mine", "turns": ["one", "two"]})],
    )
    recs = P.load_prompt_file(p)
    assert [(r["id"], r["category"], len(r["turns"])) for r in recs] == [("a", "user", 1), ("2", "mine", 2)]
    suite = P.load_suite(EvalConfig(suite="file", prompts=str(p), per_category=1))
    assert [r["id"] for r in suite] == ["a", "2"]
    with pytest.raises(UserError, match="does not exist"):
        P.load_prompt_file(tmp_path / "missing.jsonl")
