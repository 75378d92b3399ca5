"""Whole conversations (dataset.turns=all): masks on assistant tokens only, ids = the template over the whole
conversation, every reply regenerated in context, chat template and system prompt overrides, conversation
parsing, the vocab counting assistant tokens only, and turns=first reproducing the data made before."""

import json

import pytest
import torch

from tests.data.test_selfdistill import BASE
from vsd.config import compose
from vsd.data.chat import ChatFormat, complete_pairs, conversation_ids, normalize_chat
from vsd.data.selfdistill import build_selfdistill, load_sequences, selfdistill_desc
from vsd.data.shards import content_key
from vsd.data.sources import TINY_PROMPTS, as_conversations, load_json_file, load_sharegpt, prompt_text
from vsd.errors import UserError

SYSTEM = {"role": "system", "content": "Be brief."}
THREE = [SYSTEM] + [{"role": "user", "content": t} for t in ("Hi there", "And then?", "Why so?")]


def _dcfg(*over: str):
    return compose(BASE + list(over))[0][1].dataset


def _assistant_mask(ids: list[int], tok) -> list[bool]:
    """The tiny template is ``<|role|>content<|end|>`` per message: a message starts at 0 or after an <|end|>,
    its first token names the role, and an assistant message's tokens (content and <|end|>) are the mask."""
    end, asst = tok.convert_tokens_to_ids("<|end|>"), tok.convert_tokens_to_ids("<|assistant|>")
    mask, pos = [False] * len(ids), 0
    while pos < len(ids):
        stop = next((j for j in range(pos + 1, len(ids)) if ids[j] == end), len(ids) - 1)
        if ids[pos] == asst:
            mask[pos + 1 : stop + 1] = [True] * (stop - pos)
        pos = stop + 1
    return mask


def _runs(mask: list[bool]) -> list[tuple[int, int]]:
    out, start = [], None
    for j, m in enumerate([*mask, False]):
        if m and start is None:
            start = j
        elif not m and start is not None:
            out.append((start, j))
            start = None
    return out


