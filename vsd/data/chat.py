"""Chat formatting of training data: the chat template and system prompt, whole conversations, loss masks.

A conversation is a list of ``{"role", "content"}`` messages: an optional leading ``system`` message, then
``user`` turns, each followed by its ``assistant`` reply (absent where the source has none: the target writes
every reply under ``dataset.responses=target``).

:class:`ChatFormat` renders messages to token ids with ``dataset.chat_template`` (a named template of
:data:`NAMED_TEMPLATES` or a Jinja file; default: the target tokenizer's) and ``dataset.system_prompt``
(replaces the conversation's own system message; ``""`` removes it; default: none under ``turns=first``, the
record's own under ``turns=all``).

:func:`conversation_ids` renders a whole conversation once and marks its assistant tokens: an assistant
turn's tokens run from the end of the generation prompt that precedes it through the first end-of-turn token
(an EOS id of the target) after it, exactly the tokens the target generates for that turn. Everything else
(system and user turns, template markup, the generation prompt itself) has loss mask 0.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from vsd.config.schema import DatasetConfig
from vsd.errors import UserError

Message = dict[str, str]

# A few templates by name, for targets whose tokenizer has none or to train in another format. They add no
# default system prompt (``dataset.system_prompt`` adds one).
NAMED_TEMPLATES = {
    "chatml": (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
    ),
    "vicuna": (
        "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% else %}A chat between a curious "
        "user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite "
        "answers to the user's questions.{% endif %}{% for m in messages %}{% if m['role'] == 'user' %} USER: "
        "{{ m['content'] }}{% elif m['role'] == 'assistant' %} ASSISTANT: {{ m['content'] }}{{ eos_token }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
    ),
}

USER_ROLES = ("user", "human")
ASSISTANT_ROLES = ("assistant", "gpt", "chatgpt", "bard", "bing", "model")


def resolve_template(spec: str | None) -> str | None:
    """``dataset.chat_template`` -> the Jinja text (None: the tokenizer's own)."""
    if spec is None:
        return None
    if spec in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[spec]
    p = Path(spec).expanduser()
    if not p.is_file():
        raise UserError(
            f"dataset.chat_template: {spec!r} is neither a named template {sorted(NAMED_TEMPLATES)} nor a file"
        )
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"dataset.chat_template: cannot read {p} ({e})") from None
    if not text.strip():
        raise UserError(f"dataset.chat_template: {p} is empty")
    return text


def normalize_chat(pairs: list[tuple[Any, Any]]) -> list[Message]:
    """(role, content) pairs of a source chat -> a conversation (see the module docstring).

    Stops at the first message that breaks the pattern: an unknown role, empty or non-string content, a system
    message after the first user turn, two assistant replies in a row. Assistant messages before the first
    user turn (greetings) are skipped.
    """
    out: list[Message] = []
    system: str | None = None
    for role, content in pairs:
        r = str(role).lower() if role is not None else ""
        if not isinstance(content, str) or not content.strip():
            break
        if r == "system":
            if out or system is not None:
                break
            system = content
        elif r in USER_ROLES:
            out.append({"role": "user", "content": content})
        elif r in ASSISTANT_ROLES:
            if not out:
                continue
            if out[-1]["role"] == "assistant":
                break
            out.append({"role": "assistant", "content": content})
        else:
            break
    if not out:
        return []
    return ([{"role": "system", "content": system}] if system is not None else []) + out


def split_conversation(conv: list[Message]) -> tuple[str | None, list[str], list[str | None]]:
    """(system, user turns, the reply to each user turn or None)."""
    system = conv[0]["content"] if conv and conv[0]["role"] == "system" else None
    users: list[str] = []
    replies: list[str | None] = []
    for m in conv[1:] if system is not None else conv:
        if m["role"] == "user":
            users.append(m["content"])
            replies.append(None)
        elif m["role"] == "assistant" and replies:
            replies[-1] = m["content"]
    return system, users, replies


def complete_pairs(conv: list[Message]) -> list[Message]:
    """The conversation up to its first user turn without a reply (``dataset.responses=source``); [] if the
    first user turn has none."""
    system, users, replies = split_conversation(conv)
    out: list[Message] = [{"role": "system", "content": system}] if system is not None else []
    for u, r in zip(users, replies):
        if r is None:
            break
        out += [{"role": "user", "content": u}, {"role": "assistant", "content": r}]
    return out if len(out) > (system is not None) else []


