"""Self-distillation cache: correct sequences, reuse, resume after interruption, key sensitivity, locking."""

import threading

import pytest
import torch

from vsd.config import compose
from vsd.data.selfdistill import Interrupted, build_selfdistill, load_sequences
from vsd.data.shards import shard_name
from vsd.data.sources import TINY_PROMPTS

N = 6  # prompts -> 3 shards of batch 2


BASE = [  # the tiny self-distillation set-up these tests and tests/data/test_turns.py share
    "model=tiny_random",
    "dataset=tiny",
    "dataset.source=tiny",
    "dataset.gen_batch_size=2",
    "dataset.gen_max_new_tokens=6",
    "dataset.max_seq_len=80",
]


def _cfg(**kw):
    _, cfg = compose(BASE + [f"dataset.{k}={v}" for k, v in kw.items()])[0]
    return cfg.dataset


def _prompts(n=N):
    return [
        {"id": f"tiny:{i}", "messages": [{"role": "user", "content": t}], "source": "tiny"}
        for i, t in enumerate(TINY_PROMPTS[:n])
    ]


def _tokens(d):
    return [s["input_ids"].tolist() for s in load_sequences(d)]


def test_sequences_and_reuse(tiny_target, tmp_path):
    dcfg = _cfg()
    d, st = build_selfdistill(tiny_target, _prompts(), dcfg, tmp_path, progress=False)
    assert st["reused"] == 0 and st["shards_computed"] == 3 and st["sequences"] == N
    seqs = load_sequences(d)
    for p, s in zip(_prompts(), seqs):
        pid = tiny_target.chat_ids(p["messages"])
        assert s["input_ids"][: len(pid)].tolist() == pid  # prompt through the chat template
        assert s["loss_mask"].dtype == torch.bool and not s["loss_mask"][: len(pid)].any()
        assert s["loss_mask"][len(pid) :].all() and 1 <= int(s["loss_mask"].sum()) <= 6
        assert len(s["input_ids"]) <= dcfg.max_seq_len
    # greedy responses are the target's own argmax continuation (batch-1 check of the first sequence)
    s0 = seqs[0]
    logits = tiny_target.forward(s0["input_ids"][None], use_cache=False).logits[0]
    resp_pos = torch.nonzero(s0["loss_mask"]).flatten()
    assert torch.equal(logits[resp_pos - 1].argmax(-1), s0["input_ids"][resp_pos])
    d2, st2 = build_selfdistill(tiny_target, _prompts(), dcfg, tmp_path, progress=False)
    assert d2 == d and st2["reused"] == 1 and st2["shards_computed"] == 0
    assert st2["response_tokens"] == st["response_tokens"]


def test_resume_after_interruption(tiny_target, tmp_path):
    dcfg = _cfg()
    ref, _ = build_selfdistill(tiny_target, _prompts(), dcfg, tmp_path / "a", progress=False)
    with pytest.raises(Interrupted):
        build_selfdistill(tiny_target, _prompts(), dcfg, tmp_path / "b", progress=False, stop_after_shards=1)
    d, st = build_selfdistill(tiny_target, _prompts(), dcfg, tmp_path / "b", progress=False)
    assert st["shards_computed"] == 2 and _tokens(d) == _tokens(ref)
    # a job killed after its last shard but before the manifest: only that shard is redone
    (d / "manifest.json").unlink()
    (d / shard_name(2)).unlink()
    d, st = build_selfdistill(tiny_target, _prompts(), dcfg, tmp_path / "b", progress=False)
    assert st["shards_computed"] == 1 and _tokens(d) == _tokens(ref)


def test_key_depends_on_settings_and_prompts(tiny_target, tmp_path):
    a, _ = build_selfdistill(tiny_target, _prompts(2), _cfg(), tmp_path, progress=False)
    b, _ = build_selfdistill(tiny_target, _prompts(2), _cfg(gen_max_new_tokens=3), tmp_path, progress=False)
    c, _ = build_selfdistill(tiny_target, _prompts(3)[1:], _cfg(), tmp_path, progress=False)
    assert len({a, b, c}) == 3
    assert max(int(s["loss_mask"].sum()) for s in load_sequences(b)) <= 3


def test_two_jobs_build_once(tiny_target, tmp_path):
    dcfg = _cfg()
    results = []

    def job():
        results.append(build_selfdistill(tiny_target, _prompts(4), dcfg, tmp_path, progress=False))

    ts = [threading.Thread(target=job) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert results[0][0] == results[1][0]
    assert sorted(r[1]["shards_computed"] for r in results) == [0, 2]


def test_source_responses_are_the_datasets_own_replies(tiny_target, tmp_path):
    """dataset.responses=source: no generation; each sequence is the prompt plus the source's tokenised reply
    (the chat template's assistant turn, up to its end-of-turn token, within gen_max_new_tokens)."""
    import json

    from vsd.data.sources import load_json_file
    from vsd.pipeline import execute

    f = tmp_path / "chats.jsonl"
    rows = [
        {"id": f"c{i}", "messages": [{"role": "user", "content": t}, {"role": "assistant", "content": r}]}
        for i, (t, r) in enumerate([("hi there", "hello!"), ("2+2?", "4"), ("name a colour", "blue, " * 40)])
    ]
    rows.append({"id": "no-reply", "messages": [{"role": "user", "content": "unanswered"}]})
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prompts = load_json_file(f)
    assert [p["response"] for p in prompts][:2] == ["hello!", "4"] and prompts[3]["response"] is None
    cfg = _cfg(responses="source", gen_max_new_tokens=20)
    d, st = build_selfdistill(tiny_target, prompts[:3], cfg, tmp_path / "cache", progress=False)
    seqs = load_sequences(d)
    eos = tiny_target.eos_token_ids
    for p, s in zip(prompts[:3], seqs):
        ids = s["input_ids"].tolist()
        resp = ids[s["prompt_len"] :]
        assert ids[: s["prompt_len"]] == tiny_target.chat_ids(p["messages"])
        assert len(resp) <= 20
        if len(resp) < 20:
            assert resp[-1] in eos and tiny_target.decode(resp) == p["response"]
        else:
            assert p["response"].startswith(tiny_target.decode(resp))
    # not the target's own text, and not the same cache as self-distillation
    d2, _ = build_selfdistill(
        tiny_target, prompts[:3], _cfg(gen_max_new_tokens=20), tmp_path / "cache", progress=False
    )
    assert d2 != d and _tokens(d2) != _tokens(d)
    # through the data stage: the prompt without a reply is dropped and counted; a source without replies errors
    over = [
        "experiment=smoke",
        "stages=[data]",
        "dataset.source=jsonl",
        f"dataset.path={f}",
        "dataset.responses=source",
        "dataset.heldout_fraction=0",
    ]
    execute(compose(over)[0][0], tmp_path / "run")
    card = json.loads((tmp_path / "run" / "data_card.json").read_text())
    assert (
        card["source_stats"]["without_source_response"] == 1 and card["generation"]["responses"] == "source"
    )
    with pytest.raises(Exception, match="dataset.responses"):
        no_replies = ["experiment=smoke", "stages=[data]", "dataset.source=tiny", "dataset.responses=source"]
        execute(compose(no_replies)[0][0], tmp_path / "r2")