def test_first_turn_reproduces_the_data_made_before(tiny_target, tmp_path):
    """turns=first (the default) keeps today's cache keys and data: keys, token and mask hashes recorded by the
    code of f25024c (before dataset.turns existed) on the same tiny target and prompts."""
    from vsd.features.cache import build_features

    prompts = [
        {"id": f"tiny:{i}", "messages": [{"role": "user", "content": t}], "source": "tiny"}
        for i, t in enumerate(TINY_PROMPTS[:5])
    ]
    d, _ = build_selfdistill(tiny_target, prompts, _dcfg(), tmp_path, progress=False)
    seqs = load_sequences(d)
    digest = content_key([(s["input_ids"].tolist(), s["loss_mask"].tolist(), s["prompt_len"]) for s in seqs])
    fd, _ = build_features(tiny_target, d, tmp_path, progress=False)
    assert (d.name, digest, fd.name) == ("ff67769591722091", "8788410756c861c3", "59c579b94e4783e4")
    f = tmp_path / "chats.jsonl"
    rows = [
        {"id": f"c{i}", "messages": [{"role": "user", "content": a}, {"role": "assistant", "content": b}]}
        for i, (a, b) in enumerate([("hi there", "hello!"), ("2+2?", "4")])
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    src = _dcfg("dataset.responses=source", "dataset.gen_max_new_tokens=20")
    d2, _ = build_selfdistill(tiny_target, load_json_file(f), src, tmp_path, progress=False)
    seqs = load_sequences(d2)
    digest = content_key([(s["input_ids"].tolist(), s["loss_mask"].tolist(), s["prompt_len"]) for s in seqs])
    assert (d2.name, digest) == ("9da6c2f18579c250", "3a0f31817125ee78")


def test_three_turns_selfdistilled_in_context(tiny, tmp_path):
    """A 3-turn record: the mask is 1 exactly on assistant tokens (content and end-of-turn), the ids are the
    template over the whole conversation, and each reply is the target's greedy continuation of the rendered
    conversation before it (its own earlier replies included)."""
    target, _ = tiny
    tok = target.tokenizer
    dcfg = _dcfg("dataset.turns=all", "dataset.max_seq_len=400", "dataset.gen_max_new_tokens=7")
    prompts = [
        {"id": "three", "messages": THREE, "source": "t"},
        {"id": "two", "messages": THREE[1:3], "source": "t"},
        {"id": "one", "messages": THREE[1:2], "source": "t"},
    ]
    d, st = build_selfdistill(target, prompts, dcfg, tmp_path, progress=False)
    seqs = load_sequences(d)
    assert [s["turns"] for s in seqs] == [3, 2, 1] and st["assistant_turns"] == 6
    eos = target.eos_token_ids
    for p, s in zip(prompts, seqs):
        ids, mask = s["input_ids"].tolist(), s["loss_mask"].tolist()
        assert mask == _assistant_mask(ids, tok)
        runs = _runs(mask)
        assert len(runs) == s["turns"] and all(ids[b - 1] in eos for _, b in runs)
        replies = [tok.decode(ids[a : b - 1], skip_special_tokens=False) for a, b in runs]
        conv = list(p["messages"])
        for k, r in enumerate(replies):  # reinsert each reply after its user turn
            at = [i for i, m in enumerate(conv) if m["role"] == "user"][k] + 1
            conv.insert(at, {"role": "assistant", "content": r})
        assert ids == target.chat_ids(conv, add_generation_prompt=False)
        assert (
            s["prompt_len"] == runs[0][0] == len(target.chat_ids(conv[: 1 + (conv[0]["role"] == "system")]))
        )
        for a, b in runs:  # greedy from the stored prefix (batch 1, unpadded) gives the same reply text
            out = target.model.generate(
                input_ids=torch.tensor([ids[:a]]), max_new_tokens=7, do_sample=False, eos_token_id=sorted(eos)
            )[0, a:].tolist()
            out = out[: next((j for j, t in enumerate(out) if t in eos), len(out))]
            assert tok.decode(out, skip_special_tokens=False) == tok.decode(
                ids[a : b - 1], skip_special_tokens=False
            )
    # the first turns alone are a different cache
    assert build_selfdistill(target, prompts, _dcfg(), tmp_path, progress=False)[0] != d


def test_source_replies_every_turn_and_cut_at_max_seq_len(tiny_target, tmp_path):
    conv = [SYSTEM]
    for u, a in (
        ("Q one", "first answer"),
        ("Q two", "second answer that is long " * 3),
        ("Q three", "third"),
    ):
        conv += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    prompts = [{"id": "s", "messages": conv, "source": "t"}]
    dcfg = _dcfg(
        "dataset.turns=all",
        "dataset.responses=source",
        "dataset.gen_max_new_tokens=20",
        "dataset.max_seq_len=400",
    )
    s = load_sequences(build_selfdistill(tiny_target, prompts, dcfg, tmp_path, progress=False)[0])[0]
    ids, mask = s["input_ids"].tolist(), s["loss_mask"].tolist()
    replies = [tiny_target.decode(ids[a:b]) for a, b in _runs(mask)]
    assert replies == [
        "first answer",
        ("second answer that is long " * 3)[:20],
        "third",
    ]  # bytes: 1 token/char
    assert mask == _assistant_mask(ids, tiny_target.tokenizer)
    # max_seq_len inside turn 2: turn 3 is not there, turn 2 is cut
    cut = _dcfg(
        "dataset.turns=all",
        "dataset.responses=source",
        "dataset.gen_max_new_tokens=20",
        "dataset.max_seq_len=60",
        "dataset.max_prompt_tokens=30",
    )
    s = load_sequences(build_selfdistill(tiny_target, prompts, cut, tmp_path, progress=False)[0])[0]
    assert len(s["input_ids"]) == 60 and s["turns"] == 2 and len(_runs(s["loss_mask"].tolist())) == 2


def test_template_file_and_system_prompt_override(tiny_target, tmp_path):
    tpl = tmp_path / "t.jinja"
    tpl.write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    conv = [
        SYSTEM,
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "ok?"},
        {"role": "assistant", "content": "ok"},
    ]
    dcfg = _dcfg(
        "dataset.turns=all",
        "dataset.responses=source",
        f"dataset.chat_template={tpl}",
        "dataset.system_prompt=Answer in French.",
    )
    fmt = ChatFormat(tiny_target, dcfg)
    ids, mask, starts = conversation_ids(fmt, conv)
    text = tiny_target.tokenizer.decode(ids, skip_special_tokens=False)
    assert (
        text
        == "[system] Answer in French.<|end|>[user] hi<|end|>[assistant] yo<|end|>[user] ok?<|end|>[assistant] ok<|end|>"
    )
    assert [tiny_target.tokenizer.decode(ids[a:b], skip_special_tokens=False) for a, b in _runs(mask)] == [
        "yo<|end|>",
        "ok<|end|>",
    ]
    assert fmt.desc().keys() == {"chat_template", "system_prompt"}
    # "" removes the conversation's own system message; the named chatml template renders without a default one
    no_sys = ChatFormat(tiny_target, _dcfg("dataset.system_prompt=", "dataset.chat_template=chatml"))
    assert (
        tiny_target.decode(no_sys.ids(conv[:2])) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    # the keys enter the data's cache key; the defaults do not
    prompts = [{"id": "x", "messages": conv, "source": "t"}]
    keys = {
        content_key(selfdistill_desc(tiny_target, prompts, c))
        for c in (_dcfg(), _dcfg("dataset.system_prompt=S"), dcfg)
    }
    assert len(keys) == 3
    assert "system_prompt" not in selfdistill_desc(tiny_target, prompts, _dcfg())


def test_template_errors_are_one_line(tiny_target, tmp_path):
    with pytest.raises(UserError, match=r"^dataset.chat_template: 'nope' is neither"):
        ChatFormat(tiny_target, _dcfg("dataset.chat_template=nope"))
    # a template that renders the last user turn differently from earlier ones: a turn's generation context is
    # not how the whole conversation renders it, so no mask can be placed
    hide = tmp_path / "last.jinja"
    hide.write_text(
        "{% for m in messages %}<|{{ m['role'] }}|>{% if loop.last and m['role'] == 'user' %}LAST {% endif %}"
        "{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    conv = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    fmt = ChatFormat(tiny_target, _dcfg(f"dataset.chat_template={hide}"))
    with pytest.raises(UserError) as e:
        conversation_ids(fmt, conv, where="record 'r'")
    assert str(e.value).startswith("dataset.chat_template: the template renders record 'r' differently")
    assert "\n" not in str(e.value)
    nul = tmp_path / "no_eos.jinja"  # no end-of-turn token of the target closes a reply
    nul.write_text(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(UserError, match="not closed by an end-of-turn token"):
        conversation_ids(ChatFormat(tiny_target, _dcfg(f"dataset.chat_template={nul}")), conv[:2])


def test_conversation_parsing(tmp_path):
    pairs = [
        ("system", "s"),
        ("gpt", "greeting"),
        ("human", "u1"),
        ("gpt", "a1"),
        ("human", "u2"),
        ("human", "u3"),
        ("gpt", "a3"),
        ("gpt", "a3 again"),
        ("human", "u4"),
    ]
    conv = normalize_chat(pairs)
    assert [(m["role"], m["content"]) for m in conv] == [
        ("system", "s"),
        ("user", "u1"),
        ("assistant", "a1"),
        ("user", "u2"),
        ("user", "u3"),
        ("assistant", "a3"),
    ]
    assert [m["content"] for m in complete_pairs(conv)] == ["s", "u1", "a1"]
    assert normalize_chat([("user", "u"), ("tool", "x"), ("user", "v")]) == [{"role": "user", "content": "u"}]
    assert complete_pairs([{"role": "user", "content": "u"}]) == []
    rows = [
        {"id": "ultra", "data": ["q1", "r1", "q2", "r2"]},
        {"id": "mt", "turns": ["t1", "t2"]},
        {
            "id": "chat",
            "messages": [{"role": "user", "content": "m1"}, {"role": "assistant", "content": "n1"}],
        },
        {"id": "plain", "prompt": "p"},
    ]
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recs = load_json_file(f)
    assert recs[0]["response"] == "r1" and prompt_text(recs[0]) == "q1"  # turns=first: as before, plus "data"
    target, st = as_conversations(recs, "target")
    assert [[m["content"] for m in p["messages"]] for p in target] == [
        ["q1", "q2"],
        ["t1", "t2"],
        ["m1"],
        ["p"],
    ]
    assert st["user_turns"] == 6 and st["multi_turn_conversations"] == 2
    source, st = as_conversations(recs, "source")
    assert [p["id"] for p in source] == ["ultra", "chat"] and st["without_source_response"] == 2
    assert [m["content"] for m in source[0]["messages"]] == ["q1", "r1", "q2", "r2"]
    assert prompt_text(source[0]) == "q1\nq2"  # dedupe and the eval-overlap check see every user turn


def test_sharegpt_later_turns():
    prompts, _ = load_sharegpt()
    convs, st = as_conversations(prompts, "target")
    assert st["conversations"] == len(prompts) and st["user_turns"] > 2 * len(prompts)
    assert all(
        p["messages"][0]["content"] == q["messages"][0]["content"] for p, q in zip(convs[:50], prompts)
    )


def test_vocab_counts_assistant_tokens_only(tmp_path):
    """Through the data stage: user and system text never enters the draft vocab or its token count."""
    from vsd.pipeline import execute

    f = tmp_path / "chats.jsonl"
    rows = [
        {
            "id": f"c{i}",
            "messages": [
                {"role": "system", "content": "QQQQQQQQ"},
                {"role": "user", "content": "Q" * (i + 1)},
                {"role": "assistant", "content": "ab" * (i + 1)},
                {"role": "user", "content": "QQ"},
                {"role": "assistant", "content": "ba"},
            ],
        }
        for i in range(4)
    ]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    over = [
        "experiment=smoke",
        "stages=[data]",
        "dataset.source=jsonl",
        f"dataset.path={f}",
        "dataset.turns=all",
        "dataset.responses=source",
        "dataset.heldout_fraction=0",
        "model.draft.vocab_size=3",
    ]
    m = execute(compose(over)[0][0], tmp_path / "run")
    assert m["data/assistant_turns"] == 8 and m["data/sequences"] == 4
    card = json.loads((tmp_path / "run" / "data_card.json").read_text())
    assert card["tokens"]["response_tokens"] == sum(2 * (i + 1) + 1 + 3 for i in range(4))  # a, b, <|end|>
    assert card["generation"]["turns"] == "all"
    from vsd.data.vocab import load_vocab

    vocab = load_vocab(tmp_path / "run" / "draft_vocab.safetensors")
    from vsd.models.tiny import byte_tokenizer

    tok = byte_tokenizer()
    want = sorted(tok.convert_tokens_to_ids(t) for t in ("a", "b", "<|end|>"))
    assert vocab["d2t"].tolist() == want and card["vocab"]["coverage_train"] == 1.0