def first_turn(messages: list[Message]) -> list[Message]:
    """The leading system message (if any) and the first user turn: what selection counts against
    ``dataset.max_prompt_tokens``."""
    out: list[Message] = []
    for m in messages:
        if m["role"] == "system" and not out:
            out.append(m)
        elif m["role"] == "user":
            out.append(m)
            break
    return out


class ChatFormat:
    """Messages -> token ids through the chat template and system prompt of ``dataset``."""

    def __init__(self, target: Any, dcfg: DatasetConfig):
        self.target = target
        self.template_spec = dcfg.chat_template
        self.template = resolve_template(dcfg.chat_template)
        self.system_prompt = dcfg.system_prompt
        self.eos = set(target.eos_token_ids)

    def desc(self) -> dict[str, Any]:
        """The cache-key entries of this format; empty with the defaults (existing keys stay valid)."""
        out: dict[str, Any] = {}
        if self.template is not None:
            out["chat_template"] = hashlib.sha256(self.template.encode()).hexdigest()[:16]
        if self.system_prompt is not None:
            out["system_prompt"] = self.system_prompt
        return out

    def messages(self, messages: list[Message]) -> list[Message]:
        """``messages`` with the system prompt override applied."""
        if self.system_prompt is None:
            return messages
        rest = [m for m in messages if m["role"] != "system"]
        return ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + rest

    def ids(self, messages: list[Message], add_generation_prompt: bool = True) -> list[int]:
        msgs = self.messages(messages)
        if self.template is None:  # exactly the target's path (turns=first data stays as it was)
            return self.target.chat_ids(msgs, add_generation_prompt)
        try:
            out = self.target.tokenizer.apply_chat_template(
                msgs,
                chat_template=self.template,
                add_generation_prompt=add_generation_prompt,
                tokenize=True,
                return_dict=False,
            )
        except Exception as e:  # noqa: BLE001 - a broken user template: one line naming the key
            raise UserError(
                f"dataset.chat_template: {self.template_spec!r} fails to render ({' '.join(str(e).split())[:200]})"
            ) from None
        if isinstance(out, dict) or hasattr(out, "input_ids"):
            out = out["input_ids"]
        return [int(t) for t in out]


def conversation_ids(
    fmt: ChatFormat, conv: list[Message], contexts: list[list[int]] | None = None, where: str = ""
) -> tuple[list[int], list[bool], list[int]]:
    """(ids, loss mask, assistant-turn starts) of a conversation whose every user turn has its reply.

    ``ids`` is the template over the whole conversation. ``contexts`` (optional) are the generation contexts
    of each assistant turn, already rendered (self-distillation has them); each must be a prefix of ``ids``, or
    the template renders a turn differently once later turns follow, and the mask could not be placed.
    """
    ids = fmt.ids(conv, add_generation_prompt=False)
    turns = [i for i, m in enumerate(conv) if m["role"] == "assistant"]
    if contexts is None:
        contexts = [fmt.ids(conv[:at], add_generation_prompt=True) for at in turns]
    mask = [False] * len(ids)
    starts = [len(c) for c in contexts]
    for k, ctx in enumerate(contexts):
        if ids[: len(ctx)] != ctx:
            raise UserError(
                f"dataset.chat_template: the template renders {where or 'a conversation'} differently with "
                f"later turns appended (assistant turn {k + 1}); whole conversations need a template whose "
                "rendering of earlier turns does not change (dataset.turns=first, or another template)"
            )
        # the turn ends at its first end-of-turn token, before the next turn's context does
        limit = starts[k + 1] if k + 1 < len(starts) else len(ids)
        end = next((j + 1 for j in range(starts[k], limit) if ids[j] in fmt.eos), None)
        if end is None:
            raise UserError(
                f"dataset.chat_template: assistant turn {k + 1} of {where or 'a conversation'} is not closed by "
                f"an end-of-turn token of the target (EOS ids {sorted(fmt.eos)})"
            )
        for j in range(starts[k], end):
            mask[j] = True
    return ids, mask, starts
